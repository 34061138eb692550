"""Submitting and reading jobs (the API side of the flow)."""

from __future__ import annotations

from typing import Any

from shared.core.errors import BrokerUnavailable, ValidationFailed
from shared.core.logs import get_logger
from shared.domain.jobs import Job, JobFilter, JobKind, Page
from shared.domain.ports import JobRepository, TaskQueue
from shared.engines import engine_class
from shared.services.catalog import BackupCatalog
from shared.services.targets import TargetService
from shared.domain.tasks import BACKUP_TASK, RESTORE_TASK

log = get_logger(__name__)


class JobService:
    def __init__(self, jobs: JobRepository, queue: TaskQueue, targets: TargetService, catalog: BackupCatalog) -> None:
        self._jobs = jobs
        self._queue = queue
        self._targets = targets
        self._catalog = catalog

    def submit_backup(
        self, target_name: str, options: dict[str, Any] | None = None, schedule_id: str | None = None
    ) -> Job:
        target = self._targets.get(target_name)
        params: dict[str, Any] = {"options": engine_class(target.engine).validate_options("backup", options or {})}
        if schedule_id:
            params["schedule_id"] = schedule_id
        job = Job(kind=JobKind.BACKUP, target=target.name, engine=target.engine, params=params)
        return self._submit(job, BACKUP_TASK)

    def submit_restore(
        self,
        backup_id: str,
        target_name: str | None = None,
        database: str | None = None,
        drop: bool = False,
        options: dict[str, Any] | None = None,
    ) -> Job:
        manifest = self._catalog.get(backup_id)
        target = self._targets.get(target_name or manifest.target)
        if target.engine != manifest.engine:
            raise ValidationFailed(
                f"Backup {backup_id} was made by the {manifest.engine} engine; target {target.name!r} uses "
                f"{target.engine}. Choose a {manifest.engine} target.",
                errors=[{"pointer": "/target", "detail": f"must be a {manifest.engine} target"}],
            )
        options = engine_class(target.engine).validate_options("restore", options or {})
        params = {"backup_id": manifest.id, "database": database, "drop": drop, "options": options}
        job = Job(kind=JobKind.RESTORE, target=target.name, engine=target.engine, params=params)
        return self._submit(job, RESTORE_TASK)

    def _submit(self, job: Job, task_name: str) -> Job:
        # The record is written before the message: a fast worker must find it.
        self._jobs.add(job)
        try:
            self._queue.enqueue(task_name, job.id)
        except BrokerUnavailable as exc:
            job.fail(exc.code, exc.message)
            try:
                self._jobs.save(job)
            except BrokerUnavailable:
                pass
            raise
        log.info("job.queued", job_id=job.id, kind=job.kind.value, target=job.target, engine=job.engine)
        return job

    def get(self, job_id: str) -> Job:
        return self._jobs.get(job_id)

    def find(self, filters: JobFilter, limit: int, cursor: str | None) -> Page:
        return self._jobs.find(filters, limit, cursor)
