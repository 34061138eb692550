"""Flower, started the way ``make run --flower`` starts it, against the suite's broker.

Flower shows what the tasks carry. Every task takes a job id and nothing else (see
docs/architecture.md), so nothing Flower serves may show a secret: not the target's password
(CANARY_PASSWORD), not FLEXDB_CALLBACK_SECRET, not the Authorization header a client gave its
callback. The backups run through the API like a user's; then every Flower page and JSON
document that describes them is read and searched.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

from tests.conftest import CALLBACK_SECRET, CANARY_PASSWORD, Stack
from tests.support.processes import ManagedProcess, free_port, python_argv, wait_for

pytestmark = pytest.mark.e2e

CALLBACK_AUTHORIZATION = "Bearer " + CANARY_PASSWORD
SECRETS = {
    "CANARY_PASSWORD": CANARY_PASSWORD,
    "CALLBACK_SECRET": CALLBACK_SECRET,
    "callback Authorization": CALLBACK_AUTHORIZATION,
}


class Receiver:
    """A local callback endpoint that records what it is sent and answers 204."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/flexdb-callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Flower:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.served: list[tuple[str, str]] = []  # every page read, with the text Flower answered

    def get(self, path: str) -> str:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            raise AssertionError(f"Flower answered {err.code} for {path}: {err.read()[:300]!r}") from None
        self.served.append((path, text))
        return text

    def json(self, path: str):
        return json.loads(self.get(path))


