"""A pytest plugin (loaded from pyproject's addopts) that makes sure the servers the suite
talks to are up: Redis and PostgreSQL. On CI and developer machines they usually already
run; when they do not, start them if the machine has them, or stop with one clear line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.processes import ManagedProcess, wait_for

_started: list[ManagedProcess] = []


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _redis_address() -> tuple[str, int]:
    url = urlsplit(os.environ.get("FLEXDB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    return url.hostname or "127.0.0.1", url.port or 6379


def _ensure_redis() -> None:
    host, port = _redis_address()
    if _answers(host, port):
        return
    if not shutil.which("redis-server"):
        pytest.exit(f"No Redis answers at {host}:{port}; install redis-server (apt-get install redis-server).", 2)
    workdir = Path(tempfile.mkdtemp(prefix="flexdb-test-redis-"))
    argv = ["redis-server", "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    _started.append(ManagedProcess("redis", argv, dict(os.environ), workdir / "redis.log"))
    wait_for(lambda: _answers(host, port), 15, what="private redis-server up")


def _ensure_postgresql() -> None:
    uri = urlsplit(os.environ.get("FLEXDB_TEST_PG_URI", "postgresql://postgres@127.0.0.1:5432/postgres"))
    host, port = uri.hostname or "127.0.0.1", uri.port or 5432
    if _answers(host, port):
        return
    # Debian's cluster wrapper starts the machine's own PostgreSQL when it is installed but stopped.
    if shutil.which("pg_ctlcluster") and Path("/etc/postgresql").is_dir():
        for version in sorted(os.listdir("/etc/postgresql")):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
        try:
            wait_for(lambda: _answers(host, port), 30, what="PostgreSQL up")
            return
        except TimeoutError:
            pass
    pytest.exit(
        f"No PostgreSQL answers at {host}:{port}; install postgresql (apt-get install postgresql) or set "
        "FLEXDB_TEST_PG_URI to a server where user postgres may create databases.",
        2,
    )


_CLAIM_KEY = "flexdb-test:claimed-by"
_claimed: list[str] = []


def claim_redis_database(owner: str) -> str | None:
    """A Redis database of its own (emptied) for a test run or a test's private stack, so two
    runs on one machine (a developer's and CI's, say) and two stacks in one run never flush or
    read each other's keys. Database 0 is left to ``make run``. None when all are taken."""
    import redis

    host, port = _redis_address()
    for db in range(15, 0, -1):
        url = f"redis://{host}:{port}/{db}"
        client = redis.Redis.from_url(url)
        if client.set(_CLAIM_KEY, f"{owner} {os.getpid()}", nx=True, ex=6 * 3600):
            client.flushdb()
            client.set(_CLAIM_KEY, f"{owner} {os.getpid()}", ex=6 * 3600)
            _claimed.append(url)
            return url
    return None


def release_redis_database(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url).flushdb()  # the claim key goes with it
    except redis.RedisError:
        pass
    if url in _claimed:
        _claimed.remove(url)


def pytest_load_initial_conftests(early_config, parser, args) -> None:
    # Runs before tests/conftest.py is imported, which reads FLEXDB_TEST_REDIS_URL.
    _ensure_redis()
    if not os.environ.get("FLEXDB_TEST_REDIS_URL"):
        url = claim_redis_database("test session")
        if url is None:
            pytest.exit("Every Redis database 1-15 is claimed by another test run; wait for it or flush them.", 2)
        os.environ["FLEXDB_TEST_REDIS_URL"] = url


def pytest_sessionstart(session: pytest.Session) -> None:
    _ensure_postgresql()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for url in list(_claimed):
        release_redis_database(url)
    for process in _started:
        process.stop()
