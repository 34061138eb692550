"""Running a job inside a worker: lock the target, run the engine workflow, record the outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from shared.core.errors import FlexDBError, JobCancelled
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Settings
from shared.domain.backups import new_backup_id
from shared.domain.engine import RestoreRequest
from shared.domain.jobs import Job, JobKind, Progress, utcnow
from shared.domain.ports import JobRepository, Storage, TargetLock
from shared.domain.progress import ProgressTracker
from shared.engines import engine_for
from shared.services.retention import RetentionService
from shared.services.targets import TargetService

log = get_logger(__name__)
Handler = Callable[[Job, ProgressTracker], dict[str, Any]]


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        storage: Storage,
        lock: TargetLock,
        targets: TargetService,
        retention: RetentionService,
        notify: Callable[[Job], None],
        timeout_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._storage = storage
        self._lock = lock
        self._targets = targets
        self._retention = retention
        self._notify = notify
        self._timeout_errors = timeout_errors
        self._handlers: dict[JobKind, Handler] = {
            JobKind.BACKUP: self._backup,
            JobKind.RESTORE: self._restore,
        }

    def run(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job.status.is_terminal:
            log.info("job.skipped", job_id=job_id, status=job.status.value, reason="already finished")
            return
        structlog.contextvars.bind_contextvars(target=job.target, engine=job.engine, kind=job.kind.value)
        if job.cancel_requested:
            self._finish_cancelled(job)
            return
        tracker = ProgressTracker(
            _ProgressLog(lambda progress: self._jobs.save_progress(job.id, progress)),
            self._settings.progress_interval_seconds,
            should_stop=lambda: self._jobs.cancel_requested(job.id),
        )
        try:
            with self._lock.hold(job.target, job.id):
                job.start()
                self._jobs.save(job)
                log.info("job.started")
                with tracker.watching():
                    try:
                        result = self._handlers[job.kind](job, tracker)
                    except FlexDBError:
                        # A dump tool killed on cancel fails in its own way; report the cancel.
                        tracker.raise_if_cancelled()
                        raise
                job.progress = tracker.progress
                job.succeed(result)
                self._finish(job)
                log.info("job.succeeded", duration_s=job.duration_seconds, **result)
                if job.kind is JobKind.BACKUP:
                    self._apply_retention(job)
        except JobCancelled:
            job.progress = tracker.progress
            self._finish_cancelled(job)
        except FlexDBError as exc:
            self._finish_failed(job, exc.code, exc.message)
        except self._timeout_errors:
            self._finish_failed(
                job,
                "job_timed_out",
                f"The job ran past FLEXDB_TASK_SOFT_TIME_LIMIT ({self._settings.task_soft_time_limit} s) and was stopped.",
            )
        except Exception:
            log.exception("job.crashed")
            self._finish_failed(job, "internal_error", "The job failed unexpectedly; the worker log has the details.")

    def _apply_retention(self, job: Job) -> None:
        """After a good backup, never before: a failing target keeps what it has."""
        try:
            self._retention.apply(job.target, trigger=f"after backup job {job.id}")
        except FlexDBError as exc:
            log.warning("retention.failed", error_code=exc.code, error=exc.message)

    def _finish(self, job: Job) -> None:
        self._jobs.save(job)
        self._notify(job)

    def _finish_cancelled(self, job: Job) -> None:
        job.cancel()
        self._finish(job)
        log.info("job.cancelled", duration_s=job.duration_seconds)

    def _finish_failed(self, job: Job, code: str, message: str) -> None:
        job.fail(code, redact(message))
        self._finish(job)
        log.warning("job.failed", error_code=code, error=job.error.message, duration_s=job.duration_seconds)

    def _backup(self, job: Job, tracker: ProgressTracker) -> dict[str, Any]:
        target = self._targets.get(job.target)
        engine = engine_for(target.engine, self._settings)
        manifest = engine.backup(
            target, self._storage, new_backup_id(utcnow()), job.id, tracker, options=job.params.get("options")
        )
        job.backup_id = manifest.id
        return {"size_bytes": manifest.size_bytes, "sha256": manifest.sha256, "backup_duration_s": manifest.duration_seconds}

    def _restore(self, job: Job, tracker: ProgressTracker) -> dict[str, Any]:
        target = self._targets.get(job.target)
        engine = engine_for(target.engine, self._settings)
        manifest = self._storage.read_manifest(job.params["backup_id"])
        job.backup_id = manifest.id
        request = RestoreRequest(
            database=job.params.get("database"), drop=bool(job.params.get("drop")), options=job.params.get("options") or {}
        )
        details = engine.restore(target, self._storage, manifest, request, tracker)
        return {"size_bytes": manifest.size_bytes, **details}


class _ProgressLog:
    """Saves every progress report and logs the milestones: each new stage, and each quarter
    of the work when the total is known."""

    def __init__(self, save: Callable[[Progress], None]) -> None:
        self._save = save
        self._stage: str | None = None
        self._quarter = 0

    def __call__(self, progress: Progress) -> None:
        self._save(progress)
        quarter = int((progress.percent or 0) // 25)
        if progress.stage != self._stage:
            self._stage, self._quarter = progress.stage, quarter
            log.info("job.stage", stage=progress.stage, items_total=progress.items_total, bytes_total=progress.bytes_total)
        elif quarter > self._quarter:
            self._quarter = quarter
            log.info(
                "job.progress",
                stage=progress.stage,
                percent=progress.percent,
                bytes_done=progress.bytes_done,
                items_done=progress.items_done,
            )
