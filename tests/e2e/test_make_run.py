"""`make run` the way a user runs it: start it, wait for a healthy API, press Ctrl-C, and check
that nothing of the stack is left running.

Ctrl-C in a terminal sends SIGINT to the foreground process group (make and the supervisor it
execs); the tests start make in a session of its own and send SIGINT to that group.
Every process of the stack inherits the environment, so the unique storage folder of each test
(``FLEXDB_STORAGE_DIR=...`` in ``/proc/<pid>/environ``) finds all of them, children and
grandchildren alike. redis-server is the exception: its process title overwrites the memory
``environ`` shows, so it is found by its title (``redis-server 127.0.0.1:<port>``) instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.processes import wait_for

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("make") is None, reason="`make` is not on PATH"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment_is_installed() -> bool:
    """`make -q` says whether the venv stamp is up to date (else `make run` would pip install)."""
    result = subprocess.run(
        ["make", "-q", ".venv/.installed"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return result.returncode == 0


def _pids_matching(env_entry: str, cmdline_parts: tuple[str, ...] = ()) -> list[int]:
    """Processes whose environment holds ``env_entry`` (``NAME=value``) or whose command line
    contains one of ``cmdline_parts``, read from /proc."""
    needle = env_entry.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone, a zombie, or not ours
            continue
        cmdline = _cmdline(int(proc.name))
        if needle in environ.split(b"\0") or any(part in cmdline for part in cmdline_parts):
            found.append(int(proc.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _get_json(url: str) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, json.loads(body) if body else None


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    marker: str
    log_file: Path
    health_url: str
    cmdline_marks: tuple[str, ...] = ()

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_healthy(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"make run exited early with {self.process.returncode}:\n{self.output()}")
            try:
                status, body = _get_json(self.health_url)
            except (OSError, ValueError) as exc:  # not listening yet
                last = exc
            else:
                last = body
                if status == 200:
                    return body
            time.sleep(0.5)
        pytest.fail(f"no healthy API within {START_TIMEOUT:g} s (last: {last!r}):\n{self.output()}")

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to make's process group; returns make's exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make run did not exit within {STOP_TIMEOUT:g} s of SIGINT:\n{self.output()}")

    def leftovers(self) -> dict[int, str]:
        return {pid: _cmdline(pid) for pid in _pids_matching(self.marker, self.cmdline_marks)}

    def wait_no_leftovers(self, timeout: float = 2.0) -> dict[int, str]:
        """Processes still alive ``timeout`` s after make exited (a zombie has no environ)."""
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_everything(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def make_run(tmp_path: Path, redis_url: str, cmdline_marks: tuple[str, ...] = ()) -> Iterator[RunningStack]:
    if not _environment_is_installed():
        pytest.skip("the environment is not installed or is out of date: run `make venv` first")
    port = _free_port()
    storage = tmp_path / "backups"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXDB_")}
    env.update(
        FLEXDB_ENV_FILE=os.devnull,  # the developer's .env must not change what is tested
        FLEXDB_API_PORT=str(port),
        FLEXDB_API_WORKERS="1",
        FLEXDB_STORAGE_DIR=str(storage),
        FLEXDB_BEAT_SCHEDULE_FILE=str(tmp_path / "beat" / "celerybeat-schedule"),
        FLEXDB_REDIS_URL=redis_url,
        FLEXDB_TARGETS="{}",
        FLEXDB_WORKER_HEARTBEAT_SECONDS="1",
        FLEXDB_LOG_FORMAT="json",
    )
    log_file = tmp_path / "make-run.log"
    with open(log_file, "wb") as out:
        process = subprocess.Popen(
            ["make", "run"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    health_url = f"http://127.0.0.1:{port}/api/v1/health"
    stack = RunningStack(process, f"FLEXDB_STORAGE_DIR={storage}", log_file, health_url, cmdline_marks)
    try:
        yield stack
    finally:
        stack.kill_everything()


def _assert_healthy(body: dict) -> None:
    components = body["components"]
    assert body["status"] == "ok", body
    for name in ("api", "redis", "workers", "storage"):
        assert components[name]["ok"] is True, body
    assert components["targets"] == {}, body
    assert f"flexdb-worker@{socket.gethostname()}" in components["workers"]["alive"], body


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_make_run_serves_and_ctrl_c_stops_everything(tmp_path: Path, own_redis_url: str) -> None:
    with make_run(tmp_path, own_redis_url) as stack:
        _assert_healthy(stack.wait_healthy())
        names = " ".join(stack.leftovers().values())
        assert "gunicorn" in names and "worker.app worker" in names and "worker.app beat" in names, names
        # The supervisor announces readiness on its own poll, which may trail the first 200.
        wait_for(lambda: '"stack.ready"' in stack.output(), 15, what="the supervisor's ready line")

        stack.interrupt()

        assert stack.wait_no_leftovers() == {}, stack.output()
        output = stack.output()
        assert '"stack.stopped"' in output, output
        assert "stack.child_killed" not in output, output


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_make_run_starts_a_private_redis_when_none_answers(tmp_path: Path) -> None:
    redis_port = _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    assert not _redis_answers(redis_url)
    redis_title = f"redis-server 127.0.0.1:{redis_port}"
    with make_run(tmp_path, redis_url, cmdline_marks=(redis_title,)) as stack:
        _assert_healthy(stack.wait_healthy())
        assert _redis_answers(redis_url)
        assert any(redis_title in cmdline for cmdline in stack.leftovers().values()), stack.leftovers()

        stack.interrupt()

        assert stack.wait_no_leftovers() == {}, stack.output()
        assert not _redis_answers(redis_url), "the private redis-server outlived make run"
        assert '"stack.redis_started"' in stack.output()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_make_run_restarts_what_dies_and_rides_out_its_redis_restarting(tmp_path: Path) -> None:
    """A worker killed and a private Redis killed: the supervisor starts each again (the
    append-only file keeps Redis's data), the stack is healthy again, and Ctrl-C still stops all."""
    redis_port = _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_title = f"redis-server 127.0.0.1:{redis_port}"
    with make_run(tmp_path, redis_url, cmdline_marks=(redis_title,)) as stack:
        _assert_healthy(stack.wait_healthy())
        redis.Redis.from_url(redis_url).set("flexdb-test:kept", "1")
        time.sleep(1.5)  # the append-only file is synced every second

        redis_pid = next(pid for pid, cmdline in stack.leftovers().items() if redis_title in cmdline)
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: stack.output().count('"stack.child_restarted"') >= 1, 20, what="Redis started again")
        assert wait_for(lambda: _redis_answers(redis_url), 10, what="Redis answering")
        assert redis.Redis.from_url(redis_url).get("flexdb-test:kept") == b"1", "the append-only file kept the data"

        worker_pid = next(pid for pid, cmdline in stack.leftovers().items() if "worker.app worker" in cmdline and "--hostname" in cmdline)
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: stack.output().count('"stack.child_restarted"') >= 2, 20, what="the worker started again")
        _assert_healthy(stack.wait_healthy())
        names = " ".join(stack.leftovers().values())
        assert "gunicorn" in names and "worker.app worker" in names and "worker.app beat" in names, names
        assert stack.process.poll() is None, "make run is still running"

        stack.interrupt()

        assert stack.wait_no_leftovers() == {}, stack.output()
        assert '"stack.stopped"' in stack.output()
