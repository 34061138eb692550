"""What becomes of a job whose attempt died (worker killed, lease lapsed).

Written once, for the three places that find such a job: a worker that receives the task again
(Celery redelivers when a pool process dies), the reaper (a worker's main process died and
nothing redelivers for hours), and a cancel of an orphaned job.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from shared.core.errors import BackupNotFound, BrokerUnavailable, FlexDBError, TargetBusy
from shared.core.logs import get_logger
from shared.core.settings import Settings
from shared.domain.jobs import Job, JobKind, JobStatus, utcnow
from shared.domain.ports import JobRepository, LeaseOwner, Storage, TargetLease, TaskQueue
from shared.domain.tasks import task_for

log = get_logger(__name__)
HOST = socket.gethostname()
WORKER_LOST = "worker_lost"


def dead_here(owner: LeaseOwner) -> bool:
    """True when ``owner`` ran on this host in a process that no longer exists (or is a zombie).
    Elsewhere nothing can be proven: its lease must lapse."""
    if owner.host != HOST:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child stays a zombie until its parent reaps it
        return Path(f"/proc/{owner.pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


class JobRecovery:
    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        storage: Storage,
        lease: TargetLease,
        queue: TaskQueue,
        notify: Callable[[Job], None],
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._storage = storage
        self._lease = lease
        self._queue = queue
        self._notify = notify

    def attempt_lost(self, job: Job, why: str) -> bool:
        """The attempt running ``job`` is gone: remove what it left, then end the job or put it
        back in the queue. True when the job is queued again (the caller sends it to a worker)."""
        expected = job.status
        if job.work_backup_id and self._adopt_complete_backup(job):
            return self._end(job, expected)
        self._remove_partial(job)
        if job.cancel_requested:
            job.cancel()
        elif job.kind is JobKind.BACKUP and job.attempts < self._settings.job_max_attempts:
            job.requeue(f"retrying: {why}")
            if not self._jobs.save_if(job, expected):
                return False
            self._lease.forget(job.target, job.id)  # the dead attempt's lease, if it has not lapsed
            log.warning("job.retrying", job_id=job.id, attempts=job.attempts, reason=why)
            return True
        elif job.kind is JobKind.BACKUP:
            job.fail(WORKER_LOST, f"The backup was tried {job.attempts} times and each time {why}. Check the worker logs.")
        else:
            # A restore is never replayed behind the user's back: the target may have changed since.
            job.fail(
                WORKER_LOST,
                f"The restore stopped: {why}. It was not run again on its own; check the target database "
                "and submit the restore again if you still want it.",
            )
        return self._end(job, expected)

    def cancel_orphan(self, job: Job) -> bool:
        """Cancel a job whose worker is gone; False when the job changed meanwhile."""
        expected = job.status
        self._remove_partial(job)
        job.cancel()
        return self._end(job, expected)

    def end_wait(self, job: Job, ahead: str | None) -> bool:
        """Fail a job that waited in line longer than FLEXDB_LOCK_WAIT_SECONDS."""
        waited = int((utcnow() - job.created_at).total_seconds())
        job.fail(
            TargetBusy.code,
            f"Target {job.target!r} stayed busy{f' (job {ahead} ahead)' if ahead else ''} for {waited} s, longer "
            "than FLEXDB_LOCK_WAIT_SECONDS; submit again later.",
        )
        return self._end(job, JobStatus.QUEUED)

    def waited_too_long(self, job: Job) -> bool:
        return (utcnow() - job.created_at).total_seconds() >= self._settings.lock_wait_seconds

    def send(self, job: Job) -> None:
        """Hand the job to a worker (again)."""
        self._queue.enqueue(task_for(job.kind), job.id)

    def _adopt_complete_backup(self, job: Job) -> bool:
        """The dead attempt wrote its manifest before it could record success: keep that backup."""
        try:
            manifest = self._storage.read_manifest(job.work_backup_id)  # type: ignore[arg-type]
        except (BackupNotFound, FlexDBError):
            return False
        job.backup_id = manifest.id
        job.succeed({"size_bytes": manifest.size_bytes, "sha256": manifest.sha256, "backup_duration_s": manifest.duration_seconds})
        return True

    def _remove_partial(self, job: Job) -> None:
        if job.kind is not JobKind.BACKUP or not job.work_backup_id:
            return
        try:
            self._storage.read_manifest(job.work_backup_id)
            return  # complete: never remove a listed backup
        except BackupNotFound:
            pass
        except FlexDBError:
            return
        self._storage.delete(job.work_backup_id)
        log.info("job.partial_removed", job_id=job.id, backup_id=job.work_backup_id)

    def _end(self, job: Job, expected: JobStatus) -> bool:
        if not self._jobs.save_if(job, expected):
            return False
        try:
            self._lease.forget(job.target, job.id)
        except BrokerUnavailable:
            pass  # the reaper forgets it on its next pass
        log.warning("job.recovered", job_id=job.id, status=job.status.value, error=job.error.code if job.error else None)
        self._notify(job)
        return True
