"""The composition root: builds the object graph from one Settings object."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery

from shared.core.settings import Settings
from shared.repositories.redis_store import (
    RedisJobRepository,
    RedisTargetLock,
    RedisWorkerRegistry,
    make_redis,
)
from shared.services.catalog import BackupCatalog
from shared.services.health import HealthService
from shared.services.jobs import JobService
from shared.services.targets import TargetService
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


def build_services(settings: Settings, celery: Celery | None = None) -> Services:
    client = make_redis(settings.redis_url, settings.connect_timeout_seconds)
    celery = celery or make_celery(settings)
    jobs_repo = RedisJobRepository(client, settings.job_ttl_seconds)
    storage = LocalStorage(settings.storage_dir)
    workers = RedisWorkerRegistry(client, settings.worker_heartbeat_seconds * 3)
    targets = TargetService(settings)
    catalog = BackupCatalog(storage)
    return Services(
        settings=settings,
        redis=client,
        celery=celery,
        jobs_repo=jobs_repo,
        storage=storage,
        lock=RedisTargetLock(client, settings.lock_ttl_seconds, settings.lock_wait_seconds),
        workers=workers,
        targets=targets,
        catalog=catalog,
        jobs=JobService(jobs_repo, CeleryTaskQueue(celery), targets, catalog),
        health=HealthService(settings, client, workers, storage, targets),
    )
