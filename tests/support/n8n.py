"""Real n8n for the end-to-end tests.

The n8n the tests run is pinned in ``tests/e2e/n8n/package.json`` (exact version, the ``xlsx``
override, and ``allowScripts`` so that only sqlite3 runs an install script) and locked by
``tests/e2e/n8n/package-lock.json``. :func:`ensure_n8n` installs that pair with ``npm ci`` into
``$XDG_CACHE_HOME/flexdb/n8n-<version>`` (``~/.cache`` without XDG; ``FLEXDB_N8N_CACHE_DIR``
overrides the parent folder), outside the repository, and does nothing while the installed
copy matches the two files and the Node major version (sqlite3 is a native module). A changed
lock file or Node version installs again. Concurrent sessions (several engineers, CI) take a file
lock; a new install is built in a staging folder and renamed into place, so a half-finished
install is never used.

:class:`N8n` runs n8n's CLI and server for one test session: its own ``N8N_USER_FOLDER`` (own
SQLite database, encryption key, settings) in a temporary folder, telemetry, version checks,
templates, banners and license renewal off, ``$env`` readable in expressions, every port on
127.0.0.1, and a dead proxy for anything that is not loopback, so a node that tries to reach the
internet fails at once instead of leaving the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import REPO, ManagedProcess, free_port, wait_for

MANIFEST_DIR = REPO / "tests" / "e2e" / "n8n"
INSTALL_TIMEOUT = 1800.0
STAMP = ".flexdb-n8n.json"
# n8n 2.8 wants Node >= 20.19; newer 2.x releases need Node 22 or 24.
MIN_NODE = (20, 19)
# Anything n8n sends through a proxy lands on the discard port of loopback, where nothing listens.
DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK = "127.0.0.1,localhost,::1"


class N8nUnavailable(RuntimeError):
    """This machine lacks what n8n needs (Node >= 20.19, npm): the tests skip."""


class N8nInstallError(RuntimeError):
    """`npm ci` failed or did not build sqlite3: the tests fail, with the end of npm's log."""


# --------------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------------


def pinned_version() -> str:
    return json.loads((MANIFEST_DIR / "package.json").read_text())["dependencies"]["n8n"]


