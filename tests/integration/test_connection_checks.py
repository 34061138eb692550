"""Connection checks as a user (or an attacker) meets them, against the machine's PostgreSQL and
a SecantusDB with --auth: ad-hoc checks reach only allowed hosts and take only harmless URI
options; driver failures are problem+json that say what happened (never a 500); a password in a
URI's query stays hidden; health shows only statuses without the API token and does not connect
to every target on each call.

The shared stack (whose targets are on 127.0.0.1, so 127.0.0.1 is the default allowed host)
answers the ad-hoc checks over HTTP; cases that need targets of their own run an app of their
own in-process (create_app with its own settings, real Redis and real database servers)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api import create_app
from shared.core.errors import TargetMisconfigured
from shared.core.logs import get_logger
from shared.core.settings import Settings
from shared.domain.progress import ProgressTracker
from shared.engines import engine_class, engine_for
from shared.storage import LocalStorage
from tests.conftest import CANARY_PASSWORD, PG_ADMIN_URI, REDIS_URL, Stack, pg_uri
from tests.support.mongo import MongoTestServer
from tests.support.processes import free_port

TOKEN = "health-token-" + "0123456789abcdef"
ADHOC_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


class CountingListener:
    """A TCP server that accepts connections, counts them and hangs up at once: a stand-in for a
    database that shows whether (and how often) the service connected to it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.create_server((host, 0))
        self.host, self.port = host, self._sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    server = CountingListener()
    yield server
    server.close()


def own_app(tmp_path: Path, targets: dict, **env: str):
    """An API of its own (in-process) with these targets; Redis and the databases are real."""
    settings = Settings.from_env(
        {
            "FLEXDB_REDIS_URL": REDIS_URL,
            "FLEXDB_STORAGE_DIR": str(tmp_path / "backups"),
            "FLEXDB_TARGETS": json.dumps(targets),
            "FLEXDB_CONNECT_TIMEOUT_SECONDS": "3",
            **env,
        }
    )
    return create_app(settings).test_client(), settings


def check(stack: Stack, engine: str, uri: str):
    return stack.api.post("/connections/check", {"engine": engine, "uri": uri})


def assert_problem(response, status: int, code: str) -> None:
    assert response.status == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.body["code"] == code, response.body


# ------------------------------------------------------------------ 1. where ad-hoc checks go


def test_an_allowed_host_is_checked(stack: Stack) -> None:
    response = check(stack, "postgresql", ADHOC_PG + "?sslmode=disable&application_name=probe")
    assert response.status == 200, response.text
    assert response.body["ok"] is True and response.body["server_version"].startswith("15")


def test_a_host_outside_the_allow_list_gets_403_and_no_connection(stack: Stack) -> None:
    # 127.0.0.2 is this machine too, but not a target's host: the listener must see nothing.
    outsider = CountingListener("127.0.0.2")
    try:
        for engine, uri in (
            ("postgresql", f"postgresql://postgres@127.0.0.2:{outsider.port}/postgres"),
            ("mongodb", f"mongodb://127.0.0.2:{outsider.port}/db"),
        ):
            response = check(stack, engine, uri)
            assert_problem(response, 403, "host_not_allowed")
            assert "FLEXDB_CHECK_ALLOWED_HOSTS" in response.body["detail"]
        assert outsider.accepted == 0
    finally:
        outsider.close()


@pytest.mark.parametrize(
    ("engine", "uri", "hint"),
    [
        ("postgresql", ADHOC_PG + "?host=/var/run/postgresql", "host"),
        ("postgresql", "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/postgres", "socket"),
        ("postgresql", "postgresql:///postgres", "socket"),
        ("postgresql", ADHOC_PG + "?options=-c%20statement_timeout%3D1", "options"),
        ("postgresql", ADHOC_PG + "?sslrootcert=/etc/passwd&sslmode=verify-ca", "sslrootcert"),
        ("postgresql", ADHOC_PG + "?passfile=/etc/passwd", "passfile"),
        ("mongodb", "mongodb://127.0.0.1:27017/db?tlsCAFile=/etc/passwd&tls=true", "tlscafile"),
        ("mongodb", "mongodb://127.0.0.1:27017/db?authMechanism=MONGODB-AWS", "authmechanism"),
        ("mongodb", "mongodb+srv://cluster.example.com/db", "mongodb+srv"),
    ],
)
def test_uri_options_that_redirect_the_driver_get_422_at_uri(stack: Stack, engine: str, uri: str, hint: str) -> None:
    response = check(stack, engine, uri)
    assert_problem(response, 422, "validation_failed")
    assert response.body["errors"][0]["pointer"] == "/uri"
    assert hint in response.body["errors"][0]["detail"]


