"""What workflow engines need from jobs: long-poll, signed callbacks, idempotent submits and
cancel, against the real worker. A table lock held by the test keeps pg_dump waiting, so a
job stays `running` (or, with both worker slots busy, `queued`) exactly as long as needed."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from tests.conftest import CALLBACK_SECRET, CANARY_PASSWORD, Stack
from tests.support.processes import wait_for


def settle(stack: Stack) -> None:
    """Let jobs of earlier tests finish, so a lock taken now holds only this test's jobs."""
    wait_for(lambda: all(job["done"] for job in stack.api.get("/jobs?limit=50").body["items"]), 30, what="idle")


@contextmanager
def table_locked(stack: Stack) -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE on a table of the source database: pg_dump waits for it."""
    settle(stack)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.databases['source']}") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lock_me (id int)")
        conn.commit()
        conn.execute("LOCK TABLE lock_me IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def submit(stack: Stack, target: str = "pg", **extra) -> dict:
    response = stack.api.post("/backups", {"target": target, **extra})
    assert response.status == 202, response.text
    return response.body


def running(stack: Stack, job_id: str) -> dict:
    return wait_for(
        lambda: (job := stack.api.get(f"/jobs/{job_id}").body)["progress"]["stage"] == "dumping" and job,
        20,
        what="the dump running",
    )


class Receiver:
    """A local HTTP endpoint standing in for n8n's resume URL: records calls, answers as told."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                # Header names are case-insensitive on the wire: compare them lower-cased.
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.calls.append({"headers": headers, "body": body})
                status = receiver.answers[min(len(receiver.calls), len(receiver.answers)) - 1]
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver_factory():
    made: list[Receiver] = []

    def make(*answers: int) -> Receiver:
        made.append(Receiver(list(answers)))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# ------------------------------------------------------------------------------ long-poll


def test_wait_holds_the_request_until_the_job_changes(stack: Stack) -> None:
    with table_locked(stack):
        job = submit(stack)
        running(stack, job["id"])
        started = time.monotonic()
        held = stack.api.get(f"/jobs/{job['id']}?wait=2")
        assert 1.8 <= time.monotonic() - started < 5, "no change: held for the whole wait"
        assert held.body["status"] == "running" and held.headers["Retry-After"]

        def release_soon() -> None:
            time.sleep(1)
            stack.api.post(f"/jobs/{job['id']}/cancel")

        threading.Thread(target=release_soon).start()
        started = time.monotonic()
        changed = stack.api.get(f"/jobs/{job['id']}?wait=20")
        assert time.monotonic() - started < 10, "the change ended the wait early"
        assert changed.body["status"] == "cancelled" and changed.body["done"] is True


def test_wait_answers_at_once_for_a_finished_job_and_is_capped(stack: Stack) -> None:
    job = stack.api.wait_job(f"/api/v1/jobs/{submit(stack)['id']}")
    started = time.monotonic()
    assert stack.api.get(f"/jobs/{job['id']}?wait=3600").body["done"] is True
    assert time.monotonic() - started < 1
    assert stack.api.get(f"/jobs/{job['id']}?wait=-1").status == 422


# ------------------------------------------------------------------------------ callbacks


def verify_signature(call: dict) -> dict:
    timestamp = call["headers"]["x-flexdb-timestamp"]
    expected = hmac.new(CALLBACK_SECRET.encode(), timestamp.encode() + b"." + call["body"], hashlib.sha256).hexdigest()
    assert call["headers"]["x-flexdb-signature"] == f"sha256={expected}"
    assert abs(time.time() - int(timestamp)) < 120
    return json.loads(call["body"])


def test_a_finished_job_is_posted_to_its_callback_signed(stack: Stack, receiver_factory) -> None:
    receiver = receiver_factory(200)
    secret_header = "Bearer " + CANARY_PASSWORD
    job = submit(stack, callback_url=receiver.url, callback_headers={"Authorization": secret_header})
    assert job["callback"] == {"url": receiver.url, "status": "pending", "attempts": 0, "response_status": None, "last_error": None}
    assert secret_header not in json.dumps(job)

    wait_for(lambda: receiver.calls, 30, what="the callback")
    call = receiver.calls[0]
    body = verify_signature(call)
    assert call["headers"]["authorization"] == secret_header
    assert call["headers"]["x-flexdb-event"] == "job.succeeded"
    assert body["id"] == job["id"] and body["status"] == "succeeded" and body["done"] is True
    assert body["backup_id"] and body["links"]["self"].endswith(f"/api/v1/jobs/{job['id']}")
    final = wait_for(lambda: (j := stack.api.get(f"/jobs/{job['id']}").body)["callback"]["status"] == "delivered" and j, 10)
    assert final["callback"]["attempts"] == 1 and final["callback"]["response_status"] == 200


