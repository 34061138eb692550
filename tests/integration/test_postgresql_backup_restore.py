"""The first slice as a user lives it: back up a real PostgreSQL database through the API,
poll the job, restore it (in place and into another database), and see every row come back."""

from __future__ import annotations

import hashlib
import json

import psycopg
import pytest

from tests.conftest import CANARY_PASSWORD, Stack, drop_database

SEED_SQL = """
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, created_at timestamptz NOT NULL,
    balance numeric(12, 2), tags text[], profile jsonb, active boolean, avatar bytea, uid uuid
);
CREATE INDEX customers_name_idx ON customers (name);
CREATE SEQUENCE invoice_numbers START 1000;
CREATE TABLE orders (
    id bigserial PRIMARY KEY, customer_id int REFERENCES customers (id),
    invoice int NOT NULL DEFAULT nextval('invoice_numbers'), amount double precision, placed_on date, note varchar(200)
);
CREATE VIEW big_orders AS SELECT id, customer_id, amount FROM orders WHERE amount > 100;
INSERT INTO customers (name, email, created_at, balance, tags, profile, active, avatar, uid)
SELECT 'customer ' || g, 'c' || g || '@example.com', timestamptz '2026-01-01 00:00+00' + g * interval '1 hour',
       g * 1.25, ARRAY['t' || (g % 5), 'x'], jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       g % 3 = 0, decode(md5(g::text), 'hex'), md5(g::text)::uuid
FROM generate_series(1, 300) g;
INSERT INTO orders (customer_id, amount, placed_on, note)
SELECT 1 + g % 300, g * 0.5, date '2026-01-01' + (g % 365), CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END
FROM generate_series(1, 1500) g;
"""

TABLES = ("customers", "orders")


def connect(database: str) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}", autocommit=True)


def snapshot(database: str) -> dict:
    """Everything a user would compare: rows, the view, the sequence, the indexes."""
    with connect(database) as conn:
        state = {table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES}
        state["big_orders"] = conn.execute("SELECT * FROM big_orders ORDER BY id").fetchall()
        state["invoice_numbers"] = conn.execute("SELECT last_value, is_called FROM invoice_numbers").fetchone()
        state["indexes"] = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        ).fetchall()
    return state


def backup_now(stack: Stack, target: str = "pg") -> dict:
    response = stack.api.post("/backups", {"target": target})
    assert response.status == 202, response.text
    assert response.headers["Location"] == f"/api/v1/jobs/{response.body['id']}"
    return stack.api.wait_job(response.headers["Location"])


def restore_now(stack: Stack, **body) -> dict:
    response = stack.api.post("/restores", body)
    assert response.status == 202, response.text
    return stack.api.wait_job(response.headers["Location"])


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> dict:
    with connect(stack.databases["source"]) as conn:
        conn.execute(SEED_SQL)
    return snapshot(stack.databases["source"])


@pytest.fixture(scope="module")
def backup_job(stack: Stack, seeded: dict) -> dict:
    job = backup_now(stack)
    assert job["status"] == "succeeded", job
    return job


def test_submitted_backup_answers_202_with_a_queued_job_and_retry_after(stack: Stack, seeded: dict) -> None:
    response = stack.api.post("/backups", {"target": "pg"})
    assert response.status == 202
    assert response.body["status"] in {"queued", "running"}
    assert response.body["done"] is False
    assert response.body["kind"] == "backup"
    assert response.headers.get("Retry-After")
    assert response.body["links"]["self"].endswith(response.headers["Location"])
    assert stack.api.wait_job(response.headers["Location"])["status"] == "succeeded"


