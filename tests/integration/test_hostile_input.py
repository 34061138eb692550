"""Hostile and careless input meets the running service: restores into system databases,
loose booleans and integers, deeply nested JSON, callbacks aimed at redirects, metadata
addresses or carrying tokens, and enough long-polls to take every API thread.

The session ``stack`` (API + worker) serves most tests. A second API of its own (``dedicated``,
gunicorn started exactly as ``make run`` starts it, its own Redis database, no worker, so its
jobs stay queued) serves what must never run for real: restores into ``postgres`` or ``admin``
allowed by the flag, targets whose own database is a system one, and the long-poll load.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from shared.core.settings import Settings
from shared.services.container import build_services
from tests.conftest import Stack, pg_uri, service_env
from tests.support.mongo import MongoTestServer
from tests.support.processes import ApiClient, ManagedProcess, free_port, python_argv, wait_for
from tests.support.receivers import RecordingServer

LONG_POLLS = 64
PROBES = 30


@dataclass
class Dedicated:
    api: ApiClient
    env: dict[str, str]
    process: ManagedProcess


@pytest.fixture(scope="module")
def dedicated(stack: Stack, mongo_server: MongoTestServer, own_redis_url: str, tmp_path_factory) -> Iterator[Dedicated]:
    tmp = tmp_path_factory.mktemp("hostile")
    closed = free_port()  # nothing listens there: nothing these targets name is ever contacted
    targets = {
        "pg": {"engine": "postgresql", "uri": pg_uri(stack.databases["source"], port=closed)},
        "pg-template1": {"engine": "postgresql", "uri": pg_uri("template1", port=closed)},
        "pg-postgres": {"engine": "postgresql", "uri": pg_uri("postgres", port=closed)},
        "mongo-admin": {"engine": "mongodb", "uri": mongo_server.uri("admin", port=closed)},
    }
    port = free_port()
    env = service_env(
        tmp,
        targets,
        redis_url=own_redis_url,
        FLEXDB_API_HOST="127.0.0.1",
        FLEXDB_API_PORT=str(port),
        # As make run and .env.example have it: 2 processes of 8 threads.
        FLEXDB_API_WORKERS="2",
        FLEXDB_API_THREADS="8",
        # Long enough to hold the long-polls well past the probes (about a second); the cap on
        # held polls, not their length, is under test.
        FLEXDB_WAIT_MAX_SECONDS="10",
        # The session stack's backups, to submit restores of (this API only reads them).
        FLEXDB_STORAGE_DIR=str(stack.storage_dir),
    )
    argv = python_argv("-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app")
    process = ManagedProcess("hostile-api", argv, env, tmp / "api.log")
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1")
    try:
        wait_for(lambda: client.get("/targets").status == 200, 60, what="the dedicated API up")
        yield Dedicated(client, env, process)
    finally:
        process.stop()
        redis.Redis.from_url(own_redis_url).flushdb()


def backup_of(stack: Stack, target: str) -> str:
    submitted = stack.api.post("/backups", {"target": target})
    assert submitted.status == 202, submitted.text
    job = wait_for(
        lambda: (j := stack.api.get(f"/jobs/{submitted.body['id']}").body)["status"] == "succeeded" and j,
        120,
        what=f"a backup of {target}",
    )
    return job["backup_id"]


@pytest.fixture(scope="module")
def pg_backup(stack: Stack) -> str:
    return backup_of(stack, "pg")


@pytest.fixture(scope="module")
def mongo_backup(stack: Stack) -> str:
    return backup_of(stack, "mongo")


def refused(response, pointer: str) -> None:
    assert response.status == 422, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.body["code"] == "system_database_refused", response.body
    assert response.body["errors"][0]["pointer"] == pointer


# ------------------------------------------------------------------------------ system databases


@pytest.mark.parametrize("database", ["template0", "template1"])
def test_a_restore_into_a_template_database_is_refused_even_with_the_flag(stack: Stack, pg_backup: str, database: str) -> None:
    for allow in (False, True):
        body = {"backup_id": pg_backup, "target": "pg", "database": database, "allow_system_database": allow}
        refused(stack.api.post("/restores", body), "/database")


def test_a_target_whose_own_database_is_template1_takes_no_restore(dedicated: Dedicated, pg_backup: str) -> None:
    for allow in (False, True):
        body = {"backup_id": pg_backup, "target": "pg-template1", "allow_system_database": allow}
        refused(dedicated.api.post("/restores", body), "/target")


def test_postgres_takes_a_restore_only_with_the_flag(stack: Stack, dedicated: Dedicated, pg_backup: str) -> None:
    refused(stack.api.post("/restores", {"backup_id": pg_backup, "target": "pg", "database": "postgres"}), "/database")
    refused(dedicated.api.post("/restores", {"backup_id": pg_backup, "target": "pg-postgres"}), "/target")
    # Accepted with the flag. This API has no worker: the job stays queued and touches nothing.
    for body in (
        {"backup_id": pg_backup, "target": "pg-postgres", "allow_system_database": True},
        {"backup_id": pg_backup, "target": "pg", "database": "postgres", "allow_system_database": True},
    ):
        accepted = dedicated.api.post("/restores", body)
        assert accepted.status == 202, accepted.text
        assert accepted.body["status"] == "queued"


@pytest.mark.parametrize("database", ["admin", "local", "config"])
def test_mongodb_system_databases_take_a_restore_only_with_the_flag(
    stack: Stack, dedicated: Dedicated, mongo_backup: str, database: str
) -> None:
    refused(stack.api.post("/restores", {"backup_id": mongo_backup, "target": "mongo", "database": database}), "/database")
    accepted = dedicated.api.post(
        "/restores", {"backup_id": mongo_backup, "target": "mongo-admin", "database": database, "allow_system_database": True}
    )
    assert accepted.status == 202, accepted.text


def test_a_mongodb_target_whose_own_database_is_admin_needs_the_flag(dedicated: Dedicated, mongo_backup: str) -> None:
    refused(dedicated.api.post("/restores", {"backup_id": mongo_backup, "target": "mongo-admin"}), "/target")
    accepted = dedicated.api.post("/restores", {"backup_id": mongo_backup, "target": "mongo-admin", "allow_system_database": True})
    assert accepted.status == 202, accepted.text


# ------------------------------------------------------------------------------ strict fields


@pytest.mark.parametrize("drop", ["yes", 1, "true"])
def test_a_loose_drop_starts_no_restore(dedicated: Dedicated, pg_backup: str, drop) -> None:
    before = len(dedicated.api.get("/jobs?kind=restore&limit=100").body["items"])
    response = dedicated.api.post("/restores", {"backup_id": pg_backup, "target": "pg", "drop": drop})
    assert response.status == 422 and response.body["errors"][0]["pointer"] == "/drop", response.text
    assert len(dedicated.api.get("/jobs?kind=restore&limit=100").body["items"]) == before


@pytest.mark.parametrize(
    "body",
    [
        {"target": "pg", "interval_seconds": 3600, "retention": {"keep_last": 1.5}},
        {"target": "pg", "interval_seconds": 3600, "retention": {"keep_last": True}},
        {"target": "pg", "interval_seconds": 3600, "enabled": "true"},
        {"target": "pg", "interval_seconds": 3600.5},
    ],
)
def test_schedules_take_only_json_integers_and_booleans(dedicated: Dedicated, body: dict) -> None:
    response = dedicated.api.post("/schedules", body)
    assert response.status == 422, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize("query", ["wait=1.5", "wait=1e1", "wait=5_0", "limit=1.5"])
def test_query_integers_are_digits_only(dedicated: Dedicated, query: str) -> None:
    job = dedicated.api.post("/backups", {"target": "pg"}).body
    path = f"/jobs/{job['id']}?{query}" if query.startswith("wait") else f"/jobs?{query}"
    response = dedicated.api.get(path)
    assert response.status == 422 and response.body["code"] == "validation_failed", response.text
    assert dedicated.api.get(f"/jobs/{job['id']}?wait=0").status == 200


# ------------------------------------------------------------------------------ nested JSON


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"target": "pg", "options": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}",
        b'{"target": "pg", "options": {"collections": ' + b"[" * 40 + b"]" * 40 + b"}}",
    ],
    ids=["100000-open-brackets", "100000-levels", "900-levels-of-objects", "40-levels"],
)
def test_deeply_nested_json_is_a_clear_400(stack: Stack, raw: bytes) -> None:
    response = stack.api.post("/backups", raw=raw)
    assert response.status == 400, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.body["code"] == "bad_request"
    assert "FLEXDB_API_MAX_JSON_DEPTH" in response.body["detail"] or "not valid JSON" in response.body["detail"]
    assert stack.api.get("/targets").status == 200
    assert "RecursionError" not in stack.processes[1].output()


# ------------------------------------------------------------------------------ callbacks


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://100.100.100.200/hook",
        "http://[fd00:ec2::254]/hook",
        "file:///etc/passwd",
    ],
)
def test_callback_urls_that_can_never_be_sent_are_refused_at_submit(stack: Stack, url: str) -> None:
    response = stack.api.post("/backups", {"target": "pg", "callback_url": url})
    assert response.status == 422, response.text
    assert response.body["errors"][0]["pointer"] == "/callback_url"
    assert "pw" not in json.dumps(response.body["errors"])


def finished_callback(api: ApiClient, job_id: str) -> dict:
    return wait_for(
        lambda: (c := api.get(f"/jobs/{job_id}").body["callback"])["status"] != "pending" and c,
        60,
        what="the callback settled",
    )


def test_a_redirect_is_a_failed_delivery_and_never_followed(stack: Stack) -> None:
    elsewhere = RecordingServer(200)
    redirector = RecordingServer(302, location=elsewhere.url("/stolen"))
    try:
        job = stack.api.post(
            "/backups", {"target": "pg", "callback_url": redirector.url(), "callback_headers": {"Authorization": "Bearer t0k"}}
        ).body
        callback = finished_callback(stack.api, job["id"])
        assert callback["status"] == "failed" and callback["response_status"] == 302, callback
        assert "redirect" in callback["last_error"]
        assert len(redirector.hits) == 1, "a 3xx is final: no retry"
        assert elsewhere.hits == [], "the Location must never be requested"
    finally:
        redirector.close()
        elsewhere.close()


def test_callback_tokens_stay_out_of_the_job_record(stack: Stack, redis_client: redis.Redis) -> None:
    receiver = RecordingServer(200)
    token = "n8n-resume-" + str(time.time_ns())
    try:
        url = receiver.url(f"/webhook-waiting/7?signature={token}&step=2")
        job = stack.api.post("/backups", {"target": "pg", "callback_url": url}).body
        assert job["callback"]["url"] == receiver.url("/webhook-waiting/7?signature=***&step=***")
        callback = finished_callback(stack.api, job["id"])
        assert callback["status"] == "delivered", callback
        assert receiver.hits[0]["path"] == f"/webhook-waiting/7?signature={token}&step=2", "the full URL is called"
        assert token not in stack.api.get(f"/jobs/{job['id']}").text
        assert token not in json.dumps(stack.api.get("/jobs?limit=100").body)
        assert token not in (redis_client.get(f"flexdb:job:{job['id']}") or "")
        assert token not in stack.logs()
    finally:
        receiver.close()


def test_the_allow_list_is_checked_on_the_address_a_name_resolves_to(dedicated: Dedicated) -> None:
    """Submitted through the API; delivered here with the service's own callback code and real
    DNS ("localhost"), under two allow-lists: one the resolved address is outside of, one it is in."""
    receiver = RecordingServer(200)
    try:
        job = dedicated.api.post(
            "/backups", {"target": "pg", "callback_url": receiver.url("/hook?token=abc", host="localhost")}
        ).body
        assert dedicated.api.post(f"/jobs/{job['id']}/cancel").status == 200  # terminal: a callback is due

        outside = build_services(Settings.from_env({**dedicated.env, "FLEXDB_CALLBACK_ALLOWED_HOSTS": "10.0.0.0/8"}))
        outside.callbacks.deliver(job["id"], final_attempt=False)  # refused: final, no retry raised
        shown = dedicated.api.get(f"/jobs/{job['id']}").body["callback"]
        assert shown["status"] == "failed" and "FLEXDB_CALLBACK_ALLOWED_HOSTS" in shown["last_error"], shown
        assert receiver.hits == []

        inside = build_services(Settings.from_env({**dedicated.env, "FLEXDB_CALLBACK_ALLOWED_HOSTS": "127.0.0.0/8, ::1"}))
        inside.callbacks.deliver(job["id"], final_attempt=False)
        assert dedicated.api.get(f"/jobs/{job['id']}").body["callback"]["status"] == "delivered"
        assert receiver.hits[0]["path"] == "/hook?token=abc"
    finally:
        receiver.close()


# ------------------------------------------------------------------------------ long-polls


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def test_long_polls_do_not_starve_other_routes(dedicated: Dedicated) -> None:
    job = dedicated.api.post("/backups", {"target": "pg"}).body  # no worker: it stays queued
    answers: list[tuple[int, float, str | None]] = []

    def long_poll() -> None:
        started = time.monotonic()
        response = ApiClient(dedicated.api.base_url).get(f"/jobs/{job['id']}?wait=10")
        answers.append((response.status, time.monotonic() - started, response.headers.get("Retry-After")))

    pollers = [threading.Thread(target=long_poll) for _ in range(LONG_POLLS)]
    for poller in pollers:
        poller.start()
    time.sleep(1)  # every long-poll has reached the API
    probes: list[float] = []
    for _ in range(PROBES):
        started = time.monotonic()
        assert dedicated.api.get("/targets").status == 200
        probes.append(time.monotonic() - started)
    for poller in pollers:
        poller.join(60)

    held = [seconds for status, seconds, _ in answers if seconds >= 8]
    print(
        f"{LONG_POLLS} long-polls: {len(held)} held ~10 s, {LONG_POLLS - len(held)} answered at once; "
        f"GET /targets under that load: p50 {sorted(probes)[len(probes) // 2]:.3f} s, p99 {p99(probes):.3f} s, max {max(probes):.3f} s"
    )
    assert p99(probes) < 1.0
    assert len(answers) == LONG_POLLS and all(status == 200 and retry for status, _, retry in answers), answers
    assert held, "long-polls still hold when a slot is free"
    assert len(held) <= 2 * 4, "at most FLEXDB_WAIT_MAX_CONCURRENT (half of 8 threads) per API process are held"


# ------------------------------------------------------------------------------ schemathesis' findings


def test_moving_a_schedule_to_an_unknown_target_is_a_422_not_a_missing_schedule(dedicated: Dedicated) -> None:
    created = dedicated.api.post("/schedules", {"target": "pg", "cron": "0 4 1 1 *", "enabled": False})
    assert created.status == 201, created.text
    moved = dedicated.api.request("PATCH", f"/schedules/{created.body['id']}", {"target": "nowhere"})
    assert moved.status == 422 and moved.body["errors"][0]["pointer"] == "/target", moved.text
    assert dedicated.api.get(f"/schedules/{created.body['id']}").body["target"] == "pg"


def test_a_page_size_beyond_the_maximum_is_capped_not_refused(dedicated: Dedicated) -> None:
    response = dedicated.api.get("/jobs?limit=9104251414787743809536")
    assert response.status == 200, response.text


@pytest.mark.parametrize("raw", [b"", b"\n", b"  \t "])
def test_a_blank_body_is_refused_not_taken_as_no_change(dedicated: Dedicated, raw: bytes) -> None:
    created = dedicated.api.post("/schedules", {"target": "pg", "cron": "0 4 1 1 *", "enabled": False})
    patched = dedicated.api.request("PATCH", f"/schedules/{created.body['id']}", raw=raw)
    assert patched.status == 400 and patched.body["code"] == "bad_request", patched.text
    assert dedicated.api.post("/backups", raw=raw).status == 400
