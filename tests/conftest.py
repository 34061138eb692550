"""Fixtures that start real servers: Redis and PostgreSQL are the machine's own; the suite
starts a real Celery worker and the API under gunicorn, each with its own log file."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from pymongo import MongoClient

from tests.support.mongo import MongoTestServer
from tests.support.servers import claim_redis_database, release_redis_database
from tests.support.processes import ApiClient, ManagedProcess, free_port, python_argv, stop_all, wait_for

REDIS_URL = os.environ.get("FLEXDB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_ADMIN_URI = os.environ.get("FLEXDB_TEST_PG_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
# A password that must never show up in a log line or an API response. The machine's
# PostgreSQL trusts local connections, so it is carried in the URI without being checked.
CANARY_PASSWORD = "Canary-pw-" + secrets.token_hex(6)
CALLBACK_SECRET = "callback-secret-" + secrets.token_hex(8)
# A schedule the deployment declares in FLEXDB_SCHEDULES (yearly, so it never fires in a test run).
DECLARED_SCHEDULE = {"id": "declared-yearly", "target": "pg-sched", "cron": "0 4 1 1 *", "timezone": "Europe/Berlin"}


def pg_uri(database: str, password: str = CANARY_PASSWORD, port: int = 5432) -> str:
    return f"postgresql://postgres:{password}@127.0.0.1:{port}/{database}"


def pg_admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URI, autocommit=True)


def drop_database(name: str) -> None:
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    """The running service as a user meets it: an HTTP base URL and the processes' logs."""

    api: ApiClient
    env: dict[str, str]
    storage_dir: Path
    processes: list[ManagedProcess]
    databases: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.processes)

    def spawn(self, name: str, *args: str) -> ManagedProcess:
        """Start one more process of the service (e.g. beat), stopped with the stack."""
        process = ManagedProcess(name, python_argv(*args), self.env, self.storage_dir.parent / f"{name}.log")
        self.processes.append(process)
        return process


def service_env(tmp: Path, targets: dict, redis_url: str = REDIS_URL, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXDB_")}
    env.update(
        FLEXDB_ENV_FILE=os.devnull,
        FLEXDB_REDIS_URL=redis_url,
        FLEXDB_STORAGE_DIR=str(tmp / "backups"),
        FLEXDB_BEAT_SCHEDULE_FILE=str(tmp / "beat-schedule"),
        FLEXDB_TARGETS=json.dumps(targets),
        FLEXDB_LOG_FORMAT="json",
        FLEXDB_LOG_LEVEL="INFO",
        FLEXDB_WORKER_HEARTBEAT_SECONDS="1",
        FLEXDB_PROGRESS_INTERVAL_SECONDS="0.2",
        FLEXDB_CONNECT_TIMEOUT_SECONDS="3",
        FLEXDB_API_WORKERS="1",
        FLEXDB_SCHEDULE_MIN_INTERVAL_SECONDS="1",
        FLEXDB_CALLBACK_SECRET=CALLBACK_SECRET,
        FLEXDB_BEAT_MAX_INTERVAL_SECONDS="1",
        FLEXDB_SCHEDULES=json.dumps([DECLARED_SCHEDULE]) if "pg-sched" in targets else "[]",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def own_redis_url() -> Iterator[str]:
    """A Redis database for a module's private stack (its workers must not take the shared
    stack's tasks, nor its health see theirs)."""
    url = claim_redis_database("private stack")
    if url is None:
        pytest.skip("every Redis database 1-15 is claimed by other test runs")
    yield url
    release_redis_database(url)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()  # the database was claimed and emptied for this run (tests/support/servers.py)
    yield client


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoTestServer]:
    """SecantusDB with --auth; its one user's password is the canary."""
    server = MongoTestServer(tmp_path_factory.mktemp("secantusdb"), "flexdb", CANARY_PASSWORD)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mongo(mongo_server: MongoTestServer) -> Iterator[MongoClient]:
    """A client of the test server, logged in as its one user."""
    client = mongo_server.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis, mongo_server: MongoTestServer) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    suffix = secrets.token_hex(4)
    databases = {"source": f"flexdb_it_src_{suffix}", "copy": f"flexdb_it_copy_{suffix}"}
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{databases["source"]}"')
    targets = {
        "pg": {"engine": "postgresql", "uri": pg_uri(databases["source"])},
        "pg-down": {"engine": "postgresql", "uri": pg_uri("nowhere", port=free_port())},
        # Schedules and retention get a target of their own, so retention never deletes the
        # backups other tests made.
        "pg-sched": {"engine": "postgresql", "uri": pg_uri(databases["source"])},
        "mongo": {"engine": "mongodb", "uri": mongo_server.uri(f"flexdb_it_{suffix}")},
        "mongo-all": {"engine": "mongodb", "uri": mongo_server.uri()},
        "mongo-down": {"engine": "mongodb", "uri": mongo_server.uri("nowhere", port=free_port())},
        "mongo-badauth": {"engine": "mongodb", "uri": mongo_server.uri(f"flexdb_it_{suffix}", password="Wrong-" + CANARY_PASSWORD)},
        "mongo-some": {
            "engine": "mongodb",
            "uri": mongo_server.uri(f"flexdb_it_some_{suffix}"),
            "options": {"exclude_collections": ["scratch"]},
        },
    }
    try:
        with running_stack(tmp, targets, REDIS_URL, worker_name=f"it-{suffix}") as running:
            running.databases = databases
            yield running
    finally:
        for name in databases.values():
            drop_database(name)


@contextmanager
def running_stack(tmp: Path, targets: dict, redis_url: str, worker_name: str | None = None, **settings: str) -> Iterator[Stack]:
    """A real Celery worker and the API under gunicorn, with these targets and settings, up
    (the API answers and sees the worker) until the block ends."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = service_env(tmp, targets, redis_url=redis_url, FLEXDB_API_PORT=str(port), **settings)
    worker = ManagedProcess(
        "worker",
        python_argv(
            "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
            "--hostname", f"{worker_name or 'own-' + secrets.token_hex(3)}@%h",
        ),  # fmt: skip
        env,
        tmp / "worker.log",
    )
    api = ManagedProcess(
        "api",
        python_argv("-m", "gunicorn", "-b", f"127.0.0.1:{port}", "--no-control-socket", "-w", "1", "--threads", "4", "api.wsgi:app"),
        env,
        tmp / "api.log",
    )
    processes = [worker, api]
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1")
    try:
        wait_for(lambda: client.get("/health").body["components"]["workers"]["ok"], 60, what="API and worker up")
        yield Stack(client, env, Path(env["FLEXDB_STORAGE_DIR"]), processes)
    finally:
        stop_all(processes)
