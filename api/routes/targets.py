from __future__ import annotations

from flask import Blueprint, jsonify, url_for

from api.http import parse_body, services
from api.openapi import operation
from api.schemas import ConnectionCheckSchema, ServerInfoSchema, TargetListSchema, TargetSchema
from shared.core.errors import AuthenticationFailed, DatabaseNotFound, HostNotAllowed, TargetMisconfigured, TargetUnreachable
from shared.domain.engine import ServerInfo

bp = Blueprint("targets", __name__)
# A server that does not answer, refuses the credentials, lacks the database, or cannot be used
# with the settings given: the database's failure, reported as a gateway error (502).
_CONNECTION_ERRORS = (TargetUnreachable, AuthenticationFailed, DatabaseNotFound, TargetMisconfigured)
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
    errors=_CONNECTION_ERRORS,
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
    errors=(HostNotAllowed, *_CONNECTION_ERRORS),
    tag="targets",
)
def check_connection():
    body = parse_body(ConnectionCheckSchema())
    info = services().targets.check_connection(body["engine"], body["uri"])
    return jsonify(_present_info(body["engine"], info))
