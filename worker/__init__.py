"""The Celery worker: app factory, thin tasks, signals. Celery only; logic lives in shared.services."""

from __future__ import annotations

import socket

import structlog
from celery import Celery, bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded

from shared.core.logs import configure_logging, get_logger
from shared.core.settings import Settings, get_settings
from shared.services.container import Services, build_services
from shared.services.runner import JobRunner
from shared.domain.tasks import BACKUP_TASK, CALLBACK_TASK, RESTORE_TASK, RETENTION_TASK, SCHEDULED_BACKUP_TASK
from shared.services.callbacks import CallbackRetry
from shared.services.task_queue import make_celery

log = get_logger("worker")


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = make_celery(settings)
    services = build_services(settings, celery=app)
    runner = JobRunner(
        settings,
        services.jobs_repo,
        services.storage,
        services.lock,
        services.targets,
        services.retention,
        services.jobs.notify_finished,
        timeout_errors=(SoftTimeLimitExceeded,),
    )
    _register_tasks(app, runner, services)
    _connect_signals(settings, services)
    app.steps["worker"].add(_heartbeat_step(services))
    return app


def _register_tasks(app: Celery, runner: JobRunner, services: Services) -> None:
    # Ids are the only arguments: no URI or password ever sits in the broker or Flower.
    @app.task(name=BACKUP_TASK)
    def backup(job_id: str) -> None:
        runner.run(job_id)

    @app.task(name=RESTORE_TASK)
    def restore(job_id: str) -> None:
        runner.run(job_id)

    @app.task(name=SCHEDULED_BACKUP_TASK)
    def scheduled_backup(schedule_id: str) -> None:
        structlog.contextvars.bind_contextvars(schedule_id=schedule_id)
        services.schedules.fire(schedule_id)

    @app.task(name=RETENTION_TASK)
    def retention() -> None:
        services.retention.apply_all(trigger="daily retention pass")

    settings = services.settings

    # Retried with exponential backoff (jitter, capped) on network errors, 429 and 5xx only.
    @app.task(
        name=CALLBACK_TASK,
        bind=True,
        autoretry_for=(CallbackRetry,),
        max_retries=settings.callback_max_attempts - 1,
        retry_backoff=True,
        retry_backoff_max=settings.callback_backoff_max_seconds,
        retry_jitter=True,
    )
    def callback(self, job_id: str) -> None:
        services.callbacks.deliver(job_id, final_attempt=self.request.retries >= self.max_retries)


def _connect_signals(settings: Settings, services: Services) -> None:
    def setup_logging(**_kwargs) -> None:
        configure_logging(settings)

    def install_declared_schedules(**_kwargs) -> None:
        services.schedules.sync_from_settings()

    def bind_job(task_id=None, task=None, args=None, **_kwargs) -> None:
        structlog.contextvars.clear_contextvars()
        job_id = args[0] if args else None
        structlog.contextvars.bind_contextvars(job_id=job_id, task=task.name if task else None, task_id=task_id)

    def unbind_job(**_kwargs) -> None:
        structlog.contextvars.clear_contextvars()

    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="flexdb.setup_logging")
    signals.beat_init.connect(install_declared_schedules, weak=False, dispatch_uid="flexdb.install_schedules")
    signals.task_prerun.connect(bind_job, weak=False, dispatch_uid="flexdb.bind_job")
    signals.task_postrun.connect(unbind_job, weak=False, dispatch_uid="flexdb.unbind_job")


def _heartbeat_step(services: Services) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that refreshes a TTL key, so health checks need no broadcast ping."""

    class Heartbeat(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker, **kwargs) -> None:
            super().__init__(worker, **kwargs)
            self.name_ = worker.hostname or socket.gethostname()
            self.timer_entry = None

        def _beat(self) -> None:
            try:
                services.workers.beat(self.name_)
            except Exception as exc:  # a Redis blip must not kill the worker
                log.warning("worker.heartbeat_failed", error=type(exc).__name__)

        def start(self, worker) -> None:
            self._beat()
            self.timer_entry = worker.timer.call_repeatedly(services.settings.worker_heartbeat_seconds, self._beat)
            log.info("worker.started", worker=self.name_)

        def stop(self, worker) -> None:
            if self.timer_entry is not None:
                self.timer_entry.cancel()
            try:
                services.workers.forget(self.name_)
            except Exception:
                pass

    return Heartbeat
