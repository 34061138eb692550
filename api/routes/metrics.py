"""``GET /metrics`` in the Prometheus text format (outside /api/v1, where scrapers look)."""

from __future__ import annotations

from flask import Blueprint, Response

from api.http import services
from api.openapi import operation

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@operation(
    summary="Prometheus metrics: jobs by kind and status, durations, archive sizes, last good backup, queue depth",
    responses={200: ("Prometheus text exposition format", None)},
    media_type="text/plain",
    tag="system",
)
def metrics():
    body, content_type = services().metrics.render()
    return Response(body, content_type=content_type)
