"""Retention and restore rails as an operator meets them, on a private API and worker with real
PostgreSQL and MongoDB: a partial backup never pushes a full one out, a schedule's policy prunes
only that schedule's backups (manual ones when it opts in), a pinned backup is never deleted (and
the pin survives a Redis loss), and a failed restore drops the database it created, never one
that was there before."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.conftest import Stack, drop_database, pg_admin, pg_uri, running_stack
from tests.support.mongo import MongoTestServer

SUFFIX = secrets.token_hex(4)
PG_DB = f"flexdb_rails_{SUFFIX}"
GRANTS_DB = f"flexdb_rails_grants_{SUFFIX}"
MONGO_DB = f"flexdb_rails_{SUFFIX}"
ROLE = f"flexdb_rails_role_{SUFFIX}"


@pytest.fixture(scope="module")
def rails(tmp_path_factory, mongo_server: MongoTestServer, own_redis_url: str) -> Iterator[Stack]:
    with pg_admin() as conn:
        for name in (PG_DB, GRANTS_DB):
            conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(pg_uri(PG_DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO customers (name) SELECT 'c' || n FROM generate_series(1, 20) n")
    with mongo_server.client() as client:
        client[MONGO_DB]["orders"].insert_many([{"n": n} for n in range(30)])
        client[MONGO_DB]["carts"].insert_many([{"n": n} for n in range(5)])
    targets = {
        "rails-pg": {"engine": "postgresql", "uri": pg_uri(PG_DB)},
        "rails-grants": {"engine": "postgresql", "uri": pg_uri(GRANTS_DB)},
        "rails-mongo": {"engine": "mongodb", "uri": mongo_server.uri(MONGO_DB)},
    }
    try:
        with running_stack(tmp_path_factory.mktemp("rails"), targets, own_redis_url) as stack:
            yield stack
    finally:
        for name in (PG_DB, GRANTS_DB):
            drop_database(name)
        with mongo_server.client() as client:
            client.drop_database(MONGO_DB)


def run_job(stack: Stack, path: str, body: dict | None = None) -> dict:
    response = stack.api.post(path, body)
    assert response.status == 202, response.text
    return stack.api.wait_job(response.headers["Location"], timeout=120)


def backup(stack: Stack, target: str, **options) -> dict:
    job = run_job(stack, "/backups", {"target": target, "options": options})
    assert job["status"] == "succeeded", job
    return stack.api.get(f"/backups/{job['backup_id']}").body


def schedule(stack: Stack, target: str, retention: dict) -> str:
    response = stack.api.post("/schedules", {"target": target, "cron": "0 3 1 1 *", "enabled": False, "retention": retention})
    assert response.status == 201, response.text
    return response.body["id"]


def run_schedule(stack: Stack, schedule_id: str) -> dict:
    job = run_job(stack, f"/schedules/{schedule_id}/run")
    assert job["status"] == "succeeded", job
    return stack.api.get(f"/backups/{job['backup_id']}").body


def listed(stack: Stack, target: str) -> set[str]:
    return {b["id"] for b in stack.api.get(f"/backups?target={target}&limit=100").body["items"]}


def reasons(stack: Stack, target: str) -> dict[str, list[str]]:
    preview = stack.api.get(f"/retention/preview?target={target}").body
    return {item["backup_id"]: item["reasons"] for item in preview["items"]}


# ------------------------------------------------------------------------------ retention


def test_a_partial_backup_is_marked_and_never_pushes_a_full_one_out(rails: Stack) -> None:
    nightly = schedule(rails, "rails-mongo", {"keep_last": 1, "include_manual": True})
    full_1 = run_schedule(rails, nightly)
    assert full_1["partial"] is False and full_1["scope"] == {} and full_1["schedule_id"] == nightly

    one_collection = backup(rails, "rails-mongo", collections=["orders"])
    assert one_collection["partial"] is True and one_collection["scope"] == {"collections": ["orders"]}
    assert one_collection["schedule_id"] is None
    # newer than full_1, and keep_last is 1: full_1 stays all the same
    assert listed(rails, "rails-mongo") == {full_1["id"], one_collection["id"]}

    full_2 = run_schedule(rails, nightly)
    assert listed(rails, "rails-mongo") == {full_2["id"], one_collection["id"]}
    assert reasons(rails, "rails-mongo")[one_collection["id"]] == ["partial"]

    # only an age rule deletes a partial backup
    assert rails.api.request("PATCH", f"/schedules/{nightly}", {"retention": {"keep_last": 1, "max_age_days": 0, "include_manual": True}}).status == 200
    full_3 = run_schedule(rails, nightly)
    assert listed(rails, "rails-mongo") == {full_3["id"]}


def test_a_schedule_policy_prunes_only_its_own_backups_and_manual_ones_when_it_opts_in(rails: Stack) -> None:
    pruned = schedule(rails, "rails-pg", {"keep_last": 1})
    other = schedule(rails, "rails-pg", {"keep_last": 5})
    manual = backup(rails, "rails-pg")
    from_other = run_schedule(rails, other)
    first = run_schedule(rails, pruned)
    second = run_schedule(rails, pruned)

    assert second["schedule_id"] == pruned
    assert listed(rails, "rails-pg") == {manual["id"], from_other["id"], second["id"]}
    assert first["id"] not in listed(rails, "rails-pg")
    assert reasons(rails, "rails-pg")[manual["id"]] == ["no policy governs it"]

    response = rails.api.request("PATCH", f"/schedules/{pruned}", {"retention": {"keep_last": 1, "include_manual": True}})
    assert response.status == 200 and response.body["retention"]["include_manual"] is True
    third = run_schedule(rails, pruned)
    assert listed(rails, "rails-pg") == {from_other["id"], third["id"]}
    for schedule_id in (pruned, other):
        rails.api.request("DELETE", f"/schedules/{schedule_id}")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_include_manual_takes_only_true_or_false(rails: Stack, value) -> None:
    response = rails.api.post("/schedules", {"target": "rails-pg", "cron": "0 3 * * *", "retention": {"keep_last": 1, "include_manual": value}})
    assert response.status == 422, response.text
    assert response.body["errors"][0]["pointer"] == "/retention/include_manual"


# ------------------------------------------------------------------------------ pins


def test_a_pinned_backup_survives_retention_until_unpinned(rails: Stack) -> None:
    nightly = schedule(rails, "rails-pg", {"keep_last": 1})
    first = run_schedule(rails, nightly)

    response = rails.api.request("PATCH", f"/backups/{first['id']}", {"pinned": True})
    assert response.status == 200, response.text
    assert response.body["pinned"] is True and response.body["id"] == first["id"]
    assert rails.api.get(f"/backups/{first['id']}").body["pinned"] is True

    second = run_schedule(rails, nightly)
    assert {first["id"], second["id"]} <= listed(rails, "rails-pg")
    assert reasons(rails, "rails-pg")[first["id"]] == ["pinned"]

    assert rails.api.request("PATCH", f"/backups/{first['id']}", {"pinned": False}).body["pinned"] is False
    third = run_schedule(rails, nightly)
    assert first["id"] not in listed(rails, "rails-pg") and second["id"] not in listed(rails, "rails-pg")
    assert third["id"] in listed(rails, "rails-pg")
    rails.api.request("DELETE", f"/schedules/{nightly}")


@pytest.mark.parametrize(
    ("body", "pointer"),
    [({"pinned": "yes"}, "/pinned"), ({"pinned": 1}, "/pinned"), ({}, "/pinned"), ({"pinned": True, "note": "x"}, "/note")],
)
def test_a_pin_takes_a_json_boolean_and_nothing_else(rails: Stack, body, pointer) -> None:
    some_backup = backup(rails, "rails-pg")
    response = rails.api.request("PATCH", f"/backups/{some_backup['id']}", body)
    assert response.status == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert [e["pointer"] for e in response.body["errors"]] == [pointer]
    assert rails.api.get(f"/backups/{some_backup['id']}").body["pinned"] is False


def test_pinning_an_unknown_backup_is_404(rails: Stack) -> None:
    response = rails.api.request("PATCH", "/backups/20200101T000000000000Z-000000", {"pinned": True})
    assert response.status == 404 and response.body["code"] == "backup_not_found"


# ------------------------------------------------------------------------------ restores that fail


@pytest.fixture(scope="module")
def grants_backup(rails: Stack) -> Iterator[dict]:
    """A backup that verifies but cannot be restored here: it grants to a role that is gone since."""
    with pg_admin() as conn:
        conn.execute(f'CREATE ROLE "{ROLE}"')
    try:
        with psycopg.connect(pg_uri(GRANTS_DB), autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
            conn.execute(f'GRANT SELECT ON ledger TO "{ROLE}"')
        made = backup(rails, "rails-grants")
        with psycopg.connect(pg_uri(GRANTS_DB), autocommit=True) as conn:
            conn.execute(f'REVOKE ALL ON ledger FROM "{ROLE}"')
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{ROLE}"')
    yield made


def database_exists(name: str) -> bool:
    with pg_admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_a_failed_restore_drops_the_database_it_created(rails: Stack, grants_backup: dict) -> None:
    fresh = f"flexdb_rails_new_{SUFFIX}"
    try:
        job = run_job(rails, "/restores", {"backup_id": grants_backup["id"], "target": "rails-grants", "database": fresh})
        assert job["status"] == "failed" and job["error"]["code"] == "restore_failed", job
        assert ROLE in job["error"]["message"]  # pg_restore's reason reaches the user
        assert not database_exists(fresh)
    finally:
        drop_database(fresh)


def test_a_failed_restore_never_drops_a_database_that_was_there(rails: Stack, grants_backup: dict) -> None:
    existing = f"flexdb_rails_old_{SUFFIX}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{existing}"')
    try:
        job = run_job(rails, "/restores", {"backup_id": grants_backup["id"], "target": "rails-grants", "database": existing})
        assert job["status"] == "failed" and job["error"]["code"] == "restore_failed", job
        assert database_exists(existing)
    finally:
        drop_database(existing)


# ------------------------------------------------------------------------------ last: Redis forgets everything


def test_a_pin_survives_a_redis_loss(rails: Stack, own_redis_url: str) -> None:
    pinned = backup(rails, "rails-pg")
    assert rails.api.request("PATCH", f"/backups/{pinned['id']}", {"pinned": True}).status == 200
    redis.Redis.from_url(own_redis_url).flushdb()
    assert rails.api.get(f"/backups/{pinned['id']}").body["pinned"] is True
    assert pinned["id"] in listed(rails, "rails-pg")
