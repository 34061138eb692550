"""Run the whole service locally: ``python -m scripts.run_stack`` (what ``make run`` execs).

A small supervisor. It checks that Redis answers (and starts a private ``redis-server`` for
the run when the URL points at this machine and none answers, with an append-only file so
queued jobs survive its restart), then starts the API, the Celery worker and Celery beat with
the same commands as the Docker images (:data:`COMMANDS`), each in its own process group.
A child that exits is started again after a backoff (1 s, doubling up to
``FLEXDB_RESTART_BACKOFF_MAX_SECONDS``; back to 1 s once it has run for a minute): a Redis blip
that stops beat, or a crashed worker, is not an outage. Only SIGINT, SIGTERM or SIGHUP stops
the stack: every child gets SIGTERM (their graceful stop; the worker hands running jobs back
to the queue). After a stop no process of the stack is left: whatever outlives the grace
period is killed with its whole process group.

Options: ``--no-beat`` (API and worker only), ``--flower`` (also Flower, if installed).

Everything else comes from the settings (``FLEXDB_STOP_GRACE_SECONDS``, ``FLEXDB_FLOWER_HOST``,
``FLEXDB_FLOWER_PORT``, ...).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis

from shared.core.errors import ConfigurationError
from shared.core.logs import configure_logging, get_logger
from shared.core.redaction import mask_uri
from shared.core.settings import ENV_PREFIX, Settings, get_settings

# The processes of the stack, as ``python <arguments>``. The Docker images run the very same
# arguments; ``{placeholders}`` are filled from settings (see ``Supervisor._command``).
# fmt: off
COMMANDS: dict[str, tuple[str, ...]] = {
    "api": ("-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"),
    "worker": (
        "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "{log_level}", "--hostname", "flexdb-worker@%h"
    ),
    "beat": ("-m", "celery", "-A", "worker.app", "beat", "--loglevel", "{log_level}", "--schedule", "{beat_schedule}"),
    "flower": ("-m", "celery", "-A", "worker.app", "flower", "--address={flower_host}", "--port={flower_port}"),
}
# fmt: on

# Redis URL host -> the address a private redis-server binds.
LOCAL_HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}
WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}
REDIS_DIR = Path("var") / "redis"
POLL_SECONDS = 0.2
# A restarted child waits this long first, doubling per quick exit; a child that ran this long
# was healthy, so its next exit starts the backoff afresh.
FIRST_RESTART_DELAY_SECONDS = 1.0
HEALTHY_RUN_SECONDS = 60.0
REDIS_START_SECONDS = 10.0

log = get_logger("stack")


class StartupError(Exception):
    """The stack cannot start; the message is the one line the user needs."""


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class StackOptions:
    beat: bool = True
    flower: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StackOptions:
        return cls(beat=not args.no_beat, flower=args.flower)


# ----------------------------------------------------------------------------------- children


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM if the supervisor itself is killed (Linux)."""

    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


class Child:
    """One supervised process, leader of its own process group (and session)."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None  # when an exited child is due to start again
        self.quick_exits = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, env: Mapping[str, str], stdin: bytes | None = None, output: Path | None = None) -> None:
        self.started_at = time.monotonic()
        self.restart_at = None
        out = open(output, "ab") if output else None  # noqa: SIM115 - handed to the child
        try:
            self._process = subprocess.Popen(
                self.argv,
                env=dict(env),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        finally:
            if out:
                out.close()
        if stdin is not None and self._process.stdin:
            try:
                self._process.stdin.write(stdin)
                self._process.stdin.close()
            except BrokenPipeError:  # it died at once; the caller sees that in poll()
                pass

    def poll(self) -> int | None:
        return self._process.poll() if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def send(self, sig: int) -> None:
        """Ask the child (the group leader only) to stop; it stops its own workers."""
        if self.running:
            try:
                os.kill(self._process.pid, sig)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL the whole process group: the child and anything it left behind."""
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._process.wait()


# -------------------------------------------------------------------------------------- redis


