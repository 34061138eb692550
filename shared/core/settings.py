"""Settings: one object, read from the environment (and ``.env``), validated at start.

``get_settings()`` is the process-wide Singleton accessor; tests and app factories may build
their own with ``Settings.from_env({...})``. Every variable read here is listed in
``.env.example`` with a dummy value and a comment.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from shared.core.errors import ConfigurationError
from shared.core.redaction import mask_uri, register_secret

ENV_PREFIX = "FLEXDB_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """A named database connection declared in settings. The URI may hold a password: show
    ``masked_uri`` to people, give ``uri`` only to the engine that connects."""

    name: str
    engine: str
    uri: str = field(repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    # The target's retention policy as declared (validated when the services start).
    retention: Mapping[str, Any] | None = None

    @property
    def masked_uri(self) -> str:
        return mask_uri(self.uri)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_dir: Path = Path("./var/backups")
    targets: Mapping[str, Target] = field(default_factory=dict)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 2
    api_threads: int = 8
    log_level: str = "INFO"
    log_format: str = "json"
    # Celery: a task's hard limit must stay below the broker's visibility timeout, or Redis
    # hands a still-running task to a second worker.
    task_soft_time_limit: int = 3300
    task_time_limit: int = 3600
    broker_visibility_timeout: int = 7200
    worker_concurrency: int = 2
    worker_heartbeat_seconds: int = 10
    lock_wait_seconds: int = 0
    job_ttl_seconds: int = 30 * 24 * 3600
    connect_timeout_seconds: int = 5
    stream_chunk_bytes: int = 1024 * 1024
    page_size_default: int = 20
    page_size_max: int = 100
    pg_bin_dir: str = ""
    progress_interval_seconds: float = 1.0
    beat_schedule_file: Path = Path("./var/celerybeat-schedule")
    retry_after_seconds: int = 2
    trusted_proxies: int = 0
    api_max_body_bytes: int = 1024 * 1024
    api_timeout_seconds: int = 60
    # The service's address as clients reach it (absolute links in callbacks); empty means
    # http://<FLEXDB_API_HOST>:<FLEXDB_API_PORT>.
    public_url: str = ""
    # When set, every API route but GET /api/v1/health needs "Authorization: Bearer <token>".
    api_token: str = field(default="", repr=False)
    wait_max_seconds: int = 30
    idempotency_ttl_seconds: int = 24 * 3600
    callback_secret: str = field(default="", repr=False)
    callback_timeout_seconds: int = 10
    # The first attempt waits this long: a workflow engine (n8n) answers 409 to a resume that
    # arrives before it has parked the execution, and 409 is final.
    callback_delay_seconds: float = 2.0
    callback_max_attempts: int = 8
    callback_backoff_max_seconds: int = 600
    stop_grace_seconds: int = 10
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    # MongoDB: gzip by default so the official `mongorestore --archive --gzip` reads our files.
    mongo_compression: str = "gzip"
    mongo_batch_bytes: int = 8 * 1024 * 1024
    # Documents per read batch of a dump; the server caps a batch at 16 MiB whatever this says.
    mongo_read_batch_docs: int = 1000

    # Schedules declared by the deployment (validated by the schedule service at start).
    schedules: tuple[Mapping[str, Any], ...] = ()
    schedule_min_interval_seconds: int = 60
    beat_max_interval_seconds: int = 5
    retention_cron: str = "30 3 * * *"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment), or raise
        :class:`ConfigurationError` naming every bad variable and what to put there."""
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        values = dict(
            redis_url=reader.get("REDIS_URL", cls.redis_url, _redis_url),
            storage_dir=reader.get("STORAGE_DIR", cls.storage_dir, Path),
            api_host=reader.get("API_HOST", cls.api_host, _non_empty),
            api_port=reader.get("API_PORT", cls.api_port, _int_in(1, 65535)),
            api_workers=reader.get("API_WORKERS", cls.api_workers, _int_in(1, 64)),
            api_threads=reader.get("API_THREADS", cls.api_threads, _int_in(1, 256)),
            log_level=reader.get("LOG_LEVEL", cls.log_level, _choice("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=reader.get("LOG_FORMAT", cls.log_format, _choice("json", "console")),
            task_soft_time_limit=reader.get("TASK_SOFT_TIME_LIMIT", cls.task_soft_time_limit, _int_in(1, 10**7)),
            task_time_limit=reader.get("TASK_TIME_LIMIT", cls.task_time_limit, _int_in(1, 10**7)),
            broker_visibility_timeout=reader.get(
                "BROKER_VISIBILITY_TIMEOUT", cls.broker_visibility_timeout, _int_in(1, 10**7)
            ),
            worker_concurrency=reader.get("WORKER_CONCURRENCY", cls.worker_concurrency, _int_in(1, 64)),
            worker_heartbeat_seconds=reader.get(
                "WORKER_HEARTBEAT_SECONDS", cls.worker_heartbeat_seconds, _int_in(1, 3600)
            ),
            lock_wait_seconds=reader.get("LOCK_WAIT_SECONDS", cls.lock_wait_seconds, _int_in(0, 10**6)),
            job_ttl_seconds=reader.get("JOB_TTL_SECONDS", cls.job_ttl_seconds, _int_in(60, 10**9)),
            connect_timeout_seconds=reader.get(
                "CONNECT_TIMEOUT_SECONDS", cls.connect_timeout_seconds, _int_in(1, 300)
            ),
            stream_chunk_bytes=reader.get("STREAM_CHUNK_BYTES", cls.stream_chunk_bytes, _int_in(4096, 64 * 2**20)),
            page_size_default=reader.get("PAGE_SIZE_DEFAULT", cls.page_size_default, _int_in(1, 1000)),
            page_size_max=reader.get("PAGE_SIZE_MAX", cls.page_size_max, _int_in(1, 1000)),
            pg_bin_dir=reader.get("PG_BIN_DIR", cls.pg_bin_dir, str),
            progress_interval_seconds=reader.get(
                "PROGRESS_INTERVAL_SECONDS", cls.progress_interval_seconds, _float_in(0.0, 3600.0)
            ),
            beat_schedule_file=reader.get("BEAT_SCHEDULE_FILE", cls.beat_schedule_file, Path),
            retry_after_seconds=reader.get("RETRY_AFTER_SECONDS", cls.retry_after_seconds, _int_in(1, 3600)),
            trusted_proxies=reader.get("TRUSTED_PROXIES", cls.trusted_proxies, _int_in(0, 10)),
            api_max_body_bytes=reader.get("API_MAX_BODY_BYTES", cls.api_max_body_bytes, _int_in(1024, 64 * 2**20)),
            api_timeout_seconds=reader.get("API_TIMEOUT_SECONDS", cls.api_timeout_seconds, _int_in(1, 24 * 3600)),
            stop_grace_seconds=reader.get("STOP_GRACE_SECONDS", cls.stop_grace_seconds, _int_in(1, 3600)),
            public_url=reader.get("PUBLIC_URL", cls.public_url, _http_url),
            api_token=reader.get("API_TOKEN", cls.api_token, str),
            wait_max_seconds=reader.get("WAIT_MAX_SECONDS", cls.wait_max_seconds, _int_in(0, 600)),
            idempotency_ttl_seconds=reader.get(
                "IDEMPOTENCY_TTL_SECONDS", cls.idempotency_ttl_seconds, _int_in(60, 30 * 24 * 3600)
            ),
            callback_secret=reader.get("CALLBACK_SECRET", cls.callback_secret, str),
            callback_timeout_seconds=reader.get("CALLBACK_TIMEOUT_SECONDS", cls.callback_timeout_seconds, _int_in(1, 300)),
            callback_delay_seconds=reader.get("CALLBACK_DELAY_SECONDS", cls.callback_delay_seconds, _float_in(0.0, 600.0)),
            callback_max_attempts=reader.get("CALLBACK_MAX_ATTEMPTS", cls.callback_max_attempts, _int_in(1, 50)),
            callback_backoff_max_seconds=reader.get(
                "CALLBACK_BACKOFF_MAX_SECONDS", cls.callback_backoff_max_seconds, _int_in(1, 24 * 3600)
            ),
            flower_host=reader.get("FLOWER_HOST", cls.flower_host, _non_empty),
            flower_port=reader.get("FLOWER_PORT", cls.flower_port, _int_in(1, 65535)),
            mongo_compression=reader.get("MONGO_COMPRESSION", cls.mongo_compression, _choice("gzip", "zstd", "none")),
            mongo_batch_bytes=reader.get("MONGO_BATCH_BYTES", cls.mongo_batch_bytes, _int_in(64 * 1024, 48 * 2**20)),
            mongo_read_batch_docs=reader.get("MONGO_READ_BATCH_DOCS", cls.mongo_read_batch_docs, _int_in(0, 10**6)),
            schedules=reader.json_list("SCHEDULES"),
            schedule_min_interval_seconds=reader.get(
                "SCHEDULE_MIN_INTERVAL_SECONDS", cls.schedule_min_interval_seconds, _int_in(1, 10**7)
            ),
            beat_max_interval_seconds=reader.get(
                "BEAT_MAX_INTERVAL_SECONDS", cls.beat_max_interval_seconds, _int_in(1, 300)
            ),
            retention_cron=reader.get("RETENTION_CRON", cls.retention_cron, _non_empty),
            targets=reader.targets(),
        )
        if not reader.errors:
            if values["task_soft_time_limit"] >= values["task_time_limit"]:
                reader.errors.append(
                    f"{ENV_PREFIX}TASK_SOFT_TIME_LIMIT ({values['task_soft_time_limit']}) must be below "
                    f"{ENV_PREFIX}TASK_TIME_LIMIT ({values['task_time_limit']})"
                )
            if values["task_time_limit"] >= values["broker_visibility_timeout"]:
                reader.errors.append(
                    f"{ENV_PREFIX}TASK_TIME_LIMIT ({values['task_time_limit']}) must be below "
                    f"{ENV_PREFIX}BROKER_VISIBILITY_TIMEOUT ({values['broker_visibility_timeout']}), "
                    "or Redis redelivers long jobs to a second worker"
                )
            if values["page_size_default"] > values["page_size_max"]:
                reader.errors.append(f"{ENV_PREFIX}PAGE_SIZE_DEFAULT must not exceed {ENV_PREFIX}PAGE_SIZE_MAX")
        if reader.errors:
            raise ConfigurationError("Invalid settings: " + "; ".join(reader.errors))
        for target in values["targets"].values():
            register_secret(urlsplit(target.uri).password)
        register_secret(values["callback_secret"])
        register_secret(values["api_token"])
        return cls(**values)

    @property
    def base_url(self) -> str:
        """Where clients reach the API, for absolute links made outside a request."""
        if self.public_url:
            return self.public_url
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def lock_ttl_seconds(self) -> int:
        """A target lock outlives the longest possible task, so a killed worker frees it."""
        return self.task_time_limit + 60


class _EnvReader:
    """Reads ``FLEXDB_*`` variables, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self.env.get(ENV_PREFIX + name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            self.errors.append(f"{ENV_PREFIX}{name}: {exc}")
            return default

    def json_list(self, name: str) -> tuple[Mapping[str, Any], ...]:
        raw = self.env.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return ()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            self.errors.append(f"{ENV_PREFIX}{name}: not valid JSON ({exc.msg} at position {exc.pos})")
            return ()
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            self.errors.append(f"{ENV_PREFIX}{name}: must be a JSON list of objects")
            return ()
        return tuple(data)

    def targets(self) -> dict[str, Target]:
        raw = self.env.get(ENV_PREFIX + "TARGETS", "").strip()
        source = ENV_PREFIX + "TARGETS"
        file_name = self.env.get(ENV_PREFIX + "TARGETS_FILE", "").strip()
        if file_name and not raw:
            source = ENV_PREFIX + "TARGETS_FILE"
            try:
                raw = Path(file_name).read_text(encoding="utf-8")
            except OSError as exc:
                self.errors.append(f"{source}: cannot read {file_name!r} ({exc.strerror})")
                return {}
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            self.errors.append(f"{source}: not valid JSON ({exc.msg} at position {exc.pos})")
            return {}
        if not isinstance(data, dict):
            self.errors.append(f'{source}: must be a JSON object like {{"name": {{"engine": ..., "uri": ...}}}}')
            return {}
        targets: dict[str, Target] = {}
        for name, spec in data.items():
            where = f"{source}[{name!r}]"
            if not NAME_PATTERN.match(name):
                self.errors.append(f"{where}: a target name uses 1-64 letters, digits, '_' or '-'")
                continue
            if not isinstance(spec, dict) or not isinstance(spec.get("engine"), str) or not isinstance(
                spec.get("uri"), str
            ):
                self.errors.append(f'{where}: needs string fields "engine" and "uri"')
                continue
            unknown = set(spec) - {"engine", "uri", "options", "retention"}
            if unknown:
                self.errors.append(f"{where}: unknown fields {sorted(unknown)}")
                continue
            parts = urlsplit(spec["uri"])
            if not parts.scheme or not (parts.hostname or parts.path):
                self.errors.append(f"{where}: uri must look like scheme://user:password@host:port/database")
                continue
            targets[name] = Target(
                name, spec["engine"], spec["uri"], dict(spec.get("options") or {}), spec.get("retention")
            )
        return targets


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://backups.example.com")
    return raw.rstrip("/")


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379/0")
    return raw


def _number_in(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            noun = "whole number" if kind is int else "number"
            raise ValueError(f"{raw!r} is not a {noun}") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _int_in(low: int, high: int) -> Callable[[str], int]:
    return _number_in(int, low, high)


def _float_in(low: float, high: float) -> Callable[[str], float]:
    return _number_in(float, low, high)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for option in allowed:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"{raw!r} is not one of {', '.join(allowed)}")

    return parse


_instance: Settings | None = None
_instance_lock = threading.Lock()


def get_settings() -> Settings:
    """The process-wide settings (Singleton): ``.env`` is read once, then the environment."""
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _load_dotenv()
                _instance = Settings.from_env()
    return _instance


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # optional: plain environment variables work without it
        return
    # Real environment variables win over the file.
    load_dotenv(os.environ.get(ENV_PREFIX + "ENV_FILE", ".env"), override=False)
