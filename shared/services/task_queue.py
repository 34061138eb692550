"""The port through which the API sends work: Celery ``send_task`` by name.

Both the worker's Celery app and this producer take their configuration from
:func:`celery_config`, so broker settings cannot drift between the two. The API process needs
Celery's client only, never the engines.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.schedules import crontab
from kombu.exceptions import OperationalError

from shared.core.errors import BrokerUnavailable
from shared.core.settings import Settings
from shared.domain.ports import TaskQueue
from shared.domain.schedules import split_cron
from shared.domain.tasks import QUEUE, RETENTION_TASK

BEAT_KEY_PREFIX = "flexdb:beat:"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        # Redis, with a repair that keeps workers alive through a Redis outage.
        "broker_transport": "shared.repositories.broker:Transport",
        # Job state lives in our own records; Celery results are not needed.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        # A lost broker connection must not kill running jobs: they finish, and record their
        # outcome once Redis is back (their lease and the reaper cover a worker that dies).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_connect_timeout": settings.connect_timeout_seconds,
        },
        "broker_connection_retry_on_startup": True,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "worker_concurrency": settings.worker_concurrency,
        "beat_schedule_filename": str(settings.beat_schedule_file),
        # Beat keeps its schedule in Redis (RedBeat): entries changed over the API apply at the
        # next tick, and RedBeat's lock lets only one beat process fire.
        "beat_scheduler": "shared.repositories.beat:FlexDBScheduler",
        "beat_max_loop_interval": settings.beat_max_interval_seconds,
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_redis_options": {"socket_connect_timeout": settings.connect_timeout_seconds},
        "redbeat_lock_timeout": settings.beat_max_interval_seconds * 5,
        "beat_schedule": {
            "flexdb-retention-daily": {
                "task": RETENTION_TASK,
                "schedule": crontab(**split_cron(settings.retention_cron)),
                "options": {"queue": QUEUE},
            }
        },
        "enable_utc": True,
        "timezone": "UTC",
    }


def make_celery(settings: Settings, main: str = "flexdb") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


class CeleryTaskQueue(TaskQueue):
    def __init__(self, app: Celery) -> None:
        self._app = app

    def enqueue(self, task_name: str, job_id: str, delay_seconds: float = 0) -> None:
        try:
            self._app.send_task(task_name, args=[job_id], queue=QUEUE, countdown=delay_seconds or None)
        except OperationalError as exc:
            raise BrokerUnavailable(
                f"The broker did not take the job ({type(exc).__name__}); try again when FLEXDB_REDIS_URL answers."
            ) from None