def test_allowed_networks_admit_names_that_resolve_into_them(tmp_path: Path) -> None:
    client, _ = own_app(tmp_path, {}, FLEXDB_CHECK_ALLOWED_HOSTS="127.0.0.0/8, ::1")
    response = client.post("/api/v1/connections/check", json={"engine": "postgresql", "uri": "postgresql://postgres@localhost:5432/postgres"})
    assert response.status_code == 200, response.json
    client, _ = own_app(tmp_path, {}, FLEXDB_CHECK_ALLOWED_HOSTS="db.example.com")
    response = client.post("/api/v1/connections/check", json={"engine": "postgresql", "uri": ADHOC_PG})
    assert response.status_code == 403 and response.json["code"] == "host_not_allowed"


# ------------------------------------------------------------------ 2. no more 500s


def test_a_configured_statement_timeout_is_a_502_not_a_500(tmp_path: Path) -> None:
    # JIT-compiling every statement (where the server has JIT) makes each take well over 1 ms, so
    # the timeout fires every time, not only when the catalog caches are cold.
    uri = PG_ADMIN_URI + "?options=-c%20statement_timeout%3D1%20-c%20jit%3Don%20-c%20jit_above_cost%3D0"
    client, settings = own_app(tmp_path, {"slow": {"engine": "postgresql", "uri": uri}})
    response = client.post("/api/v1/targets/slow/check")
    assert response.status_code == 502, response.json
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "target_misconfigured" and "statement_timeout" in response.json["detail"]
    # A backup meets the same error at its first step and leaves nothing in storage.
    engine = engine_for("postgresql", settings)
    storage = LocalStorage(tmp_path / "backups")
    with pytest.raises(TargetMisconfigured):
        engine.backup(settings.targets["slow"], storage, "b1", "job-1", ProgressTracker(lambda progress: None))
    assert not any((tmp_path / "backups").glob("*/manifest.json"))


def test_a_configured_mongodb_tls_file_that_cannot_be_read_is_a_502(tmp_path: Path, mongo_server: MongoTestServer) -> None:
    uri = mongo_server.uri("db") + "&tls=true&tlsCAFile=/nonexistent/ca.pem"
    client, _ = own_app(tmp_path, {"tls": {"engine": "mongodb", "uri": uri}})
    response = client.post("/api/v1/targets/tls/check")
    assert response.status_code == 502, response.json
    assert response.json["code"] == "target_misconfigured" and "cannot be read" in response.json["detail"]
    assert CANARY_PASSWORD not in response.get_data(as_text=True)


