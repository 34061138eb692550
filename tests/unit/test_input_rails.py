"""Safety rails at submit time, without a server: strict fields, nesting depth, where callbacks
may go, system databases, the callback secret placeholder."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from marshmallow import ValidationError

from api.schemas import JobGetQuerySchema, JobListQuerySchema, RestoreRequestSchema, RetentionPolicySchema, ScheduleWriteSchema
from shared.core.errors import ConfigurationError, SystemDatabaseRefused
from shared.core.hosts import HostAllowList
from shared.core.redaction import mask_query
from shared.core.settings import CALLBACK_SECRET_PLACEHOLDER, Settings, Target
from shared.domain.backups import BackupManifest
from shared.engines import engine_class
from shared.services.callbacks import CallbackPolicy, CallbackRequest, DestinationRefused, _guarded_opener

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ strict booleans and integers


@pytest.mark.parametrize("drop", ["yes", "true", "on", 1, 0, "1", None])
def test_drop_takes_only_json_booleans(drop) -> None:
    with pytest.raises(ValidationError) as caught:
        RestoreRequestSchema().load({"backup_id": "b1", "drop": drop})
    assert "drop" in caught.value.messages


def test_json_booleans_and_integers_still_load() -> None:
    assert RestoreRequestSchema().load({"backup_id": "b1", "drop": True})["drop"] is True
    assert RestoreRequestSchema().load({"backup_id": "b1"})["allow_system_database"] is False
    assert RetentionPolicySchema().load({"keep_last": 3}) == {"keep_last": 3}
    assert ScheduleWriteSchema().load({"target": "t", "enabled": False, "interval_seconds": 60})["enabled"] is False


@pytest.mark.parametrize("value", [1.5, 2.0, "3", True])
def test_retention_counts_are_json_integers(value) -> None:
    with pytest.raises(ValidationError):
        RetentionPolicySchema().load({"keep_last": value})


@pytest.mark.parametrize("body", [{"enabled": "true"}, {"enabled": 1}, {"interval_seconds": 60.5}, {"interval_seconds": True}])
def test_schedule_fields_are_strict(body) -> None:
    with pytest.raises(ValidationError):
        ScheduleWriteSchema().load({"target": "t", **body})


@pytest.mark.parametrize("wait", ["1.5", "5_000", " 5", "٥", "1e3", "0x10", ""])
def test_query_integers_are_digits(wait) -> None:
    with pytest.raises(ValidationError):
        JobGetQuerySchema().load({"wait": wait})


def test_query_integers_still_take_digits() -> None:
    assert JobGetQuerySchema().load({"wait": "5"}) == {"wait": 5}
    assert JobListQuerySchema().load({"limit": "20"})["limit"] == 20


# ------------------------------------------------------------------ deep JSON


def test_nesting_depth_is_measured_without_recursion() -> None:
    from api.http import _nesting_depth

    deep: list = []
    for _ in range(100_000):  # far beyond Python's recursion limit
        deep = [deep]
    assert _nesting_depth(deep) == 100_001
    assert _nesting_depth({"a": [1, {"b": []}], "c": "x"}) == 4
    assert _nesting_depth("scalar") == 0


# ------------------------------------------------------------------ callbacks: where they may go


def policy(allowed: str = "") -> CallbackPolicy:
    return CallbackPolicy(HostAllowList.parse(allowed))


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@example.com/hook",
        "http://user@example.com/hook",
        "ftp://example.com/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://100.100.100.200/x",
        "http://[fd00:ec2::254]/x",
        "http://example.com:99999/x",
    ],
)
def test_callback_urls_refused_as_written(url: str) -> None:
    assert policy().refusal_for_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:5678/webhook", "https://n8n.example.com/webhook-waiting/1?signature=x", "http://[::1]:80/"])
def test_loopback_and_ordinary_hosts_are_allowed_by_default(url: str) -> None:
    assert policy().refusal_for_url(url) is None


def test_the_allow_list_admits_names_and_networks() -> None:
    only = policy("n8n.example.com, 10.0.0.0/8")
    assert only.refusal_for_url("https://N8N.example.com/x") is None
    assert only.refusal_for_url("http://10.1.2.3/x") is None
    assert "FLEXDB_CALLBACK_ALLOWED_HOSTS" in only.refusal_for_url("http://127.0.0.1/x")
    # A name not listed may still resolve into a listed network: decided when sending.
    assert only.refusal_for_url("http://other.example.com/x") is None
    assert "FLEXDB_CALLBACK_ALLOWED_HOSTS" in policy("n8n.example.com").refusal_for_url("http://other.example.com/x")
    # Never-contacted addresses stay refused even when listed.
    assert policy("169.254.0.0/16").refusal_for_url("http://169.254.169.254/x")


def test_a_name_that_resolves_to_a_metadata_address_is_refused_when_sending(monkeypatch) -> None:
    # DNS is replaced here (a mock): no real name on this machine resolves to 169.254.169.254.
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host == "rebound.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    request = urllib.request.Request("http://rebound.example/hook", data=b"{}", method="POST")
    with pytest.raises(urllib.error.URLError) as caught:
        _guarded_opener(policy(), "rebound.example").open(request, timeout=2)
    assert isinstance(caught.value.reason, DestinationRefused)
    assert "169.254.169.254" in str(caught.value.reason)


def test_the_job_shows_the_callback_url_with_query_values_masked() -> None:
    callback = CallbackRequest("https://n8n.example.com/webhook-waiting/42?signature=s3cr3t&x=1", {})
    assert callback.shown_url == "https://n8n.example.com/webhook-waiting/42?signature=***&x=***"
    assert mask_query("http://h/hook?bare-token") == "http://h/hook?***"
    assert mask_query("http://h/hook") == "http://h/hook"


# ------------------------------------------------------------------ system databases


def manifest(engine: str, database: str | None) -> BackupManifest:
    return BackupManifest(
        id="b1", target="t", engine=engine, format="f", archive_name="a", created_at="", finished_at="",
        duration_seconds=0, size_bytes=0, sha256="", database=database,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "database", "allowed_with_flag"),
    [
        ("postgresql://u:p@db:5432/orders", "template1", False),
        ("postgresql://u:p@db:5432/orders", "template0", False),
        ("postgresql://u:p@db:5432/template1", None, False),
        ("postgresql://u:p@db:5432/orders", "postgres", True),
        ("postgresql://u:p@db:5432/postgres", None, True),
    ],
)
def test_postgresql_system_databases(uri: str, database: str | None, allowed_with_flag: bool) -> None:
    engine, target = engine_class("postgresql"), Target("t", "postgresql", uri)
    with pytest.raises(SystemDatabaseRefused) as caught:
        engine.check_restore_destination(target, manifest("postgresql", "orders"), database, False)
    assert caught.value.status == 422 and caught.value.code == "system_database_refused"
    if allowed_with_flag:
        engine.check_restore_destination(target, manifest("postgresql", "orders"), database, True)
    else:
        with pytest.raises(SystemDatabaseRefused):
            engine.check_restore_destination(target, manifest("postgresql", "orders"), database, True)
    engine.check_restore_destination(Target("t", "postgresql", "postgresql://u@db/orders"), manifest("postgresql", "orders"), None, False)


@pytest.mark.parametrize("name", ["admin", "local", "config"])
def test_mongodb_system_databases_need_the_flag(name: str) -> None:
    engine = engine_class("mongodb")
    with pytest.raises(SystemDatabaseRefused):
        engine.check_restore_destination(Target("t", "mongodb", "mongodb://h/shop"), manifest("mongodb", "shop"), name, False)
    with pytest.raises(SystemDatabaseRefused):  # the target's own database, for a one-database backup
        engine.check_restore_destination(Target("t", "mongodb", f"mongodb://h/{name}"), manifest("mongodb", "shop"), None, False)
    engine.check_restore_destination(Target("t", "mongodb", "mongodb://h/shop"), manifest("mongodb", "shop"), name, True)
    # A backup of several databases keeps their own names (system ones are never restored).
    engine.check_restore_destination(Target("t", "mongodb", f"mongodb://h/{name}"), manifest("mongodb", None), None, False)


# ------------------------------------------------------------------ the callback secret placeholder


def test_env_example_ships_exactly_the_placeholder_the_settings_refuse() -> None:
    shipped = re.search(r"^FLEXDB_CALLBACK_SECRET=(.*)$", (REPO / ".env.example").read_text(), re.M)
    assert shipped and shipped.group(1) == CALLBACK_SECRET_PLACEHOLDER


def test_settings_refuse_to_start_with_the_placeholder_secret() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"FLEXDB_CALLBACK_SECRET": CALLBACK_SECRET_PLACEHOLDER})
    assert "FLEXDB_CALLBACK_SECRET" in caught.value.message
    assert "secrets.token_hex(32)" in caught.value.message
    assert CALLBACK_SECRET_PLACEHOLDER not in caught.value.message  # registered secrets are masked in logs anyway
    assert Settings.from_env({"FLEXDB_CALLBACK_SECRET": "a-real-secret-0123456789"}).callback_secret


def test_the_callback_allow_list_is_a_checked_setting() -> None:
    settings = Settings.from_env({"FLEXDB_CALLBACK_ALLOWED_HOSTS": "n8n.example.com, 10.0.0.0/8"})
    assert settings.callback_allowed_hosts.admits_name("n8n.example.com")
    with pytest.raises(ConfigurationError, match="FLEXDB_CALLBACK_ALLOWED_HOSTS"):
        Settings.from_env({"FLEXDB_CALLBACK_ALLOWED_HOSTS": "not a host"})
    with pytest.raises(ConfigurationError, match="FLEXDB_CALLBACK_ALLOWED_HOSTS"):
        Settings.from_env({"FLEXDB_CALLBACK_ALLOWED_HOSTS": "10.0.0.0/33"})


def test_wait_slots_default_to_half_the_threads() -> None:
    assert Settings.from_env({"FLEXDB_API_THREADS": "16"}).wait_slots == 8
    assert Settings.from_env({"FLEXDB_API_THREADS": "1"}).wait_slots == 1
    assert Settings.from_env({"FLEXDB_WAIT_MAX_CONCURRENT": "3"}).wait_slots == 3


def test_a_long_poll_without_a_free_slot_is_not_held() -> None:
    from api.http import WaitSlots

    slots = WaitSlots(1)
    with slots.slot() as first, slots.slot() as second:
        assert first is True and second is False
    with slots.slot() as again:  # released on the way out
        assert again is True


def test_wait_slots_must_leave_threads_for_other_routes() -> None:
    with pytest.raises(ConfigurationError, match="FLEXDB_WAIT_MAX_CONCURRENT"):
        Settings.from_env({"FLEXDB_API_THREADS": "8", "FLEXDB_WAIT_MAX_CONCURRENT": "8"})


def test_a_huge_page_size_is_taken_and_capped_later() -> None:
    # The schema states no maximum for limit: a schema-valid value must not be refused.
    assert JobListQuerySchema().load({"limit": "9104251414787743809536"})["limit"] == 9104251414787743809536
