"""Redis goes away and comes back: a private redis-server (append-only file on, as `make run`
and docker-compose run it) is killed with SIGKILL and started again on the same folder, while
the API, a worker and beat run against it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.crash_stack import private_stack
from tests.support.processes import ManagedProcess, free_port, wait_for

OUTAGE_SECONDS = 5.0

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


class RedisServer:
    """A redis-server of the test's own, persisted in ``folder`` with an append-only file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: ManagedProcess | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "yes", "--dir", str(self.folder),
        ]  # fmt: skip
        self.process = ManagedProcess("redis", argv, {}, self.folder / "redis.log")
        client = redis.Redis.from_url(self.url)
        wait_for(client.ping, 10, what="redis-server up")
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.proc.kill()
        self.process.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process:
        server.process.stop()


def test_the_stack_rides_out_a_redis_outage_and_jobs_end_well(tmp_path: Path, redis_server: RedisServer) -> None:
    with private_stack(tmp_path / "stack", redis_server.url, FLEXDB_CONNECT_TIMEOUT_SECONDS="1") as stack:
        api = stack.start_api()
        worker = stack.start_worker()
        beat = stack.start_beat()
        stack.wait_workers(1)
        with stack.table_locked():
            running = stack.submit()
            stack.wait_dumping(running["id"])
            waiting = stack.submit()
            wait_for(lambda: stack.job(waiting["id"])["progress"]["stage"] == "waiting for target", 20)
            time.sleep(1.5)  # the append-only file is synced every second

            redis_server.kill()
            down = stack.api.get("/health")
            assert down.status == 503 and down.body["components"]["redis"]["ok"] is False
            assert stack.api.post("/backups", {"target": "pg"}).body["code"] == "broker_unavailable"
            time.sleep(OUTAGE_SECONDS)
            assert api.alive() and worker.alive() and beat.alive(), stack.logs()[-3000:]
            redis_server.start()
        # The lock is gone: the dump finishes after the outage, then the waiting job runs.
        finals = [stack.wait_job(job["id"], timeout=90) for job in (running, waiting)]
        assert [f["status"] for f in finals] == ["succeeded", "succeeded"], finals
        after = stack.submit()
        assert stack.wait_job(after["id"])["status"] == "succeeded"
        assert wait_for(lambda: stack.api.get("/health").body["components"]["workers"]["ok"], 20)
        assert api.alive() and worker.alive() and beat.alive()
        assert stack.leftovers() == []


def test_queued_jobs_survive_a_redis_restart(tmp_path: Path, redis_server: RedisServer) -> None:
    with private_stack(tmp_path / "stack", redis_server.url) as stack:
        stack.start_api()
        queued = [stack.submit() for _ in range(3)]  # no worker yet: they wait in the queue
        time.sleep(1.5)  # the append-only file is synced every second
        redis_server.kill()
        redis_server.start()
        stack.start_worker()
        finals = [stack.wait_job(job["id"], timeout=60) for job in queued]
        assert [f["status"] for f in finals] == ["succeeded"] * 3, finals
