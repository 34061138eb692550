from __future__ import annotations

from flask import Blueprint, jsonify

from api.http import services

bp = Blueprint("system", __name__)


@bp.get("/health")
def health():
    healthy, body = services().health.check()
    return jsonify(body), 200 if healthy else 503
