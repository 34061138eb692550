"""The composition root: builds the object graph from one Settings object."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery

from shared.core.settings import Settings
from shared.repositories.beat import RedBeatTrigger
from shared.repositories.redis_store import (
    RedisIdempotencyStore,
    RedisJobRepository,
    RedisScheduleRepository,
    RedisTargetLock,
    RedisWorkerRegistry,
    make_redis,
)
from shared.services.callbacks import CallbackService
from shared.services.catalog import BackupCatalog
from shared.services.health import HealthService
from shared.services.jobs import JobService
from shared.services.metrics import FlexDBCollector, MetricsService
from shared.services.retention import RetentionService
from shared.services.schedules import ScheduleService
from shared.services.targets import TargetService
from shared.domain.tasks import QUEUE
from shared.services.task_queue import CeleryTaskQueue, make_celery
from shared.storage import LocalStorage


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    jobs_repo: RedisJobRepository
    storage: LocalStorage
    lock: RedisTargetLock
    workers: RedisWorkerRegistry
    targets: TargetService
    catalog: BackupCatalog
    jobs: JobService
    health: HealthService
    schedules: ScheduleService
    retention: RetentionService
    callbacks: CallbackService
    metrics: MetricsService


def build_services(settings: Settings, celery: Celery | None = None) -> Services:
    client = make_redis(settings.redis_url, settings.connect_timeout_seconds)
    celery = celery or make_celery(settings)
    jobs_repo = RedisJobRepository(client, settings.job_ttl_seconds)
    storage = LocalStorage(settings.storage_dir)
    workers = RedisWorkerRegistry(client, settings.worker_heartbeat_seconds * 3)
    targets = TargetService(settings)
    catalog = BackupCatalog(storage)
    lock = RedisTargetLock(client, settings.lock_ttl_seconds, settings.lock_wait_seconds)
    jobs = JobService(
        jobs_repo,
        CeleryTaskQueue(celery),
        targets,
        catalog,
        RedisIdempotencyStore(client, settings.idempotency_ttl_seconds),
        callback_delay_seconds=settings.callback_delay_seconds,
    )
    schedule_repo = RedisScheduleRepository(client)
    # An incomplete folder untouched for longer than a task may run belongs to a dead attempt.
    retention = RetentionService(storage, jobs_repo, schedule_repo, targets, settings.lock_ttl_seconds)
    retention.check_settings()
    return Services(
        settings=settings,
        redis=client,
        celery=celery,
        jobs_repo=jobs_repo,
        storage=storage,
        lock=lock,
        workers=workers,
        targets=targets,
        catalog=catalog,
        jobs=jobs,
        health=HealthService(settings, client, workers, storage, targets),
        schedules=ScheduleService(
            settings, schedule_repo, RedBeatTrigger(celery, QUEUE), targets, jobs, jobs_repo, lock
        ),
        retention=retention,
        callbacks=CallbackService(settings, jobs_repo),
        metrics=MetricsService(FlexDBCollector(jobs_repo, storage, workers, client)),
    )
