"""Submitting, reading, waiting for and cancelling jobs (the API side of the flow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.core.errors import (
    BrokerUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    JobFinished,
    ValidationFailed,
)
from shared.core.logs import get_logger
from shared.domain.jobs import Callback, Job, JobFilter, JobKind, JobStatus, Page
from shared.domain.ports import IdempotencyStore, JobRepository, TargetLease
from shared.domain.tasks import BACKUP_TASK, RESTORE_TASK
from shared.engines import engine_class
from shared.services.callbacks import CallbackRequest
from shared.services.catalog import BackupCatalog
from shared.services.recovery import JobRecovery
from shared.services.targets import TargetService

log = get_logger(__name__)


class JobService:
    def __init__(
        self,
        jobs: JobRepository,
        targets: TargetService,
        catalog: BackupCatalog,
        idempotency: IdempotencyStore,
        lease: TargetLease,
        recovery: JobRecovery,
    ) -> None:
        self._lease = lease
        self._recovery = recovery
        self._jobs = jobs
        self._targets = targets
        self._catalog = catalog
        self._idempotency = idempotency

    # ------------------------------------------------------------------ submitting

    def submit_backup(
        self,
        target_name: str,
        options: dict[str, Any] | None = None,
        schedule_id: str | None = None,
        callback: CallbackRequest | None = None,
    ) -> Job:
        target = self._targets.get(target_name)
        params: dict[str, Any] = {"options": self._targets.backup_options(target, options)}
        if schedule_id:
            params["schedule_id"] = schedule_id
        job = Job(kind=JobKind.BACKUP, target=target.name, engine=target.engine, params=params)
        return self._submit(job, BACKUP_TASK, callback)

    def submit_restore(
        self,
        backup_id: str,
        target_name: str | None = None,
        database: str | None = None,
        drop: bool = False,
        options: dict[str, Any] | None = None,
        callback: CallbackRequest | None = None,
        allow_system_database: bool = False,
    ) -> Job:
        manifest = self._catalog.get(backup_id)
        target = self._targets.get(target_name or manifest.target)
        if target.engine != manifest.engine:
            raise ValidationFailed(
                f"Backup {backup_id} was made by the {manifest.engine} engine; target {target.name!r} uses "
                f"{target.engine}. Choose a {manifest.engine} target.",
                errors=[{"pointer": "/target", "detail": f"must be a {manifest.engine} target"}],
            )
        engine = engine_class(target.engine)
        engine.check_restore_destination(target, manifest, database, allow_system_database)
        options = engine.validate_options("restore", options or {})
        params = {"backup_id": manifest.id, "database": database, "drop": drop, "options": options}
        job = Job(kind=JobKind.RESTORE, target=target.name, engine=target.engine, params=params)
        return self._submit(job, RESTORE_TASK, callback)

    def idempotent(self, key: str | None, fingerprint: str, submit: Callable[[], Job]) -> tuple[Job, bool]:
        """Run ``submit`` once per ``Idempotency-Key``; (job, replayed)."""
        if key is None:
            return submit(), False
        existing = self._idempotency.reserve(key, fingerprint)
        if existing is not None:
            seen_fingerprint, job_id = existing
            if seen_fingerprint != fingerprint:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was used for a different request; use a new key for a new request."
                )
            if job_id is None:
                raise IdempotencyKeyInUse("A request with this Idempotency-Key is still being processed; retry shortly.")
            return self._jobs.get(job_id), True
        try:
            job = submit()
        except BaseException:
            self._idempotency.release(key)  # a failed request may be retried with the same key
            raise
        self._idempotency.complete(key, fingerprint, job.id)
        return job, False

    def _submit(self, job: Job, task_name: str, callback: CallbackRequest | None) -> Job:
        if callback is not None:
            job.callback = Callback(url=callback.shown_url)
        try:
            # The record, the callback's secrets and the task's message in one step, the record
            # first: a fast worker must find it.
            self._jobs.add(
                job,
                task_name,
                callback_url=callback and callback.url,
                callback_headers=callback and callback.headers,
            )
        except BrokerUnavailable as exc:
            # Redis went away during the write, which may have happened all the same: a job
            # this answer calls failed must not run (a job never written stays unwritten).
            job.fail(exc.code, exc.message)
            try:
                self._jobs.save_if(job, JobStatus.QUEUED)
            except BrokerUnavailable:
                pass
            raise
        # DEBUG: at INFO this second line per submit cost ~7 % of an API worker's CPU; the API's
        # request line and the worker's schedule.fired line name the job instead.
        log.debug("job.queued", job_id=job.id, kind=job.kind.value, target=job.target, engine=job.engine)
        return job

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> Job:
        return self._jobs.get(job_id)

    def wait(self, job_id: str, seconds: float) -> Job:
        """The job, held until its status changes or ``seconds`` pass (long-poll)."""
        job = self._jobs.get(job_id)
        if seconds <= 0 or job.status.is_terminal:
            return job
        return self._jobs.wait_for_change(job_id, job.status.value, seconds)

    def find(self, filters: JobFilter, limit: int, cursor: str | None) -> Page:
        return self._jobs.find(filters, limit, cursor)

    # ------------------------------------------------------------------ cancelling

    def cancel(self, job_id: str) -> Job:
        """A queued (or waiting) job never starts; a running one is stopped by its worker at the
        next progress report (dump tool killed, partial archive removed); a job whose worker
        is gone is ended here and now."""
        job = self._jobs.get(job_id)
        if job.status.is_terminal:
            raise JobFinished(f"Job {job_id} already finished ({job.status.value}); there is nothing to cancel.")
        self._jobs.request_cancel(job_id)
        job.cancel_requested = True
        if job.status is JobStatus.QUEUED or self._lease.holder(job.target) != job.id:
            if not self._recovery.cancel_orphan(job):
                return self.cancel(job_id)  # it started or ended meanwhile: answer for its new state
        log.info("job.cancel_requested", job_id=job_id, status=job.status.value)
        return job
