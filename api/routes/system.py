from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from api.auth import carries_token
from api.http import services
from api.openapi import operation, served_document
from api.schemas import HealthSchema

bp = Blueprint("system", __name__)


@bp.get("/health")
@operation(
    summary="Health of the API, Redis, workers, storage and every target (with FLEXDB_API_TOKEN set: ok flags only, unless sent)",
    responses={200: ("Everything answers", HealthSchema), 503: ("Some component is down (same body)", HealthSchema)},
    tag="system",
)
def health():
    svc = services()
    healthy, body = svc.health.check(detailed=carries_token(svc.settings.api_token))
    return jsonify(body), 200 if healthy else 503


@bp.get("/openapi.json")
@operation(summary="This OpenAPI 3 document", responses={200: ("The document", None)}, tag="system")
def openapi_document():
    document = current_app.extensions["flexdb.openapi"]
    return jsonify(served_document(document, request.url_root, services().settings.public_url))