@pytest.fixture
def flower(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    port = free_port()
    # Flower 2.2 refuses its HTTP API (401) without authentication unless this is set; the
    # suite's Flower listens on loopback only, so an open API is fine here.
    env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    # scripts/run_stack.py COMMANDS["flower"], with the stack's settings.
    argv = python_argv("-m", "celery", "-A", "worker.app", "flower", "--address=127.0.0.1", f"--port={port}")
    process = ManagedProcess("flower", argv, env, tmp_path_factory.mktemp("flower") / "flower.log")
    client = Flower(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: client.get("/healthcheck") == "OK", 20, what="Flower answers")

        # Flower only knows the tasks whose events it received: wait until its event receiver
        # has heard the stack's worker (heartbeats every 2 s) before anything is submitted.
        def worker_seen() -> bool:
            return any(
                name.startswith("it-") and alive for name, alive in client.json("/api/workers?status=true").items()
            )

        wait_for(worker_seen, 20, what="Flower receives the worker's events")
        yield client
    except Exception:
        print(process.output()[-4000:])
        raise
    finally:
        process.stop()


def _task_of(flower: Flower, name: str, job_id: str, state: str | None = None) -> dict | None:
    tasks = flower.json(f"/api/tasks?taskname={name}")
    for uuid, task in tasks.items():
        if task.get("args") == repr([job_id]) and (state is None or task.get("state") == state):
            return {**task, "uuid": uuid}
    return None


def test_flower_shows_job_ids_and_never_a_secret(stack: Stack, flower: Flower) -> None:
    with Receiver() as receiver:
        # One after the other, so each has its own task and callback to look for.
        jobs = []
        for body in (
            {"target": "pg"},
            {
                "target": "pg",
                "callback_url": receiver.url,
                "callback_headers": {"Authorization": CALLBACK_AUTHORIZATION},
            },
        ):
            response = stack.api.post("/backups", body)
            assert response.status == 202, response.text
            jobs.append(stack.api.wait_job(response.headers["Location"], timeout=30))
        assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
        # The callback really carried the header, so its absence from Flower means something.
        wait_for(lambda: receiver.requests, 15, what="the callback delivered")
        assert receiver.requests[0]["headers"].get("Authorization") == CALLBACK_AUTHORIZATION

    plain_id, callback_id = (job["id"] for job in jobs)
    backups = {
        job_id: wait_for(
            lambda job_id=job_id: _task_of(flower, "flexdb.backup", job_id, "SUCCESS"),
            15,
            what=f"backup task of {job_id} in Flower",
        )
        for job_id in (plain_id, callback_id)
    }
    callback = wait_for(lambda: _task_of(flower, "flexdb.callback", callback_id), 15, what="callback task in Flower")
    assert _task_of(flower, "flexdb.callback", plain_id) is None  # no callback was asked for

    for job_id, task in backups.items():
        info = flower.json(f"/api/task/info/{task['uuid']}")
        assert info["name"] == "flexdb.backup" and info["state"] == "SUCCESS"
        assert info["args"] == repr([job_id])  # the job id and nothing else
        assert info["kwargs"] == "{}"
        assert info["worker"].startswith("it-")
        flower.get(f"/task/{task['uuid']}")  # the HTML page a person opens
    info = flower.json(f"/api/task/info/{callback['uuid']}")
    assert info["name"] == "flexdb.callback" and info["args"] == repr([callback_id]) and info["kwargs"] == "{}"
    flower.get(f"/task/{callback['uuid']}")

    # Everything else Flower serves about these tasks and the worker that ran them.
    flower.json("/api/tasks")
    flower.json("/api/task/types")
    flower.json("/api/workers?refresh=1")
    flower.get("/tasks")
    # What the tasks page loads into its table.
    table = flower.json(
        "/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D=&order%5B0%5D%5Bcolumn%5D=0&columns%5B0%5D%5Bdata%5D=name&order%5B0%5D%5Bdir%5D=asc"
    )
    rows = table["data"]
    assert all(any(job_id in str(row.get("args")) for row in rows) for job_id in (plain_id, callback_id)), rows
    flower.get("/workers")
    flower.get(f"/worker/{info['worker']}")
    flower.get("/metrics")

    leaks = {
        f"{label} in {path}" for path, text in flower.served for label, secret in SECRETS.items() if secret in text
    }
    assert not leaks, sorted(leaks)
    # The pages searched are the real ones: they show the jobs (as the tasks' only argument).
    task_pages = [text for path, text in flower.served if path.startswith("/task/")]
    assert len(task_pages) == 3 and all(
        any(job_id in text for job_id in (plain_id, callback_id)) for text in task_pages
    )


def test_flower_tells_failed_and_cancelled_jobs_from_succeeded_ones(stack: Stack, flower: Flower) -> None:
    """A failed job's task ends FAILURE with the job's error code (never a secret), a cancelled
    one FAILURE too, a good one SUCCESS; none is delivered again."""
    failed = stack.api.post("/backups", {"target": "pg-down"})
    failed_job = stack.api.wait_job(failed.headers["Location"], timeout=30)
    assert failed_job["status"] == "failed"
    task = wait_for(lambda: _task_of(flower, "flexdb.backup", failed_job["id"], "FAILURE"), 15, what="FAILURE in Flower")
    info = flower.json(f"/api/task/info/{task['uuid']}")
    assert failed_job["error"]["code"] in info["exception"] and CANARY_PASSWORD not in info["exception"]

    good = stack.api.post("/backups", {"target": "pg"})
    good_job = stack.api.wait_job(good.headers["Location"], timeout=30)
    assert wait_for(lambda: _task_of(flower, "flexdb.backup", good_job["id"], "SUCCESS"), 15, what="SUCCESS in Flower")

    cancelled = stack.api.post("/backups", {"target": "pg"})
    stack.api.post(f"/jobs/{cancelled.body['id']}/cancel")
    cancelled_job = stack.api.wait_job(cancelled.headers["Location"], timeout=30)
    assert cancelled_job["status"] == "cancelled", cancelled_job
    task = wait_for(lambda: _task_of(flower, "flexdb.backup", cancelled_job["id"], "FAILURE"), 60, what="cancelled in Flower")
    assert "cancelled" in flower.json(f"/api/task/info/{task['uuid']}")["exception"]

    time.sleep(2)  # a redelivery of the failed task would show as a second task by now
    failed_tasks = [t for t in flower.json("/api/tasks?taskname=flexdb.backup").values() if t.get("args") == repr([failed_job["id"]])]
    assert len(failed_tasks) == 1, failed_tasks
