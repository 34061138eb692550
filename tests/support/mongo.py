"""A real MongoDB wire-protocol server for the tests: SecantusDB in its own process.

It is only ever started as a separate process (``secantusd-py``); nothing in the service imports
it. With ``auth=True`` the server is first started open to create one root user, then restarted
with ``--auth`` so wrong credentials are refused for real.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

from pymongo import MongoClient

from tests.support.processes import ManagedProcess, free_port, wait_for

# SecantusDB flushes WiredTiger on SIGTERM; its data folder is removed only after that.
STOP_GRACE_SECONDS = 4.0
START_TIMEOUT_SECONDS = 30.0


def secantus_binary() -> str:
    beside = Path(sys.executable).with_name("secantusd-py")
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if not found:
        raise RuntimeError("secantusd-py is not installed; pip install -r requirements/dev.txt (SecantusDB)")
    return found


class MongoTestServer:
    """One SecantusDB server on a free port, with its data and log under ``workdir``."""

    def __init__(self, workdir: Path, user: str, password: str, auth: bool = True) -> None:
        self.workdir = workdir
        self.user = user
        self.password = password
        self.auth = auth
        self.host = "127.0.0.1"
        self.port = free_port()
        self.data_dir = workdir / "data"
        self._process: ManagedProcess | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MongoTestServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.auth:
            self._launch(auth=False)
            with self._connect(None) as client:
                roles = [{"role": "root", "db": "admin"}]
                client.admin.command("createUser", self.user, pwd=self.password, roles=roles)
            self._stop_process()
        self._launch(auth=self.auth)
        return self

    def stop(self) -> None:
        self._stop_process()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _launch(self, auth: bool) -> None:
        argv = [
            secantus_binary(),
            "--standalone",
            "--host", self.host,
            "--port", str(self.port),
            "--storage-path", str(self.data_dir),
            "--log-level", "WARNING",
        ]
        if auth:
            argv.append("--auth")
        env = {key: value for key, value in os.environ.items() if not key.startswith("FLEXDB_")}
        self._process = ManagedProcess("secantusdb", argv, env, self.workdir / "secantusdb.log")
        wait_for(self._answers, START_TIMEOUT_SECONDS, what=f"SecantusDB on port {self.port}")

    def _answers(self) -> bool:
        if self._process is not None and not self._process.alive():
            raise RuntimeError(f"SecantusDB exited; see {self._process.log_path}")
        with MongoClient(self.host, self.port, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
            client.admin.command("ping")
        return True

    def _stop_process(self) -> None:
        if self._process is not None:
            self._process.stop(grace=STOP_GRACE_SECONDS)
            self._process = None

    # ------------------------------------------------------------------ clients and URIs

    def uri(self, database: str = "", password: str | None = None, port: int | None = None) -> str:
        """A target URI; the user is authenticated against ``admin`` whatever the database."""
        secret = quote(self.password if password is None else password, safe="")
        credentials = f"{quote(self.user, safe='')}:{secret}@" if self.auth else ""
        query = "?authSource=admin" if self.auth else ""
        return f"mongodb://{credentials}{self.host}:{port or self.port}/{database}{query}"

    def _connect(self, user: str | None) -> MongoClient:
        if user is None:
            return MongoClient(self.host, self.port, serverSelectionTimeoutMS=5000)
        return MongoClient(self.uri(), serverSelectionTimeoutMS=5000)

    def client(self) -> MongoClient:
        """An administrator's client, as a test inspects the data with."""
        return self._connect(self.user if self.auth else None)
