"""Settings: one object, read from the environment (and ``.env``), validated at start.

``get_settings()`` is the process-wide Singleton accessor; tests and app factories may build
their own with ``Settings.from_env({...})``. Every variable read here is listed in
``.env.example`` with a dummy value and a comment.
"""

from __future__ import annotations

import base64
import binascii
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
from shared.core.hosts import HostAllowList
from shared.core.redaction import mask_uri, register_secret, uri_secrets

ENV_PREFIX = "FLEXDB_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The FLEXDB_CALLBACK_SECRET value .env.example ships with: public, so it must never sign.
CALLBACK_SECRET_PLACEHOLDER = "change-me-to-a-long-random-string"
GENERATE_SECRET_HINT = 'python -c "import secrets; print(secrets.token_hex(32))"'
# AES-256 takes a 32-byte key.
ENCRYPTION_KEY_BYTES = 32
# Also the largest chunk a reader accepts, so a damaged header cannot make it allocate gigabytes.
ENCRYPTION_CHUNK_BYTES_MAX = 64 * 2**20
GENERATE_KEY_HINT = (
    'python -c "import base64, os; print(\'k1:\' + base64.b64encode(os.urandom(32)).decode())"'
)
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
class EncryptionKey:
    """One entry of FLEXDB_ENCRYPTION_KEYS: the id archives name, and the 32-byte key (never shown)."""

    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_dir: Path = Path("./var/backups")
    # Where backups go: file:///path or s3://bucket/prefix; empty means the folder above.
    storage_url: str = ""
    # A second place every backup is copied to after it completes (empty: no mirror).
    storage_mirror_url: str = ""
    # A copy to the mirror that fails is tried again with backoff, up to these limits.
    mirror_max_attempts: int = 8
    mirror_backoff_max_seconds: int = 600
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
    # glibc malloc in the worker: arenas (0: glibc's 8 per CPU, each keeping its freed memory) and
    # the size from which a block gets its own mapping, given back when freed (0: glibc's moving
    # threshold, which grows with the largest buffer seen and keeps later ones on the heap).
    worker_malloc_arenas: int = 2
    worker_mmap_threshold_bytes: int = 256 * 1024
    worker_heartbeat_seconds: int = 10
    # How long a job waits in line for a busy target before it fails with target_busy.
    lock_wait_seconds: int = 3600
    # A target lease lapses this long after its worker stops renewing it (a dead worker).
    lease_seconds: float = 30.0
    # Attempts of a backup whose worker died (a restore is never replayed: it fails worker_lost).
    job_max_attempts: int = 3
    # Warm shutdown: running jobs get this long to finish, then go back to the queue.
    shutdown_grace_seconds: int = 15
    # How long a worker keeps trying to record a job's outcome while Redis does not answer.
    redis_retry_seconds: int = 300
    job_ttl_seconds: int = 30 * 24 * 3600
    connect_timeout_seconds: int = 5
    # Hosts POST /connections/check may connect to; empty means the hosts of the targets.
    check_allowed_hosts: HostAllowList = field(default_factory=HostAllowList)
    # How long /health reuses a target's last check instead of connecting again.
    health_cache_seconds: float = 10.0
    stream_chunk_bytes: int = 1024 * 1024
    # Client-side encryption: the first key encrypts new archives, every key decrypts (rotation).
    # Empty: archives are stored unencrypted.
    encryption_keys: tuple[EncryptionKey, ...] = field(default=(), repr=False)
    # Plaintext bytes per authenticated chunk: what a reader or writer holds in memory at once.
    encryption_chunk_bytes: int = 1024 * 1024
    page_size_default: int = 20
    page_size_max: int = 100
    pg_bin_dir: str = ""
    progress_interval_seconds: float = 1.0
    beat_schedule_file: Path = Path("./var/celerybeat-schedule")
    retry_after_seconds: int = 2
    trusted_proxies: int = 0
    api_max_body_bytes: int = 1024 * 1024
    # The largest archive POST /backups/import takes (that route only; others keep api_max_body_bytes).
    import_max_bytes: int = 50 * 2**30
    api_timeout_seconds: int = 60
    # Deeper JSON bodies are refused before anything walks them recursively.
    api_max_json_depth: int = 32
    # The service's address as clients reach it (absolute links in callbacks); empty means
    # http://<FLEXDB_API_HOST>:<FLEXDB_API_PORT>.
    public_url: str = ""
    # When set, every API route but GET /api/v1/health needs "Authorization: Bearer <token>".
    api_token: str = field(default="", repr=False)
    wait_max_seconds: int = 30
    # Requests of one API process that may be held by ?wait=N at once; 0 = half its threads.
    wait_max_concurrent: int = 0
    idempotency_ttl_seconds: int = 24 * 3600
    callback_secret: str = field(default="", repr=False)
    callback_timeout_seconds: int = 10
    # Empty: any host but the never-contacted ones (link-local, cloud metadata).
    callback_allowed_hosts: HostAllowList = field(default_factory=HostAllowList)
    # The first attempt waits this long: a workflow engine (n8n) answers 409 to a resume that
    # arrives before it has parked the execution, and 409 is final.
    callback_delay_seconds: float = 2.0
    callback_max_attempts: int = 8
    callback_backoff_max_seconds: int = 600
    # make run: how long its children get to stop (more than the worker's shutdown grace).
    stop_grace_seconds: int = 30
    # make run: a child that exits is started again after 1 s, doubling up to this.
    restart_backoff_max_seconds: int = 30
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    # How archives are compressed in the stream to storage (a backup's options.compression wins).
    compression: str = "zstd"
    # zstd level 3 with long-distance matching: smaller than pg_dump -Fc's zlib in under a third
    # of its time on two cores (docs/setup.md, "Compression").
    zstd_level: int = 3
    # Compression threads per backup; 0 = one per CPU of the worker.
    zstd_threads: int = 0
    # Long-distance matching window (log2 bytes, as `zstd --long=N`); 0 = off.
    zstd_long: int = 24
    gzip_level: int = 6
    # MongoDB's own default codec when set (older deployments); empty: FLEXDB_COMPRESSION.
    mongo_compression: str = ""
    # MongoDB's zstd long window (as FLEXDB_ZSTD_LONG): 22 (4 MiB) makes its archives 1-2 % larger
    # than 24 and saves the worker ~13 MiB, which a dump holding big documents needs.
    mongo_zstd_long: int = 22
    # PostgreSQL directory-format backups: most pg_dump/pg_restore jobs one backup may ask for,
    # and the local folder their files pass through (needs the database's uncompressed dump size).
    pg_max_jobs: int = 8
    scratch_dir: Path = Path("./var/scratch")
    mongo_batch_bytes: int = 8 * 1024 * 1024
    # Documents per read batch of a dump; the server caps a batch at 16 MiB whatever this says.
    mongo_read_batch_docs: int = 1000
    # Collections a dump reads, and a restore inserts into, at the same time (threads). They
    # share FLEXDB_MONGO_BATCH_BYTES and FLEXDB_MONGO_READ_BATCH_DOCS, so memory stays the same.
    mongo_parallel_collections: int = 2

    # S3-compatible storage (an s3://bucket/prefix storage URL). An empty endpoint means AWS.
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    # Both empty: boto3's own credential chain (AWS_* variables, profile, instance role).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)
    # path: MinIO, Ceph RGW and most self-hosted servers; virtual: AWS, R2, B2; auto: botocore decides.
    s3_addressing: str = "auto"
    # Memory one upload holds; S3 allows 10,000 parts, so this also caps a blob at 10,000 x it.
    s3_part_bytes: int = 8 * 2**20
    # Attempts per S3 request (transient errors, throttling) before the job fails.
    s3_max_attempts: int = 5

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
            storage_url=reader.get("STORAGE_URL", cls.storage_url, _storage_url),
            storage_mirror_url=reader.get("STORAGE_MIRROR_URL", cls.storage_mirror_url, _storage_url),
            mirror_max_attempts=reader.get("MIRROR_MAX_ATTEMPTS", cls.mirror_max_attempts, _int_in(1, 50)),
            mirror_backoff_max_seconds=reader.get(
                "MIRROR_BACKOFF_MAX_SECONDS", cls.mirror_backoff_max_seconds, _int_in(1, 24 * 3600)
            ),
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
            worker_malloc_arenas=reader.get("WORKER_MALLOC_ARENAS", cls.worker_malloc_arenas, _int_in(0, 1024)),
            worker_mmap_threshold_bytes=reader.get(
                "WORKER_MMAP_THRESHOLD_BYTES", cls.worker_mmap_threshold_bytes, _int_in(0, 32 * 2**20)
            ),
            worker_heartbeat_seconds=reader.get(
                "WORKER_HEARTBEAT_SECONDS", cls.worker_heartbeat_seconds, _int_in(1, 3600)
            ),
            lock_wait_seconds=reader.get("LOCK_WAIT_SECONDS", cls.lock_wait_seconds, _int_in(0, 10**7)),
            lease_seconds=reader.get("LEASE_SECONDS", cls.lease_seconds, _float_in(1.0, 600.0)),
            job_max_attempts=reader.get("JOB_MAX_ATTEMPTS", cls.job_max_attempts, _int_in(1, 20)),
            shutdown_grace_seconds=reader.get(
                "SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds, _int_in(0, 24 * 3600)
            ),
            redis_retry_seconds=reader.get("REDIS_RETRY_SECONDS", cls.redis_retry_seconds, _int_in(0, 24 * 3600)),
            job_ttl_seconds=reader.get("JOB_TTL_SECONDS", cls.job_ttl_seconds, _int_in(60, 10**9)),
            connect_timeout_seconds=reader.get(
                "CONNECT_TIMEOUT_SECONDS", cls.connect_timeout_seconds, _int_in(1, 300)
            ),
            check_allowed_hosts=reader.get("CHECK_ALLOWED_HOSTS", HostAllowList(), HostAllowList.parse),
            health_cache_seconds=reader.get(
                "HEALTH_CACHE_SECONDS", cls.health_cache_seconds, _float_in(0.0, 3600.0)
            ),
            stream_chunk_bytes=reader.get("STREAM_CHUNK_BYTES", cls.stream_chunk_bytes, _int_in(4096, 64 * 2**20)),
            encryption_keys=reader.get("ENCRYPTION_KEYS", (), _encryption_keys),
            encryption_chunk_bytes=reader.get(
                "ENCRYPTION_CHUNK_BYTES", cls.encryption_chunk_bytes, _int_in(4096, ENCRYPTION_CHUNK_BYTES_MAX)
            ),
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
            import_max_bytes=reader.get("IMPORT_MAX_BYTES", cls.import_max_bytes, _int_in(1024, 2**50)),
            api_timeout_seconds=reader.get("API_TIMEOUT_SECONDS", cls.api_timeout_seconds, _int_in(1, 24 * 3600)),
            api_max_json_depth=reader.get("API_MAX_JSON_DEPTH", cls.api_max_json_depth, _int_in(2, 200)),
            stop_grace_seconds=reader.get("STOP_GRACE_SECONDS", cls.stop_grace_seconds, _int_in(1, 3600)),
            restart_backoff_max_seconds=reader.get(
                "RESTART_BACKOFF_MAX_SECONDS", cls.restart_backoff_max_seconds, _int_in(1, 3600)
            ),
            public_url=reader.get("PUBLIC_URL", cls.public_url, _http_url),
            api_token=reader.get("API_TOKEN", cls.api_token, str),
            wait_max_seconds=reader.get("WAIT_MAX_SECONDS", cls.wait_max_seconds, _int_in(0, 600)),
            wait_max_concurrent=reader.get("WAIT_MAX_CONCURRENT", cls.wait_max_concurrent, _int_in(0, 4096)),
            idempotency_ttl_seconds=reader.get(
                "IDEMPOTENCY_TTL_SECONDS", cls.idempotency_ttl_seconds, _int_in(60, 30 * 24 * 3600)
            ),
            callback_secret=reader.get("CALLBACK_SECRET", cls.callback_secret, _callback_secret),
            callback_allowed_hosts=reader.get("CALLBACK_ALLOWED_HOSTS", HostAllowList(), HostAllowList.parse),
            callback_timeout_seconds=reader.get("CALLBACK_TIMEOUT_SECONDS", cls.callback_timeout_seconds, _int_in(1, 300)),
            callback_delay_seconds=reader.get("CALLBACK_DELAY_SECONDS", cls.callback_delay_seconds, _float_in(0.0, 600.0)),
            callback_max_attempts=reader.get("CALLBACK_MAX_ATTEMPTS", cls.callback_max_attempts, _int_in(1, 50)),
            callback_backoff_max_seconds=reader.get(
                "CALLBACK_BACKOFF_MAX_SECONDS", cls.callback_backoff_max_seconds, _int_in(1, 24 * 3600)
            ),
            flower_host=reader.get("FLOWER_HOST", cls.flower_host, _non_empty),
            flower_port=reader.get("FLOWER_PORT", cls.flower_port, _int_in(1, 65535)),
            compression=reader.get("COMPRESSION", cls.compression, _choice("zstd", "gzip", "none")),
            zstd_level=reader.get("ZSTD_LEVEL", cls.zstd_level, _int_in(1, 19)),
            zstd_threads=reader.get("ZSTD_THREADS", cls.zstd_threads, _int_in(0, 256)),
            # 27 at most: what `zstd -d` and the restore's decoder read without raising their limit
            zstd_long=reader.get("ZSTD_LONG", cls.zstd_long, _zstd_long),
            mongo_zstd_long=reader.get("MONGO_ZSTD_LONG", cls.mongo_zstd_long, _zstd_long),
            gzip_level=reader.get("GZIP_LEVEL", cls.gzip_level, _int_in(1, 9)),
            mongo_compression=reader.get("MONGO_COMPRESSION", cls.mongo_compression, _choice("gzip", "zstd", "none")),
            pg_max_jobs=reader.get("PG_MAX_JOBS", cls.pg_max_jobs, _int_in(1, 64)),
            scratch_dir=reader.get("SCRATCH_DIR", cls.scratch_dir, Path),
            mongo_batch_bytes=reader.get("MONGO_BATCH_BYTES", cls.mongo_batch_bytes, _int_in(64 * 1024, 48 * 2**20)),
            mongo_read_batch_docs=reader.get("MONGO_READ_BATCH_DOCS", cls.mongo_read_batch_docs, _int_in(0, 10**6)),
            mongo_parallel_collections=reader.get(
                "MONGO_PARALLEL_COLLECTIONS", cls.mongo_parallel_collections, _int_in(1, 64)
            ),
            s3_endpoint_url=reader.get("S3_ENDPOINT_URL", cls.s3_endpoint_url, _s3_endpoint_url),
            s3_region=reader.get("S3_REGION", cls.s3_region, _non_empty),
            s3_access_key_id=reader.get("S3_ACCESS_KEY_ID", cls.s3_access_key_id, str),
            s3_secret_access_key=reader.get("S3_SECRET_ACCESS_KEY", cls.s3_secret_access_key, str),
            s3_addressing=reader.get("S3_ADDRESSING", cls.s3_addressing, _choice("auto", "path", "virtual")),
            # S3 refuses parts under 5 MiB (but the last) and over 5 GiB.
            s3_part_bytes=reader.get("S3_PART_BYTES", cls.s3_part_bytes, _int_in(5 * 2**20, 5 * 2**30)),
            s3_max_attempts=reader.get("S3_MAX_ATTEMPTS", cls.s3_max_attempts, _int_in(1, 20)),
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
            if values["shutdown_grace_seconds"] >= values["stop_grace_seconds"]:
                reader.errors.append(
                    f"{ENV_PREFIX}SHUTDOWN_GRACE_SECONDS ({values['shutdown_grace_seconds']}) must be below "
                    f"{ENV_PREFIX}STOP_GRACE_SECONDS ({values['stop_grace_seconds']}), or jobs are killed before "
                    "they are handed back"
                )
            if values["page_size_default"] > values["page_size_max"]:
                reader.errors.append(f"{ENV_PREFIX}PAGE_SIZE_DEFAULT must not exceed {ENV_PREFIX}PAGE_SIZE_MAX")
            if values["wait_max_concurrent"] >= values["api_threads"]:
                reader.errors.append(
                    f"{ENV_PREFIX}WAIT_MAX_CONCURRENT ({values['wait_max_concurrent']}) must be below "
                    f"{ENV_PREFIX}API_THREADS ({values['api_threads']}), or long-polls can hold every thread "
                    "and the other routes wait behind them"
                )
        if reader.errors:
            raise ConfigurationError("Invalid settings: " + "; ".join(reader.errors))
        for target in values["targets"].values():
            for secret in uri_secrets(target.uri):
                register_secret(secret)
        register_secret(values["callback_secret"])
        register_secret(values["api_token"])
        register_secret(values["s3_secret_access_key"])
        return cls(**values)

    @property
    def effective_storage_url(self) -> str:
        """FLEXDB_STORAGE_URL, or the folder FLEXDB_STORAGE_DIR as a file:// URL."""
        return self.storage_url or self.storage_dir.resolve().as_uri()

    @property
    def base_url(self) -> str:
        """Where clients reach the API, for absolute links made outside a request."""
        if self.public_url:
            return self.public_url
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def wait_slots(self) -> int:
        """How many long-polls one API process holds at once (the rest answer at once)."""
        return self.wait_max_concurrent or max(1, self.api_threads // 2)

    @property
    def task_max_seconds(self) -> int:
        """No attempt runs longer: what nobody has written to for longer is a dead attempt's."""
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


def _s3_endpoint_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:9000 (empty for AWS S3)")
    if parts.username or parts.password:
        # Said without echoing the URL: it holds a credential.
        raise ValueError("must not hold credentials; use FLEXDB_S3_ACCESS_KEY_ID and FLEXDB_S3_SECRET_ACCESS_KEY")
    return raw.rstrip("/")


def _callback_secret(raw: str) -> str:
    if raw == CALLBACK_SECRET_PLACEHOLDER:
        raise ValueError(
            "still the placeholder from .env.example, which anyone can read and so could sign callbacks; "
            f"generate a secret with {GENERATE_SECRET_HINT} (or leave it empty to turn callbacks off)"
        )
    return raw


def _encryption_keys(raw: str) -> tuple[EncryptionKey, ...]:
    """Parse ``id:base64key,...``. Problems name an entry by its id (or its position when the id
    itself is unusable), never by its key text."""
    keys: list[EncryptionKey] = []
    problems: list[str] = []
    for position, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not entry:  # a trailing comma
            continue
        key_id, colon, key_text = entry.partition(":")
        key_id, key_text = key_id.strip(), key_text.strip()
        # Masked before any check, so even a malformed key never reaches a log line.
        register_secret(key_text if colon else entry)
        if not colon:
            problems.append(f"entry {position} is not id:base64key")
            continue
        if not key_id:
            problems.append(f"entry {position} has an empty key id")
            continue
        if not NAME_PATTERN.fullmatch(key_id):
            problems.append(f"entry {position}: a key id uses 1-64 letters, digits, '_' or '-'")
            continue
        try:
            key = base64.b64decode(key_text, validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"key {key_id!r} is not valid base64")
            continue
        if len(key) != ENCRYPTION_KEY_BYTES:
            problems.append(f"key {key_id!r} is {len(key)} bytes, AES-256 needs {ENCRYPTION_KEY_BYTES}")
            continue
        if any(known.key_id == key_id for known in keys):
            problems.append(f"key id {key_id!r} appears more than once")
            continue
        register_secret(base64.b64encode(key).decode("ascii"))
        keys.append(EncryptionKey(key_id, key))
    if problems:
        raise ValueError("; ".join(problems) + f" (generate a key with {GENERATE_KEY_HINT})")
    return tuple(keys)


def _storage_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme == "file" and parts.path:
        return raw
    if parts.scheme == "s3" and parts.hostname:
        return raw
    raise ValueError("must be file:///absolute/folder or s3://bucket/optional/prefix")


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


def _zstd_long(raw: str) -> int:
    value = _int_in(0, 27)(raw)
    if 0 < value < 10:
        raise ValueError(f"{value} is not 0 (off) or a window of 10..27")
    return value


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
