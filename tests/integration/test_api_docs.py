"""Documentation a person can browse: /api/docs is Swagger UI over the API's own OpenAPI
document, every file of it served by the API (no CDN, works offline), behind the same token
rule as the document; / leads there. The document names its servers, shows an example for
every request body (which its schema and the API accept), and lists the stable error codes of
every route."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
from flask.testing import FlaskClient

from api import create_app
from api.openapi import error_codes
from shared.core.settings import Settings
from tests.conftest import REDIS_URL, drop_database, pg_admin, pg_uri

TOKEN = "docs-token-for-tests-" + secrets.token_hex(8)
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def make_client(tmp_path, **env: str) -> FlaskClient:
    settings = Settings.from_env({"FLEXDB_REDIS_URL": REDIS_URL, "FLEXDB_STORAGE_DIR": str(tmp_path), **env})
    return create_app(settings).test_client()


class _PageReferences(HTMLParser):
    """Every URL the page makes the browser load (scripts, styles, icons, images) and the
    document's URL that Swagger UI is started with."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.document_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "img", "iframe") and values.get("src"):
            self.loaded.append(values["src"])
        if tag == "link" and values.get("href"):
            self.loaded.append(values["href"])
        if values.get("data-openapi-url"):
            self.document_url = values["data-openapi-url"]


def page_references(client: FlaskClient, **headers: str) -> _PageReferences:
    response = client.get("/api/docs", headers=headers)
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    parser = _PageReferences()
    parser.feed(response.get_data(as_text=True))
    return parser


# ------------------------------------------------------------------------------ the page


def test_the_page_and_every_file_it_loads_come_from_the_api_itself(tmp_path) -> None:
    client = make_client(tmp_path)
    page = page_references(client)
    assert page.document_url == "/api/v1/openapi.json"
    assert client.get(page.document_url).status_code == 200
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= {url.rsplit("/", 1)[-1] for url in page.loaded}
    for url in page.loaded:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/api/docs/assets/"), url
        response = client.get(url)
        suffix = url[url.rindex(".") :]
        assert response.status_code == 200, url
        assert response.content_type.split(";")[0] == MEDIA_TYPES[suffix], url
        assert len(response.data) > 0, url
    # The real Swagger UI, not a placeholder.
    assert b"SwaggerUIBundle" in client.get("/api/docs/assets/swagger-ui-bundle.js").data
    # The browser may load nothing from elsewhere, nor send the document anywhere else.
    policy = client.get("/api/docs").headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "connect-src 'self';" in policy


