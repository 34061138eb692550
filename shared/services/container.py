"""The composition root: builds the object graph from one Settings object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis
from celery import Celery

from shared.core.settings import Settings
from shared.repositories.beat import RedBeatTrigger
from shared.repositories.broker import RedisTaskMessages
from shared.repositories.redis_store import (
    RedisIdempotencyStore,
    RedisJobRepository,
    RedisScheduleRepository,
    RedisTargetLease,
    RedisWorkerRegistry,
    make_redis,
)
from shared.services.callbacks import CallbackNotifier, CallbackService
from shared.services.catalog import BackupCatalog
from shared.services.health import HealthService
from shared.services.jobs import JobService
from shared.services.reaper import Reaper
from shared.services.recovery import JobRecovery
from shared.services.metrics import FlexDBCollector, MetricsService
from shared.services.retention import RetentionService
from shared.services.runner import JobRunner
from shared.services.schedules import ScheduleService
from shared.services.targets import TargetService
from shared.domain.tasks import QUEUE
from shared.services.task_queue import CeleryTaskQueue, make_celery
from shared.domain.ports import BlobStore
from shared.storage import BlobCatalog, LocalBlobStore
from shared.storage.crypto import Keyring


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    jobs_repo: RedisJobRepository
    storage: BlobCatalog
    lease: RedisTargetLease
    recovery: JobRecovery
    reaper: Reaper
    notifier: CallbackNotifier
    queue: CeleryTaskQueue
    workers: RedisWorkerRegistry
    targets: TargetService
    catalog: BackupCatalog
    jobs: JobService
    health: HealthService
    schedules: ScheduleService
    retention: RetentionService
    callbacks: CallbackService
    metrics: MetricsService


def build_services(settings: Settings, celery: Celery | None = None, blobs: BlobStore | None = None) -> Services:
    """``blobs`` replaces the store the storage URL names (service tests use one in memory)."""
    client = make_redis(settings.redis_url, settings.connect_timeout_seconds)
    celery = celery or make_celery(settings)
    # The job's record and its task's message go to Redis in one transaction (same server: the
    # broker is FLEXDB_REDIS_URL too).
    messages = RedisTaskMessages(celery, QUEUE, client.connection_pool.connection_kwargs.get("db", 0))
    jobs_repo = RedisJobRepository(client, settings.job_ttl_seconds, messages)
    storage = BlobCatalog(
        blobs or blob_store_for(settings.effective_storage_url, settings),
        Keyring.from_settings(settings),
        settings.encryption_chunk_bytes,
        mirror=blob_store_for(settings.storage_mirror_url, settings) if settings.storage_mirror_url else None,
    )
    workers = RedisWorkerRegistry(client, settings.worker_heartbeat_seconds * 3)
    targets = TargetService(settings)
    catalog = BackupCatalog(storage, jobs_repo, targets, settings)
    lease = RedisTargetLease(client, settings.lease_seconds)
    queue = CeleryTaskQueue(celery)
    notifier = CallbackNotifier(queue, settings.callback_delay_seconds)
    recovery = JobRecovery(settings, jobs_repo, storage, lease, queue, notifier)
    jobs = JobService(
        jobs_repo,
        targets,
        catalog,
        RedisIdempotencyStore(client, settings.idempotency_ttl_seconds),
        lease,
        recovery,
    )
    schedule_repo = RedisScheduleRepository(client)
    # An incomplete folder untouched for longer than a task may run belongs to a dead attempt.
    retention = RetentionService(storage, jobs_repo, schedule_repo, targets, settings.task_max_seconds)
    retention.check_settings()
    return Services(
        settings=settings,
        redis=client,
        celery=celery,
        jobs_repo=jobs_repo,
        storage=storage,
        lease=lease,
        recovery=recovery,
        reaper=Reaper(settings, jobs_repo, lease, targets, recovery),
        notifier=notifier,
        queue=queue,
        workers=workers,
        targets=targets,
        catalog=catalog,
        jobs=jobs,
        health=HealthService(settings, client, workers, storage, targets),
        schedules=ScheduleService(
            settings, schedule_repo, RedBeatTrigger(celery, QUEUE), targets, jobs, jobs_repo, lease
        ),
        retention=retention,
        callbacks=CallbackService(settings, jobs_repo),
        metrics=MetricsService(FlexDBCollector(jobs_repo, storage, workers, client)),
    )


def blob_store_for(url: str, settings: Settings) -> BlobStore:
    """The backend named by the storage URL's scheme (the catalog above never changes)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from shared.storage.s3 import S3BlobStore  # boto3 only where S3 is used

        return S3BlobStore.from_url(url, settings)
    return LocalBlobStore(Path(unquote(parts.path)))


def job_runner(services: Services, timeout_errors: tuple[type[BaseException], ...] = ()) -> JobRunner:
    """The runner a worker runs jobs with; ``timeout_errors`` are the task queue's soft limits."""
    return JobRunner(
        services.settings,
        services.jobs_repo,
        services.storage,
        services.lease,
        services.targets,
        services.retention,
        services.recovery,
        services.notifier,
        services.queue,
        timeout_errors=timeout_errors,
    )