def test_ad_hoc_driver_errors_are_422_even_with_the_option_allowed(
    tmp_path: Path, mongo_server: MongoTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options are refused for ad-hoc URIs; allowed here for the test only, to show that the
    driver's own failure still comes back as the caller's 422, not a 500."""
    for engine, option in (("postgresql", "options"), ("mongodb", "tlscafile")):
        monkeypatch.setattr(engine_class(engine), "adhoc_uri_options", {**engine_class(engine).adhoc_uri_options, option: None})
    client, _ = own_app(tmp_path, {}, FLEXDB_CHECK_ALLOWED_HOSTS="127.0.0.1")
    cases = (
        ("postgresql", ADHOC_PG + "?options=-c%20statement_timeout%3D1", "statement_timeout"),
        ("mongodb", f"mongodb://127.0.0.1:{mongo_server.port}/db?tls=true&tlsCAFile=/nonexistent/ca.pem", "cannot be read"),
    )
    for engine, uri, says in cases:
        response = client.post("/api/v1/connections/check", json={"engine": engine, "uri": uri})
        assert response.status_code == 422, response.json
        assert response.json["errors"][0]["pointer"] == "/uri" and says in response.json["detail"]


# ------------------------------------------------------------------ 3. messages say what happened


def test_a_closed_port_says_connection_refused_at_host_and_port(stack: Stack) -> None:
    uris = {item["name"]: item["uri"] for item in stack.api.get("/targets").body["items"]}
    for name in ("pg-down", "mongo-down"):
        port = uris[name].split("@127.0.0.1:")[1].split("/")[0]
        response = stack.api.post(f"/targets/{name}/check")
        assert_problem(response, 502, "target_unreachable")
        assert f"connection refused at 127.0.0.1:{port}." in response.body["detail"]
    closed = free_port()
    response = check(stack, "postgresql", f"postgresql://postgres@127.0.0.1:{closed}/postgres")
    assert_problem(response, 502, "target_unreachable")
    assert f"connection refused at 127.0.0.1:{closed}." in response.body["detail"]


def test_a_role_that_does_not_exist_is_authentication_failed(stack: Stack) -> None:
    response = check(stack, "postgresql", "postgresql://no_such_role_x9@127.0.0.1:5432/postgres")
    assert_problem(response, 502, "authentication_failed")
    assert 'role "no_such_role_x9" does not exist' in response.body["detail"]


def test_a_database_that_does_not_exist_is_database_not_found(stack: Stack) -> None:
    response = check(stack, "postgresql", "postgresql://postgres@127.0.0.1:5432/no_such_db_x9")
    assert_problem(response, 502, "database_not_found")
    assert "'no_such_db_x9'" in response.body["detail"]


def test_mongodb_without_credentials_on_an_auth_server_fails_its_check(
    stack: Stack, tmp_path: Path, mongo_server: MongoTestServer
) -> None:
    anonymous = f"mongodb://127.0.0.1:{mongo_server.port}/shop"
    response = check(stack, "mongodb", anonymous)
    assert_problem(response, 502, "authentication_failed")
    assert "requires credentials" in response.body["detail"]
    # A configured target without credentials: its check and health say so (not "ok").
    client, _ = own_app(tmp_path, {"anon": {"engine": "mongodb", "uri": anonymous}})
    assert client.post("/api/v1/targets/anon/check").json["code"] == "authentication_failed"
    health = client.get("/api/v1/health").json["components"]["targets"]["anon"]
    assert health["ok"] is False and health["code"] == "authentication_failed"
    # With the credentials the same server answers.
    assert check(stack, "mongodb", mongo_server.uri("shop")).status == 200


# ------------------------------------------------------------------ 4. secrets in the query


def test_a_password_in_the_uri_query_is_masked_in_targets_and_logs(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    # libpq takes the password from the query; the machine's PostgreSQL trusts it, so it works.
    uri = f"postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable&password={CANARY_PASSWORD}"
    down = pg_uri("postgres", port=free_port()).replace(f":{CANARY_PASSWORD}@", "@") + f"?password={CANARY_PASSWORD}"
    client, settings = own_app(
        tmp_path, {"q": {"engine": "postgresql", "uri": uri}, "q-down": {"engine": "postgresql", "uri": down}}, FLEXDB_LOG_FORMAT="json"
    )
    listed = client.get("/api/v1/targets")
    uris = {item["name"]: item["uri"] for item in listed.json["items"]}
    assert uris["q"] == "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable&password=***"
    assert client.post("/api/v1/targets/q/check").status_code == 200
    failed = client.post("/api/v1/targets/q-down/check")
    assert failed.status_code == 502
    get_logger("tests").warning("target.seen", uri=settings.targets["q"].uri)
    out = capfd.readouterr()
    everything = listed.get_data(as_text=True) + failed.get_data(as_text=True) + out.out + out.err
    assert "target.seen" in everything and "password=***" in everything
    assert CANARY_PASSWORD not in everything


# ------------------------------------------------------------------ 5. health without the token


def test_health_without_the_token_shows_statuses_only(tmp_path: Path) -> None:
    targets = {
        "pg": {"engine": "postgresql", "uri": pg_uri("postgres")},
        "pg-down": {"engine": "postgresql", "uri": pg_uri("postgres", port=free_port())},
    }
    client, _ = own_app(tmp_path, targets, FLEXDB_API_TOKEN=TOKEN)
    full = client.get("/api/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert full.json["components"]["targets"]["pg"]["server_version"].startswith("15")
    assert "connection refused at 127.0.0.1" in full.json["components"]["targets"]["pg-down"]["error"]
    assert full.json["components"]["storage"]["location"]

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        bare = client.get("/api/v1/health", headers=headers)
        assert bare.status_code == full.status_code == 503  # pg-down: degraded, either way
        components = bare.json["components"]
        assert all(set(status) == {"ok"} for name, status in components.items() if name != "targets")
        assert components["targets"] == {"pg": {"ok": True}, "pg-down": {"ok": False}}
        text = bare.get_data(as_text=True)
        for leak in ("127.0.0.1", "postgres:", str(tmp_path), "15.", "refused", "error", "alive"):
            assert leak not in text, leak


# ------------------------------------------------------------------ 6. health is cached briefly


def test_health_connects_to_a_target_once_per_cache_window(tmp_path: Path, listener: CountingListener) -> None:
    uri = f"postgresql://probe@127.0.0.1:{listener.port}/db?sslmode=disable"
    client, _ = own_app(tmp_path, {"counted": {"engine": "postgresql", "uri": uri}}, FLEXDB_HEALTH_CACHE_SECONDS="2")
    first = client.get("/api/v1/health").json["components"]["targets"]["counted"]
    assert first["ok"] is False  # the listener hangs up: not a database
    after_first = listener.accepted
    assert after_first >= 1
    for _ in range(3):
        assert client.get("/api/v1/health").json["components"]["targets"]["counted"] == first
    assert listener.accepted == after_first  # answered from the cache
    time.sleep(2.2)
    client.get("/api/v1/health")
    assert listener.accepted > after_first  # the window passed: checked again
    # An explicit check always connects.
    before = listener.accepted
    client.post("/api/v1/targets/counted/check")
    assert listener.accepted > before