def test_only_the_pages_own_files_are_served(tmp_path) -> None:
    client = make_client(tmp_path)
    for name in ("swagger-ui-bundle.js.map", "index.html", "..", "%2E%2E%2F__init__.py", "docs.py"):
        response = client.get(f"/api/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.content_type == "application/problem+json"


def test_the_root_redirects_to_the_docs(tmp_path) -> None:
    client = make_client(tmp_path)
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/api/docs"
    assert client.get("/", follow_redirects=True).content_type.startswith("text/html")


def test_with_a_token_the_page_its_files_and_the_root_need_it_like_the_document(tmp_path) -> None:
    client = make_client(tmp_path, FLEXDB_API_TOKEN=TOKEN)
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assets = page_references(client, **authorized).loaded
    assert assets
    for path in ("/api/v1/openapi.json", "/api/docs", "/", *assets):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, path
            assert response.json["code"] == "unauthorized"
            assert TOKEN not in response.get_data(as_text=True)
        assert client.get(path, headers=authorized).status_code in {200, 302}, path
    # "Try it out" sends the token once it is given to "Authorize": every operation but health
    # accepts the document's bearer scheme.
    document = client.get("/api/v1/openapi.json", headers=authorized).json
    assert document["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Needed only when the server sets FLEXDB_API_TOKEN",
    }
    for path, operations in document["paths"].items():
        for op in operations.values():
            if path != "/api/v1/health":
                assert {"bearerToken": []} in op["security"], path


# -------------------------------------------------------------------------- the document


def operations(document: dict) -> Iterator[tuple[str, str, dict]]:
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_the_document_names_the_server_it_was_fetched_from(tmp_path) -> None:
    client = make_client(tmp_path)
    servers = client.get("/api/v1/openapi.json", base_url="http://api.internal:8123").json["servers"]
    assert [s["url"] for s in servers] == ["http://api.internal:8123"]
    public = "https://backups.example.com/flexdb"
    client = make_client(tmp_path, FLEXDB_PUBLIC_URL=public)
    servers = client.get("/api/v1/openapi.json", base_url="http://10.1.2.3:8000").json["servers"]
    assert [s["url"] for s in servers] == ["http://10.1.2.3:8000", public]
    # The page may call both: the public address is allowed beside its own origin.
    assert "connect-src 'self' https://backups.example.com;" in client.get("/api/docs").headers["Content-Security-Policy"]


def schema_validator(document: dict, schema: dict) -> jsonschema_rs.Draft4Validator:
    """A validator for one schema of the document, its $refs resolved inside the document."""
    return jsonschema_rs.Draft4Validator({**schema, "components": document["components"]})


def json_bodies(document: dict) -> list[tuple[str, str, dict]]:
    found = []
    for path, method, op in operations(document):
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            found.append((path, method, content["application/json"]))
    return found


def test_every_request_body_has_an_example_that_its_schema_accepts(tmp_path) -> None:
    document = make_client(tmp_path).get("/api/v1/openapi.json").json
    bodies = json_bodies(document)
    assert len(bodies) >= 6
    for path, method, body in bodies:
        assert isinstance(body.get("example"), dict) and body["example"], f"{method} {path}"
        errors = [error.message for error in schema_validator(document, body["schema"]).iter_errors(body["example"])]
        assert not errors, f"{method} {path}: {errors}"
    # The check has teeth: the schemas refuse what the API refuses.
    restore = next(body for path, method, body in bodies if path == "/api/v1/restores")
    assert not schema_validator(document, restore["schema"]).is_valid({**restore["example"], "drop": "yes"})
    assert not schema_validator(document, restore["schema"]).is_valid({**restore["example"], "colour": "blue"})


@pytest.fixture
def orders_database() -> Iterator[str]:
    """The database behind the examples' target "orders", under a name of this run's own."""
    name = f"flexdb_docs_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        drop_database(name)


# What sending each example, exactly as the document shows it, answers on a deployment with a
# target "orders": accepted and carried out, or (where the example names a backup, which a new
# deployment does not have, or a database role it may not have) the answer of a valid request
# about something that is not there. Never 400 or 422: the API takes the example as written.
EXAMPLE_ANSWERS = {
    ("post", "/api/v1/backups"): {202},
    ("post", "/api/v1/restores"): {404},  # backup_not_found: the example's backup is not here
    ("post", "/api/v1/connections/check"): {200, 502},  # the server answered; the role may not exist
    ("patch", "/api/v1/backups/{backup_id}"): {404},  # backup_not_found, as for restores
    ("post", "/api/v1/schedules"): {201},
    ("patch", "/api/v1/schedules/{schedule_id}"): {200},
}


def test_every_request_body_example_is_accepted_by_the_api(tmp_path, own_redis_url, orders_database) -> None:
    targets = {"orders": {"engine": "postgresql", "uri": pg_uri(orders_database)}}
    client = make_client(tmp_path, FLEXDB_REDIS_URL=own_redis_url, FLEXDB_TARGETS=json.dumps(targets))
    document = client.get("/api/v1/openapi.json").json
    bodies = {(method, path): body["example"] for path, method, body in json_bodies(document)}
    assert set(bodies) == set(EXAMPLE_ANSWERS), "a new request body: say what its example answers"
    created = client.post("/api/v1/schedules", json=bodies[("post", "/api/v1/schedules")])
    assert created.status_code == 201, created.json
    path_values = {"backup_id": "20261202T031500123456Z-3f9a2c", "schedule_id": created.json["id"]}
    for (method, path), example in bodies.items():
        url = path.format(**path_values)
        response = client.open(url, method=method.upper(), json=example)
        answer = f"{method.upper()} {path} with its example -> {response.status_code} {response.get_data(as_text=True)[:300]}"
        assert response.status_code in EXAMPLE_ANSWERS[(method, path)], answer
        if response.status_code == 404:
            assert response.json["code"] == "backup_not_found", answer
        if response.status_code == 502:
            assert response.json["code"] in {"authentication_failed", "database_not_found"}, answer


def test_every_route_lists_the_stable_codes_of_its_errors(tmp_path) -> None:
    client = make_client(tmp_path)
    document = client.get("/api/v1/openapi.json").json
    statuses = error_codes()
    for path, method, op in operations(document):
        where = f"{method.upper()} {path}"
        errors = {status: r for status, r in op["responses"].items() if status.startswith(("4", "5"))}
        if path == "/api/v1/health":
            errors.pop("503")  # its component report, not a problem
        for status, response in errors.items():
            schema = response["content"]["application/problem+json"]["schema"]
            assert schema["allOf"] == [{"$ref": "#/components/schemas/Problem"}], where
            codes = schema["properties"]["code"]["enum"]
            assert codes, f"{where} {status}"
            for code in codes:
                # Each code is one of the hierarchy's, answered with this very status.
                assert statuses.get(code) == int(status), f"{where} {status}: {code}"
                assert f"({code})" in response["description"], f"{where} {status}: {code}"
        listed = {code for r in errors.values() for code in r["content"]["application/problem+json"]["schema"]["properties"]["code"]["enum"]}
        assert {"bad_request", "method_not_allowed", "internal_error", "uri_too_long"} <= listed, where
        if path != "/api/v1/health":
            assert "unauthorized" in listed, where
        if "requestBody" in op or any(p["in"] == "query" for p in op["parameters"]):
            assert "validation_failed" in listed, where
    restore = document["paths"]["/api/v1/restores"]["post"]["responses"]
    assert restore["404"]["content"]["application/problem+json"]["schema"]["properties"]["code"]["enum"] == [
        "backup_not_found",
        "target_not_found",
    ]
    assert "system_database_refused" in restore["422"]["content"]["application/problem+json"]["schema"]["properties"]["code"]["enum"]


def test_an_error_the_api_answers_carries_a_code_its_route_lists(tmp_path) -> None:
    client = make_client(tmp_path)
    document = client.get("/api/v1/openapi.json").json

    def listed(path: str, method: str, status: int) -> list[str]:
        response = document["paths"][path][method]["responses"][str(status)]
        return response["content"]["application/problem+json"]["schema"]["properties"]["code"]["enum"]

    missing_job = client.get("/api/v1/jobs/no-such-job")
    assert missing_job.status_code == 404 and missing_job.json["code"] in listed("/api/v1/jobs/{job_id}", "get", 404)
    bad_body = client.post("/api/v1/backups", json={"target": "orders", "colour": "blue"})
    assert bad_body.status_code == 422 and bad_body.json["code"] in listed("/api/v1/backups", "post", 422)