def cache_root() -> Path:
    if os.environ.get("FLEXDB_N8N_CACHE_DIR"):
        return Path(os.environ["FLEXDB_N8N_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flexdb"


def _node_version() -> tuple[int, ...]:
    node = shutil.which("node")
    if node is None:
        raise N8nUnavailable("`node` is not on PATH (n8n needs Node.js >= 20.19)")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return tuple(int(part) for part in out.lstrip("v").split("."))


def _system_sqlite() -> str | None:
    """The prefix of the machine's SQLite (headers and library), if it has one.

    sqlite3 links against it in seconds instead of compiling its bundled SQLite amalgamation
    (about a minute on two cores). Debian/Ubuntu: ``apt-get install libsqlite3-dev``."""
    if os.environ.get("FLEXDB_N8N_BUNDLED_SQLITE"):
        return None
    for prefix in ("/usr", "/usr/local"):
        libs = [*Path(prefix, "lib").glob("libsqlite3.so"), *Path(prefix, "lib").glob("*-linux-gnu*/libsqlite3.so")]
        if Path(prefix, "include", "sqlite3.h").is_file() and libs:
            return prefix
    return None


def _fingerprint(node_version: tuple[int, ...], sqlite: str | None) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update(name.encode() + b"\0" + (MANIFEST_DIR / name).read_bytes() + b"\0")
    digest.update(f"node{node_version[0]} sqlite={sqlite or 'bundled'}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class N8nInstall:
    root: Path
    version: str
    install_seconds: float | None  # how long this process spent installing; None when cached

    @property
    def bin(self) -> Path:
        return self.root / "node_modules" / "n8n" / "bin" / "n8n"


def _installed(root: Path, fingerprint: str) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("fingerprint") == fingerprint and (root / "node_modules" / "n8n" / "bin" / "n8n").is_file()


def _npm_env(sqlite: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if sqlite:
        env["npm_config_sqlite"] = sqlite
    env.update(
        # sqlite3 compiles against the machine's Node headers, without downloading them or a
        # prebuilt binary (GitHub is out of reach here; a prebuilt download would only time out).
        npm_config_nodedir=os.environ.get("npm_config_nodedir", "/usr"),
        npm_config_build_from_source="true",
        npm_config_update_notifier="false",
        npm_config_fund="false",
        npm_config_audit="false",
        # node-gyp: use every core for the sqlite3 build.
        JOBS="max",
    )
    return env


def run_npm(argv: list[str], cwd: Path, log_path: Path, env: dict[str, str], timeout: float) -> None:
    """Run an npm command with its output appended to ``log_path``; N8nInstallError with the
    log's tail when it fails, or when it outlasts ``timeout``."""
    command = " ".join(argv[1:])
    with log_path.open("ab") as out:
        out.write(f"$ npm {command}\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                argv, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise N8nInstallError(f"`npm {command}` took over {timeout:.0f} s; see {log_path}") from None
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise N8nInstallError(f"`npm {command}` failed (exit {result.returncode}); {log_path}:\n{tail}")


def ensure_n8n(log: Any = None) -> N8nInstall:
    """The pinned n8n, installed into the cache if it is not there yet (minutes the first time)."""
    node = _node_version()
    if node[:2] < MIN_NODE:
        raise N8nUnavailable(f"Node {'.'.join(map(str, node))} is too old for n8n (needs >= 20.19)")
    npm = shutil.which("npm")
    if npm is None:
        raise N8nUnavailable("`npm` is not on PATH")
    version = pinned_version()
    sqlite = _system_sqlite()
    fingerprint = _fingerprint(node, sqlite)
    parent = cache_root()
    root = parent / f"n8n-{version}"
    if _installed(root, fingerprint):
        return N8nInstall(root, version, None)
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f"n8n-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing the same version
        if _installed(root, fingerprint):
            return N8nInstall(root, version, None)
        for stale in parent.glob(f".n8n-{version}.*"):  # left by an interrupted install
            shutil.rmtree(stale, ignore_errors=True)
        staging = parent / f".n8n-{version}.{os.getpid()}.staging"
        staging.mkdir()
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(MANIFEST_DIR / name, staging / name)
        if log:
            log(f"installing n8n {version} into {root} (npm ci; a few minutes the first time)")
        started = time.monotonic()
        npm_log = staging / "npm-ci.log"
        argv = [
            npm,
            "ci",
            "--omit=dev",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--no-progress",
            "--loglevel=warn",
        ]
        run_npm(argv, staging, npm_log, _npm_env(sqlite), INSTALL_TIMEOUT)
        seconds = round(time.monotonic() - started, 1)
        built = staging / "node_modules" / "sqlite3" / "build" / "Release" / "node_sqlite3.node"
        if not built.is_file():
            raise N8nInstallError(f"sqlite3 was not built ({built} is missing); see {npm_log}")
        stamp = {
            "fingerprint": fingerprint,
            "version": version,
            "node": ".".join(map(str, node)),
            "sqlite": sqlite or "bundled",
            "install_seconds": seconds,
        }
        (staging / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if root.exists():
            retired = parent / f".n8n-{version}.{os.getpid()}.retired"
            root.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(root)
        if log:
            log(f"installed n8n {version} in {seconds} s")
        return N8nInstall(root, version, seconds)


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode}, {self.seconds:.1f} s)\n{self.stdout}\n{self.stderr}"


@dataclass
class Execution:
    """One workflow run as n8n reports it (the CLI's JSON, or the record in n8n's database)."""

    status: str  # success, error, waiting, running, canceled, crashed, new
    finished: bool
    data: dict
    id: str | None = None
    cli: CliResult | None = field(default=None, repr=False)

    @property
    def last_node(self) -> str | None:
        return self.data.get("resultData", {}).get("lastNodeExecuted")

    @property
    def run_data(self) -> dict[str, list[dict]]:
        return self.data.get("resultData", {}).get("runData", {})

    @property
    def error(self) -> dict | None:
        return self.data.get("resultData", {}).get("error")

    def nodes_run(self) -> list[str]:
        return list(self.run_data)

    def output(self, node: str, run: int = -1) -> list[dict]:
        """The JSON items node ``node`` put out on its first output, in run ``run`` (last by default)."""
        runs = self.run_data.get(node)
        if not runs:
            raise KeyError(f"node {node!r} did not run; nodes that ran: {self.nodes_run()}")
        main = (runs[run].get("data") or {}).get("main") or [[]]
        return [item["json"] for item in (main[0] or [])]

    def runs(self, node: str) -> int:
        return len(self.run_data.get(node, []))

    def summary(self) -> str:
        text = f"execution {self.id or '?'}: status={self.status} last node={self.last_node!r} nodes={self.nodes_run()}"
        if self.error:
            text += f"\nerror: {self.error.get('message')} {self.error.get('description') or ''}"
        if self.cli is not None:
            text += "\n" + self.cli.describe()[-4000:]
        return text


def parse_cli_execution(result: CliResult) -> Execution:
    """``n8n execute`` prints a task-broker line and a Python-runner warning, then the run as
    pretty-printed JSON (after "Execution was NOT successful" lines when it failed)."""
    text = result.stdout
    if text.startswith("{\n"):
        start = 0
    elif "\n{\n" in text:
        start = text.index("\n{\n") + 1
    else:
        raise AssertionError(f"no execution JSON in the output of n8n execute:\n{result.describe()}")
    run, _ = json.JSONDecoder().raw_decode(text[start:])
    return Execution(run.get("status", "unknown"), bool(run.get("finished")), run.get("data", {}), cli=result)


def unflatten(text: str) -> Any:
    """Decode the ``flatted`` format n8n stores execution data in: a JSON array whose first
    element is the root; inside objects and arrays every string is the index of the element
    that holds the value (so shared and circular references survive)."""
    table = json.loads(text)
    done: dict[int, Any] = {}

    def value(index: int) -> Any:
        if index in done:
            return done[index]
        raw = table[index]
        if isinstance(raw, list):
            out: Any = []
            done[index] = out
            out.extend(value(int(v)) if isinstance(v, str) else v for v in raw)
        elif isinstance(raw, dict):
            out = {}
            done[index] = out
            for key, v in raw.items():
                out[key] = value(int(v)) if isinstance(v, str) else v
        else:
            out = raw
            done[index] = out
        return out

    return value(0)


class N8nServer:
    """``n8n start`` on a loopback port: resumes executions that wait on a webhook."""

    def __init__(self, n8n: N8n, log_path: Path) -> None:
        self.n8n = n8n
        self.url = n8n.webhook_url
        self.process = ManagedProcess(
            "n8n", ["node", str(n8n.install.bin), "start"], n8n.env(N8N_PORT=str(n8n.port)), log_path
        )

    def ready(self) -> bool:
        # /healthz answers before the webhook routes exist; a waiting-webhook route that knows
        # no such execution answers 404 in JSON once they do (Express says "Cannot POST" in HTML before).
        if not self.process.alive():
            raise AssertionError(f"n8n start exited:\n{self.process.output()[-4000:]}")
        request = urllib.request.Request(self.url + "webhook-waiting/0", data=b"{}", method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return "json" in (exc.headers.get("Content-Type") or "")

    def stop(self) -> None:
        self.process.stop(grace=15)

    def output(self) -> str:
        return self.process.output()


class N8n:
    """n8n CLI and server for one test session, sharing one private user folder."""

    def __init__(self, install: N8nInstall, home: Path) -> None:
        self.install = install
        self.home = home
        self.user_folder = home / "user"
        self.user_folder.mkdir(parents=True, exist_ok=True)
        # Chosen now because `$execution.resumeUrl` is computed by whichever process runs the
        # Wait node (the CLI) and must point at the server that will receive the call.
        self.port = free_port()
        self.webhook_url = f"http://127.0.0.1:{self.port}/"
        self.extra_env: dict[str, str] = {}

    @property
    def database(self) -> Path:
        return self.user_folder / ".n8n" / "database.sqlite"

    def env(self, **extra: str) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            HOME=str(self.home),
            N8N_USER_FOLDER=str(self.user_folder),
            DB_TYPE="sqlite",
            GENERIC_TIMEZONE="UTC",
            N8N_BLOCK_ENV_ACCESS_IN_NODE="false",
            N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS="true",
            # Nothing leaves the machine: no telemetry, update checks, templates, banners, license calls.
            N8N_DIAGNOSTICS_ENABLED="false",
            N8N_VERSION_NOTIFICATIONS_ENABLED="false",
            N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED="false",
            N8N_TEMPLATES_ENABLED="false",
            N8N_PERSONALIZATION_ENABLED="false",
            N8N_HIRING_BANNER_ENABLED="false",
            N8N_DYNAMIC_BANNERS_ENABLED="false",
            N8N_LICENSE_AUTO_RENEW_ENABLED="false",
            N8N_AI_ENABLED="false",
            N8N_COMMUNITY_PACKAGES_ENABLED="false",
            EXTERNAL_FRONTEND_HOOKS_URLS="",
            N8N_PUBLIC_API_SWAGGERUI_DISABLED="true",
            HTTP_PROXY=DEAD_PROXY,
            HTTPS_PROXY=DEAD_PROXY,
            ALL_PROXY=DEAD_PROXY,
            http_proxy=DEAD_PROXY,
            https_proxy=DEAD_PROXY,
            all_proxy=DEAD_PROXY,
            NO_PROXY=LOOPBACK,
            no_proxy=LOOPBACK,
            # Every listening socket on loopback, on ports of this session.
            N8N_LISTEN_ADDRESS="127.0.0.1",
            N8N_HOST="127.0.0.1",
            N8N_PROTOCOL="http",
            N8N_SECURE_COOKIE="false",
            WEBHOOK_URL=self.webhook_url,
            N8N_RUNNERS_BROKER_LISTEN_ADDRESS="127.0.0.1",
            N8N_RUNNERS_BROKER_PORT=str(free_port()),
            N8N_GRACEFUL_SHUTDOWN_TIMEOUT="5",
            N8N_LOG_LEVEL="info",
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> CliResult:
        argv = ["node", str(self.install.bin), *args]
        started = time.monotonic()
        proc = subprocess.run(
            argv, check=False, cwd=self.home, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        result = CliResult(["n8n", *args], proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        if check and proc.returncode != 0:
            raise AssertionError(f"n8n CLI failed:\n{result.describe()}")
        return result

    def import_workflows(self, path: Path) -> CliResult:
        """``n8n import:workflow --input=<file>``: one workflow or a JSON array of them."""
        result = self.run("import:workflow", f"--input={path}")
        if "Successfully imported" not in result.stdout:
            raise AssertionError(f"n8n did not report an import:\n{result.describe()}")
        return result

    def import_workflows_from_dir(self, folder: Path) -> CliResult:
        """``n8n import:workflow --separate --input=<folder>``: every ``*.json`` in it, each a
        workflow (ids generated when the files have none). n8n only warns about a file it cannot
        read, so the count it reports is checked."""
        expected = len(list(folder.glob("*.json")))
        result = self.run("import:workflow", "--separate", f"--input={folder}")
        if f"Successfully imported {expected} workflow" not in result.stdout:
            raise AssertionError(f"n8n did not import all {expected} files of {folder}:\n{result.describe()}")
        return result

    def workflows(self) -> dict[str, str]:
        """``n8n list:workflow``: id → name."""
        lines = self.run("list:workflow").stdout.splitlines()
        return dict(line.split("|", 1) for line in lines if "|" in line)

    def execute(self, workflow_id: str, timeout: float = 120) -> Execution:
        """``n8n execute --id=<id> --rawOutput``: runs from the Manual Trigger and returns when the
        run ends, or when it is handed to the database to wait (a Wait on a webhook, or >= 65 s)."""
        result = self.run("execute", f"--id={workflow_id}", "--rawOutput", timeout=timeout, check=False)
        execution = parse_cli_execution(result)
        ids = self.execution_ids(workflow_id)
        execution.id = ids[-1] if ids else None
        return execution

    @contextlib.contextmanager
    def server(self, timeout: float = 60) -> Iterator[N8nServer]:
        server = N8nServer(self, self.home / "n8n-server.log")
        try:
            wait_for(server.ready, timeout, interval=0.25, what="n8n server up")
            yield server
        finally:
            server.stop()

    # The execution records, read straight from the session's SQLite database (read-only).

    def _db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def execution_ids(self, workflow_id: str) -> list[str]:
        with contextlib.closing(self._db()) as conn:
            rows = conn.execute("SELECT id FROM execution_entity WHERE workflowId = ? ORDER BY id", (workflow_id,))
            return [str(row["id"]) for row in rows]

    def execution(self, execution_id: str) -> Execution:
        with contextlib.closing(self._db()) as conn:
            row = conn.execute(
                "SELECT e.status, e.finished, d.data FROM execution_entity e "
                "JOIN execution_data d ON d.executionId = e.id WHERE e.id = ?",
                (int(execution_id),),
            ).fetchone()
        if row is None:
            raise KeyError(f"n8n has no execution {execution_id}")
        return Execution(row["status"], bool(row["finished"]), unflatten(row["data"]), id=str(execution_id))

    def wait_execution(
        self,
        execution_id: str,
        timeout: float = 60,
        until: tuple[str, ...] = ("success", "error", "crashed", "canceled"),
    ) -> Execution:
        """Poll the database until the execution reaches one of ``until``."""

        def reached() -> Execution | None:
            execution = self.execution(execution_id)
            return execution if execution.status in until else None

        return wait_for(reached, timeout, interval=0.25, what=f"n8n execution {execution_id} finished")
