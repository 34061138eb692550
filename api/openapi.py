"""The OpenAPI 3 document, generated from the routes and their marshmallow schemas.

Each view declares its contract with :func:`operation` next to its code; :func:`build_spec`
walks Flask's URL map, so a route without a declaration fails the build (and the test that
calls it) instead of going undocumented.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields

from api.auth import OPEN_ENDPOINTS
from shared.core.errors import FlexDBError

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
    errors: dict[int, str] = field(default_factory=dict)
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


_COMMON_ERRORS = {
    400: "The body is not JSON or nests deeper than FLEXDB_API_MAX_JSON_DEPTH (bad_request), or the HTTP request is malformed",
    405: "Method not allowed (method_not_allowed)",
    414: "The request line is longer than 4094 bytes (uri_too_long)",
    431: "The request headers are too many or too large (request_header_fields_too_large)",
    500: "Unexpected server error (internal_error); details only in the log",
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
        described: Operation | None = getattr(view, "openapi", None)
        if described is None:
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
    errors = {**described.errors, **_COMMON_ERRORS}
    if rule.endpoint not in OPEN_ENDPOINTS:
        errors.setdefault(401, "FLEXDB_API_TOKEN is set and the bearer token is missing or wrong (unauthorized)")
    if rule.arguments:
        errors.setdefault(404, "Not found")
    if described.body is not None or described.query is not None:
        errors.setdefault(422, "Invalid field (validation_failed); see errors[].pointer")
    for status, description in errors.items():
        responses[str(status)] = {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": "Problem"}}}
    op: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": described.summary,
        "tags": [described.tag],
        "parameters": parameters,
        "responses": responses,
    }
    if described.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": described.body}}}
    elif described.raw_body is not None:
        op["requestBody"] = {"required": True, "content": {described.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    # The token is optional server-side: either no credentials or a bearer token.
    op["security"] = [{}] if rule.endpoint in OPEN_ENDPOINTS else [{}, {"bearerToken": []}]
    return op


def error_codes() -> dict[str, int]:
    """Every stable error code and its status, for the reference documentation."""
    found: dict[str, int] = {}
    pending = [FlexDBError]
    while pending:
        cls = pending.pop()
        found[cls.code] = cls.status
        pending.extend(cls.__subclasses__())
    return dict(sorted(found.items()))
