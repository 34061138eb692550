from __future__ import annotations

from flask import Blueprint, jsonify, url_for

from api.http import parse_body, services
from api.openapi import operation
from api.schemas import ConnectionCheckSchema, ServerInfoSchema, TargetListSchema, TargetSchema
from shared.domain.engine import ServerInfo

bp = Blueprint("targets", __name__)
_target = TargetSchema()
_info = ServerInfoSchema()


def _present_info(engine: str, info: ServerInfo) -> dict:
    return _info.dump(
        {"ok": True, "engine": engine, "server_version": info.version, "latency_ms": info.latency_ms, "details": info.details}
    )


@bp.get("/targets")
@operation(summary="The configured targets (URIs with the password masked)", responses={200: ("Targets", TargetListSchema)}, tag="targets")
def list_targets():
    svc = services().targets
    items = []
    for target in svc.all():
        view = svc.view(target).__dict__
        view["links"] = {"check": url_for("targets.check_target", name=target.name, _external=True)}
        items.append(_target.dump(view))
    return jsonify({"items": items})


@bp.post("/targets/<name>/check")
@operation(
    summary="Connect to a target: server version and latency",
    responses={200: ("It answers", ServerInfoSchema)},
    errors={
        502: "The target is unreachable, refused the credentials, has no such database or cannot be used with its "
        "settings (target_unreachable, authentication_failed, database_not_found, target_misconfigured)"
    },
    tag="targets",
)
def check_target(name: str):
    svc = services().targets
    target = svc.get(name)
    return jsonify(_present_info(target.engine, svc.check(name)))


@bp.post("/connections/check")
@operation(
    summary="Try a connection that is not a configured target",
    body=ConnectionCheckSchema,
    responses={200: ("It answers", ServerInfoSchema)},
    errors={
        403: "The host is not in FLEXDB_CHECK_ALLOWED_HOSTS (host_not_allowed)",
        422: "Invalid field, or URI options that may change where or how the driver connects (validation_failed)",
        502: "Unreachable, the credentials were refused, or no such database (target_unreachable, "
        "authentication_failed, database_not_found)",
    },
    tag="targets",
)
def check_connection():
    body = parse_body(ConnectionCheckSchema())
    info = services().targets.check_connection(body["engine"], body["uri"])
    return jsonify(_present_info(body["engine"], info))
