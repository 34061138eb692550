"""A stack of the test's own (workers, API, optionally beat) on a Redis database of its own and
a PostgreSQL database of its own, with a short lease, for tests that kill and restart parts
of the service for real."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis

from tests.conftest import CANARY_PASSWORD, drop_database, pg_admin, pg_uri, service_env
from tests.support.processes import ApiClient, ManagedProcess, free_port, python_argv, stop_all, wait_for

LEASE_SECONDS = 2.0


class PrivateStack:
    def __init__(self, tmp: Path, redis_url: str, extra_targets: dict[str, str] | None = None, **settings: str) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.database = f"flexdb_rel_{secrets.token_hex(4)}"
        self.port = free_port()
        # Target "pg" on the stack's own database, plus any "name": database the test brings.
        targets = {
            name: {"engine": "postgresql", "uri": pg_uri(database)}
            for name, database in {"pg": self.database, **(extra_targets or {})}.items()
        }
        self.env = service_env(
            tmp,
            targets,
            redis_url=redis_url,
            FLEXDB_API_PORT=str(self.port),
            FLEXDB_LEASE_SECONDS=str(LEASE_SECONDS),
            FLEXDB_SHUTDOWN_GRACE_SECONDS="2",
            FLEXDB_STOP_GRACE_SECONDS="10",
            FLEXDB_REDIS_RETRY_SECONDS="60",
            FLEXDB_CALLBACK_DELAY_SECONDS="0",
            **settings,
        )
        self.storage_dir = tmp / "backups"
        self.processes: list[ManagedProcess] = []
        self.api = ApiClient(f"http://127.0.0.1:{self.port}/api/v1")
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self._workers = 0

    # ------------------------------------------------------------------ processes

    def start_worker(self, concurrency: int = 2) -> ManagedProcess:
        self._workers += 1
        name = f"worker{self._workers}"
        argv = python_argv(
            "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
            "--hostname", f"{name}-{secrets.token_hex(3)}@%h", "--concurrency", str(concurrency),
        )  # fmt: skip
        process = ManagedProcess(name, argv, self.env, self.tmp / f"{name}.log")
        self.processes.append(process)
        return process

    def start_api(self) -> ManagedProcess:
        argv = python_argv(
            "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", "--no-control-socket", "-w", "1", "--threads", "4",
            "api.wsgi:app",
        )  # fmt: skip
        process = ManagedProcess("api", argv, self.env, self.tmp / "api.log")
        self.processes.append(process)
        wait_for(lambda: self.api.get("/health").status in (200, 503), 30, what="API up")
        return process

    def start_beat(self) -> ManagedProcess:
        argv = python_argv("-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO", "--schedule", str(self.tmp / "beat"))
        process = ManagedProcess("beat", argv, self.env, self.tmp / "beat.log")
        self.processes.append(process)
        return process

    def wait_workers(self, count: int) -> None:
        wait_for(lambda: len(self.redis.keys("flexdb:worker:*")) >= count, 30, what=f"{count} worker(s) up")

    def stop(self) -> None:
        stop_all(self.processes)

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.processes)

    # ------------------------------------------------------------------ jobs

    def submit(self, kind: str = "backups", **body) -> dict:
        response = self.api.post(f"/{kind}", {"target": "pg", **body})
        assert response.status == 202, response.text
        return response.body

    def job(self, job_id: str) -> dict:
        return self.api.get(f"/jobs/{job_id}").body

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        return self.api.wait_job(f"/api/v1/jobs/{job_id}", timeout)

    def wait_dumping(self, job_id: str, attempts: int = 1, timeout: float = 60) -> dict:
        try:
            return wait_for(
                lambda: (job := self.job(job_id))["progress"]["stage"] == "dumping" and job["attempts"] == attempts and job,
                timeout,
                what=f"attempt {attempts} of job {job_id} dumping",
            )
        except TimeoutError as exc:
            holder = self.redis.get("flexdb:lease:pg")
            raise TimeoutError(f"{exc}; the job: {self.job(job_id)}; the lease: {holder}; workers: {self.redis.keys('flexdb:worker:*')}") from None

    def lease_pid(self) -> int:
        """The process running the job that holds the target (from the lease's owner)."""
        owner = self.redis.get("flexdb:lease:pg")
        assert owner, "nobody holds the target"
        return int(owner.split(" ")[2])

    def leftovers(self) -> list[str]:
        """Backup folders without a manifest (an attempt's partial archive)."""
        if not self.storage_dir.is_dir():
            return []
        return sorted(p.name for p in self.storage_dir.iterdir() if not (p / "manifest.json").exists())

    # ------------------------------------------------------------------ the database

    @contextmanager
    def table_locked(self) -> Iterator[None]:
        """Hold ACCESS EXCLUSIVE on a table: pg_dump waits for it, so a job stays `running`."""
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{self.database}") as conn:
            conn.execute("LOCK TABLE lock_me IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()


@contextmanager
def private_stack(
    tmp: Path, redis_url: str, extra_targets: dict[str, str] | None = None, **settings: str
) -> Iterator[PrivateStack]:
    stack = PrivateStack(tmp, redis_url, extra_targets, **settings)
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{stack.database}"')
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.database}", autocommit=True) as conn:
        conn.execute("CREATE TABLE lock_me (id int)")
        conn.execute("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 2000) g")
    try:
        yield stack
    finally:
        stack.stop()
        drop_database(stack.database)


def kill_group(process: ManagedProcess) -> None:
    """SIGKILL a process and everything it started (its pool, pg_dump): a machine or container dying."""
    try:
        os.killpg(process.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.proc.wait(10)


__all__ = ["CANARY_PASSWORD", "LEASE_SECONDS", "PrivateStack", "kill_group", "private_stack"]
