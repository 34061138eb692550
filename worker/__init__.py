"""The Celery worker: app factory, thin tasks, signals. Celery only; logic lives in shared.services."""

from __future__ import annotations

import socket
import threading
import time

import structlog
from celery import Celery, bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import state as worker_state

from shared.core.errors import StorageError
from shared.core.logs import configure_logging, get_logger
from shared.core.memory import release_free_memory, tune_allocator
from shared.core.settings import Settings, get_settings
from shared.services.container import Services, build_services, job_runner
from shared.domain.jobs import Job, JobStatus
from shared.services.runner import JobRunner
from shared.domain.tasks import (
    BACKUP_TASK,
    CALLBACK_TASK,
    MIRROR_TASK,
    RESTORE_TASK,
    RETENTION_TASK,
    SCHEDULED_BACKUP_TASK,
)
from shared.services.callbacks import CallbackRetry
from shared.services.task_queue import make_celery

log = get_logger("worker")


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = make_celery(settings)
    services = build_services(settings, celery=app)
    runner = job_runner(services, timeout_errors=(SoftTimeLimitExceeded,))
    _register_tasks(app, runner, services)
    _connect_signals(settings, services)
    app.steps["worker"].add(_heartbeat_step(services))
    return app


class JobFailed(Exception):
    """Raised by a job's task when the job ended failed or cancelled, so that Celery, its log and
    Flower show FAILURE with the job's error code and message (never a secret: the message was
    redacted when the job recorded it). Not retried: the job's own record is final."""

    def __init__(self, job: Job) -> None:
        error = job.error.code + ": " + job.error.message if job.error else "cancelled: the job was cancelled on request"
        super().__init__(f"job {job.id} {job.status.value} ({error})")


def _run_job(runner: JobRunner, job_id: str) -> None:
    job = runner.run(job_id)
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobFailed(job)


def _register_tasks(app: Celery, runner: JobRunner, services: Services) -> None:
    # Ids are the only arguments: no URI or password ever sits in the broker or Flower.
    # ``throws``: an expected outcome, logged without a traceback.
    @app.task(name=BACKUP_TASK, throws=(JobFailed,))
    def backup(job_id: str) -> None:
        _run_job(runner, job_id)

    @app.task(name=RESTORE_TASK, throws=(JobFailed,))
    def restore(job_id: str) -> None:
        _run_job(runner, job_id)

    @app.task(name=SCHEDULED_BACKUP_TASK)
    def scheduled_backup(schedule_id: str) -> None:
        structlog.contextvars.bind_contextvars(schedule_id=schedule_id)
        services.schedules.fire(schedule_id)

    # A failed copy (the mirror unreachable) is tried again with backoff; the manifest says how
    # the last attempt went.
    @app.task(
        name=MIRROR_TASK,
        autoretry_for=(StorageError,),
        max_retries=services.settings.mirror_max_attempts - 1,
        retry_backoff=True,
        retry_backoff_max=services.settings.mirror_backoff_max_seconds,
    )
    def mirror(backup_id: str) -> None:
        structlog.contextvars.bind_contextvars(backup_id=backup_id)
        services.catalog.mirror(backup_id)

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

    def tune_memory(**_kwargs) -> None:
        # in the main process, before the pool forks: every pool process inherits it
        tune_allocator(settings.worker_malloc_arenas, settings.worker_mmap_threshold_bytes)

    def unbind_job(task=None, **_kwargs) -> None:
        structlog.contextvars.clear_contextvars()
        if task is not None and task.name in (BACKUP_TASK, RESTORE_TASK):
            release_free_memory()  # what a big job freed goes back, not kept for the next one

    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="flexdb.setup_logging")
    signals.worker_init.connect(tune_memory, weak=False, dispatch_uid="flexdb.tune_memory")
    signals.beat_init.connect(install_declared_schedules, weak=False, dispatch_uid="flexdb.install_schedules")
    signals.task_prerun.connect(bind_job, weak=False, dispatch_uid="flexdb.bind_job")
    signals.task_postrun.connect(unbind_job, weak=False, dispatch_uid="flexdb.unbind_job")
    signals.worker_shutting_down.connect(
        _hand_back_after_grace(services), weak=False, dispatch_uid="flexdb.hand_back_jobs"
    )


def _hand_back_after_grace(services: Services):
    """Warm shutdown: the worker takes no new work (Celery); running jobs get
    FLEXDB_SHUTDOWN_GRACE_SECONDS to finish, then are asked to go back to the queue, where the
    next worker to start picks them up. Runs in the worker's main process."""

    def on_shutting_down(**_kwargs) -> None:
        def hand_back() -> None:
            time.sleep(services.settings.shutdown_grace_seconds)
            for request in list(worker_state.active_requests):
                if request.name in (BACKUP_TASK, RESTORE_TASK) and request.args:
                    try:
                        services.jobs_repo.request_handback(request.args[0])
                        log.info("worker.handing_back", job_id=request.args[0])
                    except Exception as exc:  # Redis away: the job's lease lapses and the reaper acts
                        log.warning("worker.hand_back_failed", job_id=request.args[0], error=type(exc).__name__)

        threading.Thread(target=hand_back, name="hand-back", daemon=True).start()

    return on_shutting_down


def _heartbeat_step(services: Services) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that refreshes a TTL key, so health checks need no broadcast ping, and
    runs the reaper, so a dead worker's jobs are ended or retried by the living ones."""

    class Heartbeat(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker, **kwargs) -> None:
            super().__init__(worker, **kwargs)
            self.name_ = worker.hostname or socket.gethostname()
            self.timer_entry = None
            self.reaper_entry = None

        def _beat(self) -> None:
            try:
                services.workers.beat(self.name_)
            except Exception as exc:  # a Redis blip must not kill the worker
                log.warning("worker.heartbeat_failed", error=type(exc).__name__)

        def _sweep(self) -> None:
            try:
                services.reaper.sweep()
            except Exception as exc:  # Redis away: the next sweep tries again
                log.warning("reaper.sweep_failed", error=type(exc).__name__)

        def start(self, worker) -> None:
            self._beat()
            self.timer_entry = worker.timer.call_repeatedly(services.settings.worker_heartbeat_seconds, self._beat)
            self.reaper_entry = worker.timer.call_repeatedly(services.reaper.interval_seconds, self._sweep)
            log.info("worker.started", worker=self.name_)

        def stop(self, worker) -> None:
            for entry in (self.timer_entry, self.reaper_entry):
                if entry is not None:
                    entry.cancel()
            try:
                services.workers.forget(self.name_)
            except Exception:
                pass

    return Heartbeat
