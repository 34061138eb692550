"""The one place that turns exceptions into responses: RFC 9457 application/problem+json."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response, g, json
from werkzeug.exceptions import HTTPException

from shared.core.errors import FlexDBError, ValidationFailed
from shared.core.logs import get_logger
from shared.core.redaction import redact

log = get_logger(__name__)
PROBLEM_TYPE = "urn:flexdb:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_response(
    status: int, code: str, title: str, detail: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "detail": redact(detail),
        "code": code,
    }
    request_id = g.get("request_id")
    if request_id:
        body["request_id"] = request_id
    body.update(extra or {})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace(" ", "_")


def _flexdb_error(exc: FlexDBError) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationFailed):
        extra["errors"] = [{**item, "detail": redact(item["detail"])} for item in exc.errors]
    headers = {"Retry-After": "5"} if exc.status == 503 else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="flexdb"'}
    if exc.headers():
        headers = {**(headers or {}), **exc.headers()}
    if exc.status >= 500:
        log.warning("request.failed", error_code=exc.code, error=exc.message)
    return problem_response(exc.status, exc.code, exc.title, exc.message, extra, headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _snake((exc.name or "error").replace(" ", ""))
    headers = {}
    if status == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    return problem_response(status, code, exc.name, exc.description or exc.name, headers=headers)


def _unexpected(exc: Exception) -> Response:
    log.exception("request.crashed")
    return problem_response(
        500, "internal_error", "Internal error", "The server failed to handle this request; the log has the details."
    )


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(FlexDBError, _flexdb_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
