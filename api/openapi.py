"""The OpenAPI 3 document, generated from the routes and their marshmallow schemas.

Each view declares its contract with :func:`operation` next to its code; :func:`build_spec`
walks Flask's URL map, so a route without a declaration fails the build (and the test that
calls it) instead of going undocumented. A view declares the exceptions it raises, by class:
the error responses (status, problem+json schema, the stable codes) come from the one hierarchy
in ``shared/core/errors.py``. A JSON request body's schema carries an ``example``, checked
against that schema when the document is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, ValidationError, fields

from api.auth import OPEN_ENDPOINTS
from shared.core.errors import (
    BackupNotFound,
    BadRequest,
    FlexDBError,
    JobNotFound,
    MethodNotAllowed,
    NotFound,
    RequestHeaderFieldsTooLarge,
    ScheduleNotFound,
    TargetNotFound,
    Unauthorized,
    UriTooLong,
    ValidationFailed,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemPointerSchema(Schema):
    pointer = fields.String(metadata={"description": "JSON Pointer to the offending field"})
    detail = fields.String()


class ProblemSchema(Schema):
    type = fields.String(metadata={"example": "urn:flexdb:problem:validation_failed"})
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    code = fields.String(metadata={"description": "Stable snake_case error code"})
    request_id = fields.String()
    errors = fields.List(fields.Nested(ProblemPointerSchema), metadata={"description": "Validation failures only"})


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, tuple[str, type[Schema] | None]]
    # The errors this route raises itself; those every route can answer are added by build_spec.
    errors: tuple[type[FlexDBError], ...] = ()
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tag: str = "jobs"
    media_type: str = "application/json"
    # The media type of a request body that is a file, not JSON (e.g. an archive to import).
    raw_body: str | None = None


def operation(**kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach the OpenAPI description to a view function."""
    described = Operation(**kwargs)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        view.openapi = described  # type: ignore[attr-defined]
        return view

    return decorate


class _OutsideTheDocument:
    """Marks a view that serves people, not API clients (the documentation page and its files)."""


OUTSIDE_THE_DOCUMENT = _OutsideTheDocument()


def outside_the_document(view: Callable[..., Any]) -> Callable[..., Any]:
    """Keep a view out of the OpenAPI document, saying so (an undeclared view fails the build)."""
    view.openapi = OUTSIDE_THE_DOCUMENT  # type: ignore[attr-defined]
    return view


# What any route may answer: a malformed request or body, a wrong method, a request the HTTP
# server refuses before the app sees it, and an unexpected failure (FlexDBError: internal_error).
_COMMON_ERRORS: tuple[type[FlexDBError], ...] = (BadRequest, MethodNotAllowed, UriTooLong, RequestHeaderFieldsTooLarge, FlexDBError)
# The error of a path argument that names nothing.
_NOT_FOUND_BY_ARGUMENT: dict[str, type[NotFound]] = {
    "backup_id": BackupNotFound,
    "job_id": JobNotFound,
    "schedule_id": ScheduleNotFound,
    "name": TargetNotFound,
}


def build_spec(app: Flask, title: str, version: str) -> dict[str, Any]:
    spec = APISpec(title=title, version=version, openapi_version="3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("Problem", schema=ProblemSchema)
    spec.components.security_scheme(
        "bearerToken",
        {"type": "http", "scheme": "bearer", "description": "Needed only when the server sets FLEXDB_API_TOKEN"},
    )
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        described: Operation | _OutsideTheDocument | None = getattr(view, "openapi", None)
        if described is OUTSIDE_THE_DOCUMENT:
            continue
        if not isinstance(described, Operation):
            raise RuntimeError(f"route {rule.rule} ({rule.endpoint}) has no @operation description")
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        operations = {}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(rule, described)
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _strict_nullable_refs(document)
    document["info"]["description"] = (
        "Backup and restore for PostgreSQL and MongoDB. Every error is application/problem+json "
        "(RFC 9457) with a stable `code`."
    )
    return document


def _strict_nullable_refs(node: Any) -> None:
    """Describe a nullable nested schema as exactly "null or that schema".

    For OpenAPI 3.0, apispec writes ``allow_none`` nested fields as
    ``anyOf: [{"type": "object", "nullable": true}, {"$ref": ...}]``, whose first branch admits
    any object at all, so the document would promise that unknown fields are accepted (e.g. in
    a schedule's ``retention``) although the API refuses them. ``allOf`` with ``nullable`` is the
    3.0 way to say "null or this schema"."""
    if isinstance(node, list):
        for item in node:
            _strict_nullable_refs(item)
        return
    if not isinstance(node, dict):
        return
    branches = node.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "object", "nullable": True} in branches:
        refs = [branch for branch in branches if branch != {"type": "object", "nullable": True}]
        if len(refs) == 1 and set(refs[0]) == {"$ref"}:
            del node["anyOf"]
            node["allOf"] = refs
            node["nullable"] = True
    for value in node.values():
        _strict_nullable_refs(value)


