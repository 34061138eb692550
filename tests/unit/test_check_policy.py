"""What an ad-hoc connection check may reach, how driver failures are told, and how secrets in
target URIs are hidden. Pure logic: every case here is refused (or classified) before anything
connects, so no server is needed; the same paths against real servers are in
tests/integration/test_connection_checks.py."""

from __future__ import annotations

import json

import pytest

from shared.core.errors import (
    AuthenticationFailed,
    DatabaseNotFound,
    HostNotAllowed,
    TargetMisconfigured,
    TargetUnreachable,
    ValidationFailed,
)
from shared.core.redaction import mask_uri, redact, uri_secrets
from shared.core.settings import Settings
from shared.engines import engine_class
from shared.engines.postgresql import classify_connection_error
from shared.services.health import statuses_only
from shared.services.targets import TargetService

TARGETS = {
    "orders": {"engine": "postgresql", "uri": "postgresql://backup:pw-orders@db.internal:5432/orders"},
    "events": {"engine": "mongodb", "uri": "mongodb://backup:pw-events@10.1.2.3:27017/events?authSource=admin"},
}


def service(**env: str) -> TargetService:
    return TargetService(Settings.from_env({"FLEXDB_TARGETS": json.dumps(TARGETS), **env}))


# ------------------------------------------------------------------------- options and sockets


