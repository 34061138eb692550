"""Running a job inside a worker: take the target's lease (or wait in line for it), run the
engine workflow, record the outcome, hand the target to the next job in line."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from shared.core.errors import BrokerUnavailable, FlexDBError, JobCancelled
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Settings
from shared.domain.backups import new_backup_id
from shared.domain.engine import RestoreRequest
from shared.domain.jobs import Job, JobKind, JobStatus, Progress, utcnow
from shared.domain.ports import JobRepository, LeaseOwner, Storage, TargetLease, TaskQueue
from shared.domain.tasks import MIRROR_TASK
from shared.domain.progress import HandedBack, JobInterrupted, LeaseLost, ProgressTracker
from shared.engines import engine_for
from shared.services.recovery import HOST, JobRecovery, dead_here
from shared.services.retention import RetentionService
from shared.services.targets import TargetService

log = get_logger(__name__)
Handler = Callable[[Job, ProgressTracker], dict[str, Any]]
WAITING_STAGE = "waiting for target"
HANDED_BACK_STAGE = "handed back at worker shutdown"


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        storage: Storage,
        lease: TargetLease,
        targets: TargetService,
        retention: RetentionService,
        recovery: JobRecovery,
        notify: Callable[[Job], None],
        queue: TaskQueue,
        timeout_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._queue = queue
        self._settings = settings
        self._jobs = jobs
        self._storage = storage
        self._lease = lease
        self._targets = targets
        self._retention = retention
        self._recovery = recovery
        self._notify = notify
        self._timeout_errors = timeout_errors
        self._handlers: dict[JobKind, Handler] = {
            JobKind.BACKUP: self._backup,
            JobKind.RESTORE: self._restore,
        }

    def run(self, job_id: str) -> Job:
        """One delivery of the job's task; returns the job as this delivery left it."""
        job = self._jobs.get(job_id)
        if job.status.is_terminal:
            log.info("job.skipped", job_id=job_id, status=job.status.value, reason="already finished")
            return job
        structlog.contextvars.bind_contextvars(target=job.target, engine=job.engine, kind=job.kind.value)
        previous = None
        if job.status is JobStatus.RUNNING:
            holder = self._lease.owner(job.target)
            if holder and holder.job_id == job.id and not dead_here(holder):
                log.info("job.skipped", job_id=job_id, reason="another attempt is running it")
                return job
            # The attempt that started it is gone (Celery redelivers when a pool process dies).
            if not self._recovery.attempt_lost(job, "the worker process running it stopped"):
                return self._jobs.get(job_id)
            previous = holder if holder and holder.job_id == job.id else None
        if job.cancel_requested:
            self._end_before_start(job, job.cancel)
            return job
        owner = LeaseOwner(job.id, HOST, os.getpid(), uuid.uuid4().hex[:8])
        ahead = self._lease.acquire(job.target, owner, job.created_at.timestamp(), replacing=previous)
        if ahead == job.id:
            log.info("job.skipped", job_id=job_id, reason="another attempt is running it")
            return job
        if ahead:
            return self._wait_in_line(job, ahead)
        try:
            handed_back = self._run_leased(job, owner)
        finally:
            self._release(job, owner)
        if handed_back:  # only now: a worker that took it before the release would skip it
            self._recovery.send(job)
        return job

    def _wait_in_line(self, job: Job, ahead: str) -> Job:
        """The target is taken: give the worker slot back; the lease's release wakes this job."""
        if self._recovery.waited_too_long(job):
            self._recovery.end_wait(job, ahead)
            return job
        job.progress = Progress(stage=WAITING_STAGE, current=f"behind job {ahead}")
        self._jobs.save_progress(job.id, job.progress)
        log.info("job.waiting", job_id=job.id, ahead=ahead)
        return job

    def _end_before_start(self, job: Job, end: Callable[[], None]) -> None:
        expected = job.status
        end()
        if self._jobs.save_if(job, expected):
            self._lease.forget(job.target, job.id)
            self._notify(job)
            log.info("job.ended_before_start", status=job.status.value)

    def _run_leased(self, job: Job, owner: LeaseOwner) -> bool:
        """Run the job while holding its target; True when it was handed back to the queue."""
        queued = job.status
        job.start()
        if job.kind is JobKind.BACKUP:
            job.work_backup_id = new_backup_id(utcnow())
        if not self._jobs.save_if(job, queued):  # cancelled between the read and now
            log.info("job.skipped", job_id=job.id, reason="changed before it started")
            return False
        log.info("job.started", attempt=job.attempts)
        tracker = ProgressTracker(
            _ProgressLog(lambda progress: self._jobs.save_progress(job.id, progress)),
            self._settings.progress_interval_seconds,
            should_stop=_StopCheck(self._jobs, self._lease, job, owner, self._settings.lease_seconds / 3),
        )
        try:
            with tracker.watching():
                try:
                    result = self._handlers[job.kind](job, tracker)
                except FlexDBError:
                    # A dump tool killed on a stop fails in its own way; report why it was stopped.
                    tracker.raise_if_cancelled()
                    raise
                job.progress = tracker.progress
                job.succeed(result)
                self._record(job)
                log.info("job.succeeded", duration_s=job.duration_seconds, **result)
                if job.kind is JobKind.BACKUP:
                    self._send_to_mirror(job)
                    self._apply_retention(job)
        except JobCancelled:
            job.progress = tracker.progress
            job.cancel()
            self._record(job)
            log.info("job.cancelled", duration_s=job.duration_seconds)
        except HandedBack:
            job.requeue(HANDED_BACK_STAGE)
            self._record(job, notify=False)
            log.info("job.handed_back")
            return True
        except LeaseLost:
            log.warning("job.lease_lost", reason="another attempt owns the target now; this one stopped")
        except FlexDBError as exc:
            self._record_failure(job, exc.code, exc.message)
        except self._timeout_errors:
            self._record_failure(
                job,
                "job_timed_out",
                f"The job ran past FLEXDB_TASK_SOFT_TIME_LIMIT ({self._settings.task_soft_time_limit} s) and was stopped.",
            )
        except JobInterrupted:
            raise
        except Exception:
            log.exception("job.crashed")
            self._record_failure(job, "internal_error", "The job failed unexpectedly; the worker log has the details.")
        return False

    def _release(self, job: Job, owner: LeaseOwner) -> None:
        """Give the target up and wake the next job in line (the reaper does both if this fails)."""
        try:
            following = self._lease.release(job.target, owner)
            if following:
                self._lease.mark_woken(following)
                self._recovery.send(self._jobs.get(following))
        except FlexDBError as exc:
            log.warning("lease.release_failed", error_code=exc.code, error=exc.message)

    def _record(self, job: Job, notify: bool = True) -> None:
        """Save the outcome, riding out a Redis outage of up to FLEXDB_REDIS_RETRY_SECONDS."""
        deadline = time.monotonic() + self._settings.redis_retry_seconds
        while True:
            try:
                self._jobs.save(job)
                break
            except BrokerUnavailable:
                if time.monotonic() >= deadline:
                    raise
                log.warning("job.record_retrying", status=job.status.value, reason="Redis does not answer")
                time.sleep(1.0)
        if notify:
            self._notify(job)

    def _record_failure(self, job: Job, code: str, message: str) -> None:
        job.fail(code, redact(message))
        self._record(job)
        log.warning("job.failed", error_code=code, error=job.error.message, duration_s=job.duration_seconds)

    def _send_to_mirror(self, job: Job) -> None:
        """A follow-up task copies the new backup to the mirror, if there is one."""
        if job.backup_id and self._storage.mirror is not None:
            try:
                self._queue.enqueue(MIRROR_TASK, job.backup_id)
            except FlexDBError as exc:
                log.warning("mirror.not_queued", backup_id=job.backup_id, error=exc.message)

    def _apply_retention(self, job: Job) -> None:
        """After a good backup, never before: a failing target keeps what it has."""
        try:
            self._retention.apply(job.target, trigger=f"after backup job {job.id}")
        except FlexDBError as exc:
            log.warning("retention.failed", error_code=exc.code, error=exc.message)

    def _backup(self, job: Job, tracker: ProgressTracker) -> dict[str, Any]:
        target = self._targets.get(job.target)
        engine = engine_for(target.engine, self._settings)
        manifest = engine.backup(
            target,
            self._storage,
            job.work_backup_id or new_backup_id(utcnow()),
            job.id,
            tracker,
            options=job.params.get("options"),
            schedule_id=job.params.get("schedule_id"),
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
        try:
            self._save(progress)
        except BrokerUnavailable:  # progress is best effort: the job goes on through a Redis outage
            log.warning("job.progress_not_saved", reason="Redis does not answer")
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


class _StopCheck:
    """Asked by the tracker's watcher every interval: renews the lease when due, and says why
    the job must stop (cancelled, handed back at shutdown, lease lost) or None."""

    def __init__(self, jobs: JobRepository, lease: TargetLease, job: Job, owner: LeaseOwner, renew_every: float) -> None:
        self._jobs = jobs
        self._lease = lease
        self._job = job
        self._owner = owner
        self._renew_every = renew_every
        self._renewed = time.monotonic()

    def __call__(self) -> Exception | None:
        if time.monotonic() - self._renewed >= self._renew_every:
            try:
                if not self._lease.renew(self._job.target, self._owner):
                    return LeaseLost(f"the lease on {self._job.target!r} went to another job")
                self._renewed = time.monotonic()
            except BrokerUnavailable:
                pass  # Redis is away: keep working, renew when it is back
        if self._jobs.cancel_requested(self._job.id):
            return JobCancelled("The job was cancelled on request.")
        if self._jobs.handback_requested(self._job.id):
            return HandedBack()
        return None