def _operation(rule: Any, described: Operation) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
        for name in sorted(rule.arguments)
    ]
    if described.query is not None:
        parameters.append({"in": "query", "schema": described.query})
    for name, description in described.headers.items():
        parameters.append({"in": "header", "name": name, "required": False, "schema": {"type": "string"}, "description": description})
    responses: dict[str, Any] = {}
    for status, (description, schema) in described.responses.items():
        response: dict[str, Any] = {"description": description}
        if schema is not None:
            response["content"] = {described.media_type: {"schema": schema}}
        elif described.media_type != "application/json":
            response["content"] = {described.media_type: {"schema": {"type": "string"}}}
        responses[str(status)] = response
    for status, classes in sorted(_errors_by_status(rule, described).items()):
        responses[str(status)] = _problem_response(classes)
    op: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": described.summary,
        "tags": [described.tag],
        "parameters": parameters,
        "responses": responses,
    }
    if described.body is not None:
        content = {"schema": described.body, "example": _checked_example(rule, described.body)}
        op["requestBody"] = {"required": True, "content": {"application/json": content}}
    elif described.raw_body is not None:
        op["requestBody"] = {"required": True, "content": {described.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    # The token is optional server-side: either no credentials or a bearer token.
    op["security"] = [{}] if rule.endpoint in OPEN_ENDPOINTS else [{}, {"bearerToken": []}]
    return op


def _errors_by_status(rule: Any, described: Operation) -> dict[int, list[type[FlexDBError]]]:
    raised: list[type[FlexDBError]] = [*described.errors, *_COMMON_ERRORS]
    if rule.endpoint not in OPEN_ENDPOINTS:
        raised.append(Unauthorized)
    raised.extend(_NOT_FOUND_BY_ARGUMENT.get(name, NotFound) for name in sorted(rule.arguments))
    if rule.arguments:  # an argument holding '/' (as %2F) makes a path no route matches
        raised.append(NotFound)
    if described.body is not None or described.query is not None:
        raised.append(ValidationFailed)
    by_status: dict[int, list[type[FlexDBError]]] = {}
    for cls in raised:
        listed = by_status.setdefault(cls.status, [])
        if all(other.code != cls.code for other in listed):
            listed.append(cls)
    return by_status


def _problem_response(classes: list[type[FlexDBError]]) -> dict[str, Any]:
    """One status: a problem+json body whose ``code`` is one of these classes' codes."""
    classes = sorted(classes, key=lambda cls: cls.code)
    schema = {
        "allOf": [{"$ref": "#/components/schemas/Problem"}],
        "properties": {"code": {"type": "string", "enum": [cls.code for cls in classes]}},
    }
    return {
        "description": "; ".join(f"{cls.title} ({cls.code})" for cls in classes),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
    }


def _checked_example(rule: Any, body: type[Schema]) -> dict[str, Any]:
    """The body schema's own example, which that schema must accept (a stale example would
    teach users a request the API refuses)."""
    example = getattr(body, "example", None)
    if not isinstance(example, dict):
        raise RuntimeError(f"route {rule.rule}: request schema {body.__name__} has no example")
    try:
        body().load(example)
    except ValidationError as exc:
        raise RuntimeError(f"route {rule.rule}: the example of {body.__name__} is invalid: {exc.messages}") from None
    return example


def served_document(document: dict[str, Any], request_root: str, public_url: str) -> dict[str, Any]:
    """The document with ``servers``: first the address this request came to (so that "Try it
    out" on the documentation page calls the API where the page came from), then
    FLEXDB_PUBLIC_URL when it is another one."""
    servers = [{"url": request_root.rstrip("/"), "description": "This server, as this request reached it"}]
    if public_url and public_url.rstrip("/") != servers[0]["url"]:
        servers.append({"url": public_url.rstrip("/"), "description": "FLEXDB_PUBLIC_URL"})
    head = {key: document[key] for key in ("openapi", "info")}
    return {**head, "servers": servers, **{k: v for k, v in document.items() if k not in head}}


def error_codes() -> dict[str, int]:
    """Every stable error code and its status, for the reference documentation."""
    found: dict[str, int] = {}
    pending = [FlexDBError]
    while pending:
        cls = pending.pop()
        found[cls.code] = cls.status
        pending.extend(cls.__subclasses__())
    return dict(sorted(found.items()))
