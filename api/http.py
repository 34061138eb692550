"""Small helpers the routes share: parsing with schemas, services, presenters, paging."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, request, url_for
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter
from werkzeug.sansio.utils import get_current_url

from shared.core.errors import ArchiveTooLarge, BadRequest, ValidationFailed
from shared.domain.backups import BackupManifest
from shared.domain.jobs import Job, Page
from shared.services.container import Services
from shared.services.views import job_path, job_view


def services() -> Services:
    return current_app.extensions["flexdb"]


class WaitSlots:
    """How many requests of this API process ``?wait=N`` may hold at once. A held request keeps
    one of gunicorn's threads; without a bound, enough long-polls take them all and every
    other route queues behind them. A long-poll that finds no free slot is answered at once
    (the job as it is, with Retry-After), which a polling client handles like any early answer."""

    def __init__(self, size: int) -> None:
        self._free = threading.BoundedSemaphore(size)

    @contextmanager
    def slot(self) -> Iterator[bool]:
        granted = self._free.acquire(blocking=False)
        try:
            yield granted
        finally:
            if granted:
                self._free.release()


def wait_slots() -> WaitSlots:
    return current_app.extensions["flexdb.wait_slots"]


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


def _nesting_depth(data: Any) -> int:
    """How deep arrays and objects nest, walked without recursion (a hostile body may nest
    deeper than Python's recursion limit allows any recursive walker to go)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        f"The JSON body nests arrays or objects more than {max_depth} levels deep "
        "(FLEXDB_API_MAX_JSON_DEPTH); no request of this API needs that."
    )


def parse_body(schema: Schema) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    max_depth = services().settings.api_max_json_depth
    # Every route with a body requires one: an empty PATCH is not "change nothing" but a mistake.
    if not raw.strip():
        raise BadRequest("The body is empty; send a JSON object with Content-Type: application/json.")
    try:
        data = request.get_json(silent=True, force=True)
    except RecursionError:  # the JSON decoder gives up before returning: far too deep
        raise _too_deep(max_depth) from None
    if data is None:
        raise BadRequest("The body is not valid JSON; send a JSON object with Content-Type: application/json.")
    # Later steps (schemas, the idempotency fingerprint, the job record) walk the body recursively.
    if _nesting_depth(data) > max_depth:
        raise _too_deep(max_depth)
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


class BackupIdConverter(BaseConverter):
    """``<backup:backup_id>``: a path segment that is not ``import``, so ``/backups/import`` (a
    POST of its own) is not also ``/backups/<backup_id>`` (whose GET, PATCH and DELETE would be
    advertised in its ``Allow``)."""

    regex = r"(?!import$)[^/]+"


class UploadStream:
    """The request body as a stream read in chunks, never whole: opened at the first read (so
    the service can refuse a too-large ``Content-Length`` before any byte is read), and up to
    ``limit`` bytes for this request instead of the app-wide ``FLEXDB_API_MAX_BODY_BYTES``."""

    def __init__(self, limit: int, setting: str) -> None:
        request.max_content_length = limit
        self._limit, self._setting = limit, setting

    def read(self, size: int = -1) -> bytes:
        try:
            return request.stream.read(size)
        except RequestEntityTooLarge:
            raise ArchiveTooLarge(
                f"The archive is too large: more than {self._limit} bytes arrived, and {self._setting} allows {self._limit}."
            ) from None


def present_job(job: Job) -> dict[str, Any]:
    return job_view(job, _base_url(request.scheme, request.host))


@functools.lru_cache(maxsize=64)
def _base_url(scheme: str, host: str) -> str:
    """``request.host_url`` without its trailing slash, built once per scheme and host rather
    than for every job shown (it costs as much as the rest of the view)."""
    return get_current_url(scheme, host).rstrip("/")


def present_backup(manifest: BackupManifest) -> dict[str, Any]:
    data = manifest.to_dict()
    data["links"] = {"self": url_for("backups.get_backup", backup_id=manifest.id, _external=True)}
    return data


def job_headers(job: Job) -> dict[str, str]:
    # job_path rather than url_for: the same path (job ids need no quoting), far cheaper per request.
    headers = {"Location": request.script_root + job_path(job.id)}
    if not job.status.is_terminal:
        headers["Retry-After"] = str(services().settings.retry_after_seconds)
    return headers