@pytest.mark.parametrize(
    ("engine", "uri", "option"),
    [
        ("postgresql", "postgresql://u@db.internal/orders?host=/var/run/postgresql", "host"),
        ("postgresql", "postgresql://u@db.internal/orders?hostaddr=10.9.9.9", "hostaddr"),
        ("postgresql", "postgresql://u@db.internal/orders?port=6432", "port"),
        ("postgresql", "postgresql://u@db.internal/orders?options=-c%20statement_timeout%3D1", "options"),
        ("postgresql", "postgresql://u@db.internal/orders?service=prod", "service"),
        ("postgresql", "postgresql://u@db.internal/orders?passfile=/etc/shadow", "passfile"),
        ("postgresql", "postgresql://u@db.internal/orders?sslrootcert=/etc/ssl/x.pem", "sslrootcert"),
        ("postgresql", "postgresql://u@db.internal/orders?sslkey=/root/.ssh/id_rsa", "sslkey"),
        ("postgresql", "postgresql://u@db.internal/orders?gssencmode=require", "gssencmode"),
        ("postgresql", "postgresql://u@db.internal/orders?%68ost=elsewhere", "host"),  # percent-encoded name
        ("postgresql", "postgresql://u@db.internal/orders?sslmode=verify-full", "sslmode"),  # reads root.crt
        ("mongodb", "mongodb://10.1.2.3/events?tlsCAFile=/etc/passwd", "tlscafile"),
        ("mongodb", "mongodb://10.1.2.3/events?TLSCERTIFICATEKEYFILE=/k.pem", "tlscertificatekeyfile"),
        ("mongodb", "mongodb://10.1.2.3/events?authSource=admin;tlsCRLFile=/x", "tlscrlfile"),  # ';' splits too
        ("mongodb", "mongodb://10.1.2.3/events?proxyHost=10.9.9.9", "proxyhost"),
        ("mongodb", "mongodb://10.1.2.3/events?authMechanism=MONGODB-AWS", "authmechanism"),
        ("mongodb", "mongodb://10.1.2.3/events?authMechanismProperties=SERVICE_NAME:x", "authmechanismproperties"),
    ],
)
def test_options_that_change_where_or_how_the_driver_connects_are_refused(engine: str, uri: str, option: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        service().check_connection(engine, uri)
    assert caught.value.errors[0]["pointer"] == "/uri"
    assert caught.value.errors[0]["detail"].startswith(option)


@pytest.mark.parametrize(
    ("engine", "uri"),
    [
        ("postgresql", "postgresql://u@%2Fvar%2Frun%2Fpostgresql/orders"),
        ("postgresql", "postgresql:///orders"),  # no host: libpq's default socket
        ("postgresql", "postgresql://u@db.internal,/orders"),  # an empty second host is the socket too
        ("postgresql", "host=db.internal dbname=orders"),  # key=value strings are not checked: refused
        ("mongodb", "mongodb://%2Ftmp%2Fmongodb-27017.sock/events"),
        ("mongodb", "mongodb+srv://cluster.example.com/events"),  # hosts come from DNS, after any check
        ("mongodb", "10.1.2.3:27017"),  # no scheme
    ],
)
def test_sockets_and_uris_that_cannot_be_checked_are_refused(engine: str, uri: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        service().check_connection(engine, uri)
    assert caught.value.status == 422 and caught.value.errors[0]["pointer"] == "/uri"


def test_options_each_engine_accepts_are_declared_by_the_engine() -> None:
    pg = engine_class("postgresql").connection_address("postgresql://u@h1:5432,h2:5433/db?sslmode=require")
    assert pg.hosts == ("h1", "h2") and dict(pg.options) == {"sslmode": "require"}
    mongo = engine_class("mongodb").connection_address("mongodb://u:p@a:1,[::1]:2/db?AuthSource=admin")
    assert mongo.hosts == ("a", "::1") and dict(mongo.options) == {"authsource": "admin"}
    assert "sslmode" in engine_class("postgresql").adhoc_uri_options
    assert "authsource" in engine_class("mongodb").adhoc_uri_options


# ------------------------------------------------------------------------------ hosts


@pytest.mark.parametrize(
    ("engine", "uri", "host"),
    [
        ("postgresql", "postgresql://u@10.9.9.9:5432/x", "10.9.9.9"),
        ("postgresql", "postgresql://u@db.internal:5432,10.9.9.9:5432/x", "10.9.9.9"),  # every host counts
        ("postgresql", "postgresql://u@other.internal/x", "other.internal"),
        ("mongodb", "mongodb://10.1.2.4:27017/x", "10.1.2.4"),
        ("mongodb", "mongodb://169.254.169.254/x", "169.254.169.254"),
    ],
)
def test_by_default_only_the_hosts_of_the_targets_may_be_checked(engine: str, uri: str, host: str) -> None:
    with pytest.raises(HostNotAllowed) as caught:
        service().check_connection(engine, uri)
    assert caught.value.status == 403 and caught.value.code == "host_not_allowed"
    assert repr(host) in caught.value.message


def test_the_default_allow_list_is_the_targets_hosts() -> None:
    allowed = service().allowed_check_hosts
    assert allowed.admits_name("DB.internal")
    assert allowed.names == frozenset({"db.internal"}) and [str(n) for n in allowed.networks] == ["10.1.2.3/32"]


def test_the_setting_replaces_the_default_and_says_which_setting_to_change() -> None:
    svc = service(FLEXDB_CHECK_ALLOWED_HOSTS="replica.internal, 192.168.0.0/16")
    assert svc.allowed_check_hosts.admits_name("replica.internal")
    with pytest.raises(HostNotAllowed) as caught:  # a target's host, but the setting decides now
        svc.check_connection("mongodb", "mongodb://10.1.2.3:27017/events")
    assert "FLEXDB_CHECK_ALLOWED_HOSTS" in caught.value.message


def test_metadata_addresses_are_refused_even_inside_an_allowed_network() -> None:
    svc = service(FLEXDB_CHECK_ALLOWED_HOSTS="0.0.0.0/0")
    with pytest.raises(HostNotAllowed, match="cloud-metadata"):
        svc.check_connection("postgresql", "postgresql://u@169.254.169.254/x")


def test_a_bad_allow_list_stops_start_up() -> None:
    with pytest.raises(Exception, match="FLEXDB_CHECK_ALLOWED_HOSTS"):
        Settings.from_env({"FLEXDB_CHECK_ALLOWED_HOSTS": "10.0.0.0/33"})


# --------------------------------------------------------------------- what libpq said


# Messages as libpq 15 writes them (seen on the test server; see the integration tests).
REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?"
)
NO_ROLE = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  role "ghost" does not exist'
NO_DB = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "gone" does not exist'
BAD_PASSWORD = (
    'connection failed: connection to server at "db" (10.0.0.5), port 5432 failed: '
    'FATAL:  password authentication failed for user "backup"'
)
NO_ROOT_CERT = (
    'connection failed: connection to server at "db" (10.0.0.5), port 5432 failed: '
    'root certificate file "/etc/x.pem" does not exist'
)


@pytest.mark.parametrize(
    ("message", "error", "says"),
    [
        (REFUSED, TargetUnreachable, "connection refused at 127.0.0.1:1."),
        (NO_ROLE, AuthenticationFailed, 'role "ghost" does not exist'),
        (BAD_PASSWORD, AuthenticationFailed, "db:5432 refused the login"),
        (NO_DB, DatabaseNotFound, "no database 'gone'"),
        (NO_ROOT_CERT, TargetMisconfigured, "root certificate file"),
    ],
)
def test_libpq_failures_say_what_happened(message: str, error: type, says: str) -> None:
    classified = classify_connection_error(message, "Target 'orders'")
    assert type(classified) is error
    assert says in classified.message and classified.message.startswith("Target 'orders': ")


def test_a_refusal_by_several_hosts_names_each() -> None:
    message = REFUSED.replace("port 1", "port 2") + "\nMultiple connection attempts failed. All failures were:\n- " + REFUSED
    assert "connection refused at 127.0.0.1:2, 127.0.0.1:1." in classify_connection_error(message, "T").message


# --------------------------------------------------------------------------- secrets


def test_a_password_in_the_query_is_masked_like_one_in_the_user_info() -> None:
    assert mask_uri("postgresql://u@h/db?password=s3cret-1&sslmode=require") == "postgresql://u@h/db?password=***&sslmode=require"
    assert mask_uri("postgresql://u:pw1@h/db?sslpassword=key-pw") == "postgresql://u:***@h/db?sslpassword=***"
    assert mask_uri("postgresql:///db?PassWord=x") == "postgresql:///db?PassWord=***"
    assert mask_uri("postgresql://u@h1:1,h2:2/db") == "postgresql://u@h1:1,h2:2/db"
    aws = "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok-9,SERVICE_NAME:x"
    assert mask_uri(aws).endswith("AWS_SESSION_TOKEN:***,SERVICE_NAME:x")
    assert uri_secrets("postgresql://u:a%40b@h/db?password=c%26d") == ["a%40b", "c%26d", "a@b", "c&d"]


def test_free_text_with_a_query_or_conninfo_password_is_redacted() -> None:
    text = "failed for postgresql://u@h/db?sslmode=require&password=plain-1 and 'host=h password=plain-2 user=u'"
    assert "plain-1" not in redact(text) and "plain-2" not in redact(text)
    assert "sslmode=require" in redact(text) and "user=u" in redact(text)


def test_target_query_secrets_are_registered_when_settings_load() -> None:
    canary = "query-canary-7f3a"
    targets = {"q": {"engine": "postgresql", "uri": f"postgresql://u@h/db?password={canary}"}}
    settings = Settings.from_env({"FLEXDB_TARGETS": json.dumps(targets)})
    assert settings.targets["q"].masked_uri == "postgresql://u@h/db?password=***"
    assert redact(f"the driver said: {canary} was wrong") == "the driver said: *** was wrong"


# ---------------------------------------------------------------------------- health


def test_health_without_the_token_keeps_only_the_ok_flags() -> None:
    components = {
        "api": {"ok": True},
        "redis": {"ok": True, "latency_ms": 0.4},
        "workers": {"ok": True, "alive": ["w1@host"]},
        "storage": {"ok": False, "location": "/srv/backups", "error": "not writable"},
        "targets": {"orders": {"ok": False, "code": "target_unreachable", "error": "connection refused at db:5432"}},
    }
    assert statuses_only(components) == {
        "api": {"ok": True},
        "redis": {"ok": True},
        "workers": {"ok": True},
        "storage": {"ok": False},
        "targets": {"orders": {"ok": False}},
    }
