"""Helpers the suite uses to start real processes and talk to them over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# How long one long-poll of wait_job may be held (a wait may end up to this much past its timeout).
JOB_WAIT_SECONDS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing is not up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s (last error: {last_error!r})")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any
    text: str


class ApiClient:
    """A plain HTTP client, as curl would use the API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urllib.parse.urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"

    def url(self, path: str) -> str:
        """Absolute URLs as given, server paths (``Location``) on the origin, the rest under the base."""
        if path.startswith("http"):
            return path
        if path.startswith("/api/"):
            return self.origin + path
        return self.base_url + path

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict | None = None) -> Response:
        url = self.url(path)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, resp_headers, payload = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, resp_headers, payload = err.code, dict(err.headers), err.read()
        text = payload.decode()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Response(status, resp_headers, parsed, text)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def wait_job(self, location: str, timeout: float = 60) -> dict:
        # On the API's long-poll, as a client would: the answer comes at the job's next change,
        # not at the next tick of a polling loop.
        held = f"{location}{'&' if '?' in location else '?'}wait={JOB_WAIT_SECONDS}"

        def finished():
            job = self.get(held).body
            return job if job and job.get("done") else None

        return wait_for(finished, timeout, what=f"job {location} finished")


class ManagedProcess:
    """A child process in its own group, its output in a log file, stopped for sure."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._terminated_at: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM, once) without waiting; :meth:`stop` waits."""
        if self._terminated_at is None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._terminated_at = time.monotonic()

    def stop(self, grace: float = 10) -> None:
        self.terminate()
        if self._terminated_at is not None:
            try:
                self.proc.wait(max(0.0, self._terminated_at + grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        try:
            # Also whatever the process left behind in its group (a worker's pool processes
            # outlive a main process that was killed): nothing of it may touch the next test.
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_all(processes: list[ManagedProcess], grace: float = 10) -> None:
    """Stop several processes together: all get SIGTERM first, so their shutdowns (seconds for a
    Celery worker) overlap instead of adding up."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop(grace)


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]