class RedisGuard:
    """Makes sure Redis answers at the configured URL, starting a private one if it may."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.masked = mask_uri(url)
        self.parts = urlsplit(url)

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
        except redis.AuthenticationError as exc:  # a subclass of ConnectionError: test it first
            raise StartupError(
                f"Redis at {self.masked} refused the credentials ({type(exc).__name__}): "
                f"check the user and password in {ENV_PREFIX}REDIS_URL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        except redis.RedisError as exc:
            raise StartupError(
                f"Something answers at {self.masked} but not as a usable Redis ({type(exc).__name__}): "
                f"check {ENV_PREFIX}REDIS_URL"
            ) from None
        finally:
            client.close()
        return True

    def private_server(self) -> Child:
        """The ``redis-server`` child to start, or a StartupError saying how to get Redis."""
        host = self.parts.hostname or ""
        executable = shutil.which("redis-server")
        if self.parts.scheme != "redis" or host not in LOCAL_HOSTS:
            raise StartupError(
                f"No Redis answers at {self.masked}: start it, or set {ENV_PREFIX}REDIS_URL to one that does"
            )
        if executable is None:
            raise StartupError(
                f"No Redis answers at {self.masked}: install redis-server (apt-get install redis-server) "
                f"or set {ENV_PREFIX}REDIS_URL"
            )
        argv = [
            executable,
            "-",  # read the password (if any) from stdin, so it never shows in `ps`
            "--port", str(self.parts.port or 6379),
            "--bind", LOCAL_HOSTS[host],
            "--save", "",
            # Queued jobs and job records survive a restart of this Redis (at most 1 s lost).
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(self.data_dir.resolve()),
        ]  # fmt: skip
        return Child("redis", argv)

    def config_text(self) -> bytes:
        """Redis config lines for the credentials in the URL (empty when it has none)."""
        password = unquote(self.parts.password) if self.parts.password else ""
        user = unquote(self.parts.username) if self.parts.username else ""
        if not password:
            return b""
        lines = [f"requirepass {_redis_quote(password)}"]
        if user and user != "default":
            lines.append(f"user {_redis_quote(user)} on {_redis_quote('>' + password)} ~* &* +@all")
        return ("\n".join(lines) + "\n").encode()

    @property
    def data_dir(self) -> Path:
        """One folder per port: two private servers must never share an append-only file."""
        return REDIS_DIR / str(self.parts.port or 6379)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------- supervisor


class Supervisor:
    """Starts the stack, watches it, and stops all of it when asked or when one part dies."""

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, settings: Settings, options: StackOptions) -> None:
        self.settings = settings
        self.options = options
        self.redis = RedisGuard(settings.redis_url)
        self.children: list[Child] = []  # API, worker, beat, flower
        self.private_redis: Child | None = None
        self.stop_signal: int | None = None
        self.force = False
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # ---------------------------------------------------------------- public

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self._check_flower()
            self._prepare_folders()
            log.info(
                "stack.starting",
                redis=self.redis.masked,
                processes=self._process_names(),
                stop_grace_seconds=self.settings.stop_grace_seconds,
            )
            self._ensure_redis()
            self._start_children()
            status = self._watch()
        finally:
            status_after_stop = self._stop_everything()
        status = status if status else status_after_stop
        log.info("stack.stopped", exit_code=status)
        return status

    # ---------------------------------------------------------------- start

    def _process_names(self) -> list[str]:
        names = ["api", "worker"]
        if self.options.beat:
            names.append("beat")
        if self.options.flower:
            names.append("flower")
        return names

    def _command(self, name: str) -> list[str]:
        values = {
            "log_level": self.settings.log_level,
            "beat_schedule": str(self.settings.beat_schedule_file),
            "flower_host": self.settings.flower_host,
            "flower_port": str(self.settings.flower_port),
        }
        return [sys.executable, *(part.format(**values) for part in COMMANDS[name])]

    def _check_flower(self) -> None:
        if self.options.flower and importlib.util.find_spec("flower") is None:
            raise StartupError("--flower needs Flower: .venv/bin/pip install flower (or run without --flower)")

    def _prepare_folders(self) -> None:
        for folder in (self.settings.storage_dir, self.settings.beat_schedule_file.parent):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"Cannot create {folder}: {exc.strerror}") from None

    def _ensure_redis(self) -> None:
        if self.redis.answers():
            log.info("stack.redis_ok", redis=self.redis.masked)
            return
        child = self.redis.private_server()
        self.redis.data_dir.mkdir(parents=True, exist_ok=True)
        child.start(self.env, stdin=self.redis.config_text(), output=self.redis.log_file)
        self.private_redis = child
        log.info("stack.redis_starting", redis=self.redis.masked, pid=child.pid, log_file=str(self.redis.log_file))
        deadline = time.monotonic() + REDIS_START_SECONDS
        while time.monotonic() < deadline and self.stop_signal is None:
            if not child.running:
                reason = _last_line(self.redis.log_file) or f"exit status {child.poll()}"
                raise StartupError(f"redis-server did not start for {self.redis.masked}: {reason}")
            if self.redis.answers():
                log.info("stack.redis_started", redis=self.redis.masked, pid=child.pid)
                return
            time.sleep(POLL_SECONDS)
        if self.stop_signal is None:
            raise StartupError(f"redis-server did not answer at {self.redis.masked} within {REDIS_START_SECONDS:g} s")

    def _start_children(self) -> None:
        for name in self._process_names():
            if self.stop_signal is not None:
                return
            child = Child(name, self._command(name))
            child.start(self.env)
            self.children.append(child)
            log.info("stack.child_started", child=name, pid=child.pid, command=" ".join(child.argv))

    # ---------------------------------------------------------------- watch

    def _watch(self) -> int:
        """Until a stop signal (then returns 0): start again every child that exits."""
        announced = False
        while self.stop_signal is None:
            for child in self._all_children():
                self._look_after(child)
            if not announced and self._api_listening():
                log.info("stack.ready", url=self._health_url())
                announced = True
            time.sleep(POLL_SECONDS)
        log.info("stack.stopping", signal=signal.Signals(self.stop_signal).name)
        return 0

    def _look_after(self, child: Child) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                stdin = self.redis.config_text() if child is self.private_redis else None
                output = self.redis.log_file if child is self.private_redis else None
                child.start(self.env, stdin=stdin, output=output)
                log.info("stack.child_restarted", child=child.name, pid=child.pid)
            return
        code = child.poll()
        if code is None:
            return
        if now - child.started_at >= HEALTHY_RUN_SECONDS:
            child.quick_exits = 0
        delay = min(FIRST_RESTART_DELAY_SECONDS * 2**child.quick_exits, self.settings.restart_backoff_max_seconds)
        child.quick_exits += 1
        child.restart_at = now + delay
        log.error("stack.child_exited", child=child.name, pid=child.pid, exit_code=code, restart_in_s=delay)

    def _api_address(self) -> tuple[str, int]:
        """Where to reach the API from this machine (a wildcard bind answers on loopback)."""
        host = self.settings.api_host
        return WILDCARD_TO_LOOPBACK.get(host, host), self.settings.api_port

    def _health_url(self) -> str:
        host, port = self._api_address()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/api/v1/health"

    def _api_listening(self) -> bool:
        try:
            with socket.create_connection(self._api_address(), timeout=POLL_SECONDS):
                return True
        except OSError:
            return False

    # ---------------------------------------------------------------- stop

    def _install_signal_handlers(self) -> None:
        for sig in self.STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        else:  # asked twice: do not wait any longer
            self.force = True

    def _all_children(self) -> list[Child]:
        return [*self.children, *([self.private_redis] if self.private_redis else [])]

    def _stop_everything(self) -> int:
        """Stop the app processes, then the private Redis (the worker still needs it to say
        goodbye). Returns 1 if something had to be killed or failed to stop cleanly, else 0."""
        # Whatever we got (SIGINT, SIGTERM, SIGHUP), the children get SIGTERM: their graceful
        # stop (gunicorn finishes requests, celery's warm shutdown exits 0; SIGINT would make
        # it exit 1, and SIGHUP means "reload" to both).
        clean = self._stop(self.children, signal.SIGTERM)
        if self.private_redis is not None:
            clean = self._stop([self.private_redis], signal.SIGTERM) and clean
            if clean and self.private_redis.poll() == 0:  # keep the log of a Redis that failed
                self.redis.log_file.unlink(missing_ok=True)
        return 0 if clean else 1

    def _stop(self, children: Iterable[Child], sig: int) -> bool:
        children = list(children)
        running = [child for child in children if child.running]  # a dead one was reported already
        for child in running:
            child.send(sig)
        grace = self.settings.stop_grace_seconds
        deadline = time.monotonic() + grace
        while any(c.running for c in running) and time.monotonic() < deadline and not self.force:
            time.sleep(0.05)
        clean = True
        for child in running:
            if child.running:
                reason = "stop asked twice" if self.force else f"still running after {grace:g} s"
                log.warning("stack.child_killed", child=child.name, pid=child.pid, reason=reason)
                clean = False
            elif child.poll() not in (0, -sig):
                log.warning("stack.child_stop_status", child=child.name, pid=child.pid, exit_code=child.poll())
        for child in children:
            # Also sweeps what a child left behind, e.g. the pool of a worker that was killed.
            child.kill_group()
        return clean


# ---------------------------------------------------------------------------------------- cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.run_stack",
        description="Run the API, the Celery worker and beat (and a private Redis if needed). Ctrl-C stops all.",
    )
    parser.add_argument("--no-beat", action="store_true", help="do not start Celery beat")
    parser.add_argument("--flower", action="store_true", help="also start Flower (must be installed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    configure_logging(settings)
    try:
        return Supervisor(settings, StackOptions.from_args(args)).run()
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