def test_callbacks_are_retried_on_5xx_and_not_on_410(stack: Stack, receiver_factory) -> None:
    flaky = receiver_factory(503, 200)
    gone = receiver_factory(410)
    retried = submit(stack, callback_url=flaky.url)
    final = submit(stack, callback_url=gone.url)

    wait_for(lambda: len(flaky.calls) == 2, 30, what="a second attempt after 503")
    assert verify_signature(flaky.calls[1])["id"] == retried["id"]
    wait_for(lambda: gone.calls, 30, what="the callback to the gone receiver")
    time.sleep(3)  # long enough for a first backoff retry, which must not come
    assert len(gone.calls) == 1
    shown = stack.api.get(f"/jobs/{final['id']}").body["callback"]
    assert shown["status"] == "failed" and shown["response_status"] == 410 and shown["attempts"] == 1


def test_callback_fields_are_validated(stack: Stack) -> None:
    bad_url = stack.api.post("/backups", {"target": "pg", "callback_url": "ftp://example/x"})
    assert bad_url.status == 422 and bad_url.body["errors"][0]["pointer"] == "/callback_url"
    reserved = stack.api.post(
        "/backups", {"target": "pg", "callback_url": "http://127.0.0.1:9/x", "callback_headers": {"X-FlexDB-Signature": "x"}}
    )
    assert reserved.status == 422 and reserved.body["errors"][0]["pointer"].startswith("/callback_headers")


# ------------------------------------------------------------------------------ idempotency


def test_the_same_idempotency_key_and_body_return_the_same_job(stack: Stack) -> None:
    key = str(uuid.uuid4())
    first = stack.api.post("/backups", {"target": "pg"}, headers={"Idempotency-Key": key})
    again = stack.api.post("/backups", {"target": "pg"}, headers={"Idempotency-Key": key})
    assert first.status == again.status == 202
    assert again.body["id"] == first.body["id"]
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    other = stack.api.post("/backups", {"target": "pg-sched"}, headers={"Idempotency-Key": key})
    assert other.status == 422 and other.body["code"] == "idempotency_key_reused"
    fresh = stack.api.post("/backups", {"target": "pg"}, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert fresh.body["id"] != first.body["id"]


def test_a_failed_submit_does_not_burn_the_key(stack: Stack) -> None:
    key = str(uuid.uuid4())
    assert stack.api.post("/backups", {"target": "nope"}, headers={"Idempotency-Key": key}).status == 404
    assert stack.api.post("/backups", {"target": "nope"}, headers={"Idempotency-Key": key}).status == 404


# ------------------------------------------------------------------------------ cancel


def test_cancelling_a_running_backup_stops_pg_dump_and_leaves_no_archive(stack: Stack) -> None:
    with table_locked(stack):
        before = {p.name for p in stack.storage_dir.iterdir()}
        job = submit(stack)
        running(stack, job["id"])
        response = stack.api.post(f"/jobs/{job['id']}/cancel")
        assert response.status == 202 and response.body["cancel_requested"] is True
        final = stack.api.wait_job(response.headers["Location"], timeout=20)
    assert final["status"] == "cancelled" and final["backup_id"] is None and final["error"] is None
    assert {p.name for p in stack.storage_dir.iterdir()} == before
    assert stack.api.post(f"/jobs/{job['id']}/cancel").body["code"] == "job_finished"


def test_cancelling_a_queued_job_means_it_never_starts(stack: Stack) -> None:
    with table_locked(stack):
        blockers = [submit(stack, "pg"), submit(stack, "pg-sched")]  # both worker slots wait on the lock
        for blocker in blockers:
            running(stack, blocker["id"])
        queued = submit(stack, "pg")
        time.sleep(1)
        assert stack.api.get(f"/jobs/{queued['id']}").body["status"] == "queued"
        response = stack.api.post(f"/jobs/{queued['id']}/cancel")
        assert response.status == 200 and response.body["status"] == "cancelled"
        for blocker in blockers:
            stack.api.post(f"/jobs/{blocker['id']}/cancel")
    time.sleep(2)  # the worker has picked the cancelled message by now
    final = stack.api.get(f"/jobs/{queued['id']}").body
    assert final["status"] == "cancelled" and final["started_at"] is None