def test_finished_backup_is_listed_with_a_checksum_matching_the_file(stack: Stack, backup_job: dict) -> None:
    backup_id = backup_job["backup_id"]
    listed = stack.api.get("/backups?target=pg").body["items"]
    assert backup_id in [item["id"] for item in listed]

    backup = stack.api.get(f"/backups/{backup_id}").body
    archive = stack.storage_dir / backup_id / "archive.dump.zst"  # pg_dump -Fc in the default codec, zstd
    assert backup["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert backup["size_bytes"] == archive.stat().st_size
    assert backup["engine"] == "postgresql" and backup["format"] == "pg_dump-custom"
    assert backup["compression"] == "zstd"
    assert backup["server_version"].startswith("15") and backup["tool_version"]
    manifest = json.loads((stack.storage_dir / backup_id / "manifest.json").read_text())
    assert manifest["sha256"] == backup["sha256"]
    assert backup_job["result"]["sha256"] == backup["sha256"]
    assert "Retry-After" not in stack.api.get(f"/jobs/{backup_job['id']}").headers


def test_restore_in_place_brings_every_row_back_after_changes(stack: Stack, seeded: dict, backup_job: dict) -> None:
    source = stack.databases["source"]
    with connect(source) as conn:
        conn.execute("DELETE FROM orders WHERE id % 2 = 0")
        conn.execute("UPDATE customers SET name = 'changed', profile = NULL")
        conn.execute("SELECT nextval('invoice_numbers') FROM generate_series(1, 50)")
        conn.execute("CREATE TABLE added_after_backup (x int)")
    assert snapshot(source) != seeded

    job = restore_now(stack, backup_id=backup_job["backup_id"], drop=True)

    assert job["status"] == "succeeded", job
    assert job["backup_id"] == backup_job["backup_id"]
    assert snapshot(source) == seeded


def test_restore_into_another_database_creates_it(stack: Stack, seeded: dict, backup_job: dict) -> None:
    copy = stack.databases["copy"]
    drop_database(copy)

    job = restore_now(stack, backup_id=backup_job["backup_id"], target="pg", database=copy)

    assert job["status"] == "succeeded", job
    assert snapshot(copy) == seeded
    with connect(copy) as conn:  # the sequence keeps counting where it was
        assert conn.execute("INSERT INTO orders (amount) VALUES (1) RETURNING invoice").fetchone()[0] == 2500


def test_restore_without_drop_refuses_a_database_that_holds_data(stack: Stack, seeded: dict, backup_job: dict) -> None:
    job = restore_now(stack, backup_id=backup_job["backup_id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "target_not_empty"
    assert '"drop": true' in job["error"]["message"]
    assert snapshot(stack.databases["source"]) == seeded


def test_corrupted_archive_is_refused_before_the_database_is_touched(stack: Stack, seeded: dict) -> None:
    damaged = backup_now(stack)
    archive = stack.storage_dir / damaged["backup_id"] / "archive.dump.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with connect(stack.databases["source"]) as conn:
        conn.execute("DELETE FROM orders WHERE id < 10")
    before = snapshot(stack.databases["source"])

    job = restore_now(stack, backup_id=damaged["backup_id"], drop=True)

    assert job["status"] == "failed"
    assert job["error"]["code"] == "checksum_mismatch"
    assert snapshot(stack.databases["source"]) == before


def test_unreachable_target_fails_the_job_with_a_clear_code(stack: Stack) -> None:
    job = backup_now(stack, target="pg-down")

    assert job["status"] == "failed"
    assert job["error"]["code"] == "target_unreachable"
    assert "pg-down" in job["error"]["message"]
    assert job["backup_id"] is None
    assert all(item["target"] != "pg-down" for item in stack.api.get("/backups").body["items"])


def test_jobs_are_listed_newest_first_with_filters_and_pages(stack: Stack, backup_job: dict) -> None:
    first = stack.api.get("/jobs?kind=backup&limit=2").body
    assert len(first["items"]) == 2
    assert all(job["kind"] == "backup" for job in first["items"])
    created = [job["created_at"] for job in first["items"]]
    assert created == sorted(created, reverse=True)
    assert first["next"]
    second = stack.api.get(first["next"]).body
    assert not {job["id"] for job in second["items"]} & {job["id"] for job in first["items"]}
    assert all(job["created_at"] <= created[-1] for job in second["items"])

    failed = stack.api.get("/jobs?status=failed&target=pg-down").body["items"]
    assert failed and all(job["status"] == "failed" and job["target"] == "pg-down" for job in failed)


def test_backups_are_paginated_newest_first(stack: Stack, backup_job: dict) -> None:
    first = stack.api.get("/backups?limit=1").body
    assert len(first["items"]) == 1 and first["next"]
    second = stack.api.get(first["next"]).body
    assert second["items"][0]["id"] < first["items"][0]["id"]


def test_health_reports_each_component(stack: Stack) -> None:
    response = stack.api.get("/health")
    components = response.body["components"]
    assert components["redis"]["ok"] and components["workers"]["ok"] and components["storage"]["ok"]
    assert components["targets"]["pg"]["ok"] and components["targets"]["pg"]["server_version"].startswith("15")
    # One target is down on purpose, so the whole service reports degraded.
    assert components["targets"]["pg-down"] == {
        "ok": False,
        "code": "target_unreachable",
        "error": components["targets"]["pg-down"]["error"],
    }
    assert response.status == 503


def test_targets_show_uris_with_the_password_masked(stack: Stack) -> None:
    body = stack.api.get("/targets").body
    uris = {item["name"]: item["uri"] for item in body["items"]}
    assert uris["pg"].startswith("postgresql://postgres:***@127.0.0.1:5432/")
    assert CANARY_PASSWORD not in json.dumps(body)


def test_target_check_reports_server_version_and_latency(stack: Stack) -> None:
    ok = stack.api.post("/targets/pg/check")
    assert ok.status == 200 and ok.body["server_version"].startswith("15") and ok.body["latency_ms"] >= 0
    down = stack.api.post("/targets/pg-down/check")
    assert down.status == 502 and down.body["code"] == "target_unreachable"
    assert down.headers["Content-Type"] == "application/problem+json"


def test_ad_hoc_connection_check_never_echoes_the_password(stack: Stack) -> None:
    secret = "AdHoc-" + CANARY_PASSWORD
    response = stack.api.post(
        "/connections/check", {"engine": "postgresql", "uri": f"postgresql://nobody:{secret}@127.0.0.1:1/x"}
    )
    assert response.status == 502 and response.body["code"] == "target_unreachable"
    assert secret not in response.text
    good = stack.api.post("/connections/check", {"engine": "postgresql", "uri": "postgresql://postgres@127.0.0.1:5432/postgres"})
    assert good.status == 200 and good.body["ok"] is True


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "pointers"),
    [
        ("/backups", {"target": "nope"}, 404, "target_not_found", None),
        ("/backups", {}, 422, "validation_failed", ["/target"]),
        ("/backups", {"target": "pg", "colour": "red"}, 422, "validation_failed", ["/colour"]),
        ("/backups", {"target": 12}, 422, "validation_failed", ["/target"]),
        ("/restores", {"backup_id": "20200101T000000000000Z-000000"}, 404, "backup_not_found", None),
        ("/restores", {"backup_id": "..", "drop": "maybe"}, 422, "validation_failed", ["/backup_id", "/drop"]),
        ("/restores", {"backup_id": "x", "database": "bad name;"}, 422, "validation_failed", ["/database"]),
        ("/backups", {"target": "pg", "options": {"compress": 9}}, 422, "validation_failed", ["/options/compress"]),
    ],
)
def test_bad_requests_get_problem_json_with_a_stable_code(stack, path, body, status, code, pointers) -> None:
    response = stack.api.post(path, body)
    assert response.status == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.body["code"] == code and response.body["status"] == status
    assert response.body["type"].endswith(code) and response.body["title"] and response.body["detail"]
    if pointers:
        assert sorted(e["pointer"] for e in response.body["errors"]) == pointers


def test_flask_errors_are_problem_json_too(stack: Stack) -> None:
    assert stack.api.get("/nothing-here").body["code"] == "not_found"
    not_allowed = stack.api.request("DELETE", "/backups")
    assert not_allowed.status == 405 and not_allowed.body["code"] == "method_not_allowed"
    malformed = stack.api.post("/backups", raw=b"{not json")
    assert malformed.status == 400 and malformed.body["code"] == "bad_request"
    assert stack.api.get("/jobs/does-not-exist").body["code"] == "job_not_found"
    assert stack.api.get("/backups/..").status == 404


def test_no_password_reaches_a_log_line(stack: Stack) -> None:
    """Runs after the tests above in this module: every job they ran has been logged."""
    logs = stack.logs()
    for event in ("job.started", "job.stage", "job.succeeded", "job.failed", "http.request"):
        assert f'"event": "{event}"' in logs, f"no {event} in the logs"
    assert CANARY_PASSWORD not in logs
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # one JSON object per line
