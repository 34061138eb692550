"""Small helpers the routes share: parsing with schemas, services, presenters, paging."""

from __future__ import annotations

from typing import Any

from flask import current_app, request, url_for
from marshmallow import Schema, ValidationError

from shared.core.errors import BadRequest, ValidationFailed
from shared.domain.backups import BackupManifest
from shared.domain.jobs import Job, Page
from shared.services.container import Services
from shared.services.views import job_view


def services() -> Services:
    return current_app.extensions["flexdb"]


def _pointers(messages: Any, prefix: str = "") -> list[dict[str, str]]:
    """Flatten marshmallow's nested messages into JSON Pointer entries."""
    if isinstance(messages, dict):
        out: list[dict[str, str]] = []
        for key, value in messages.items():
            out.extend(_pointers(value, f"{prefix}/{str(key).replace('~', '~0').replace('/', '~1')}"))
        return out
    if isinstance(messages, list) and all(isinstance(item, str) for item in messages):
        return [{"pointer": prefix or "/", "detail": item} for item in messages]
    if isinstance(messages, list):
        return [entry for item in messages for entry in _pointers(item, prefix)]
    return [{"pointer": prefix or "/", "detail": str(messages)}]


def _load(schema: Schema, data: Any, where: str) -> dict[str, Any]:
    try:
        return schema.load(data)
    except ValidationError as exc:
        errors = _pointers(exc.messages)
        summary = "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors[:5])
        raise ValidationFailed(f"The {where} is invalid: {summary}", errors=errors) from None


def parse_body(schema: Schema) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        data: Any = {}
    else:
        data = request.get_json(silent=True, force=True)
        if data is None:
            raise BadRequest("The body is not valid JSON; send a JSON object with Content-Type: application/json.")
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.", errors=[{"pointer": "/", "detail": "must be an object"}])
    return _load(schema, data, "request body")


def parse_query(schema: Schema) -> dict[str, Any]:
    return _load(schema, request.args.to_dict(), "query string")


def page_limit(requested: int | None) -> int:
    settings = services().settings
    return min(requested or settings.page_size_default, settings.page_size_max)


def page_body(page: Page, items: list[dict[str, Any]], endpoint: str, **query: Any) -> dict[str, Any]:
    links = {"self": request.url}
    if page.next_cursor:
        params = {k: v for k, v in query.items() if v is not None}
        links["next"] = url_for(endpoint, cursor=page.next_cursor, _external=True, **params)
    return {"items": items, "next": links.get("next"), "links": links}


def present_job(job: Job) -> dict[str, Any]:
    return job_view(job, request.host_url.rstrip("/"))


def present_backup(manifest: BackupManifest) -> dict[str, Any]:
    data = manifest.to_dict()
    data["links"] = {"self": url_for("backups.get_backup", backup_id=manifest.id, _external=True)}
    return data


def job_headers(job: Job) -> dict[str, str]:
    headers = {"Location": url_for("jobs.get_job", job_id=job.id)}
    if not job.status.is_terminal:
        headers["Retry-After"] = str(services().settings.retry_after_seconds)
    return headers
