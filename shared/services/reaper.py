"""The reaper: no job stays `running` after its worker died, and no line waits for nobody.

Every worker runs a sweep every quarter lease (one at a time, across workers). A job that holds
no lease for half a lease on two sightings has lost its worker: a renewing worker would have
taken its lease back by then, even after a Redis outage. So a job is ended or queued again
within two leases of its worker's death.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.core.errors import BrokerUnavailable, JobNotFound
from shared.core.logs import get_logger
from shared.core.settings import Settings
from shared.domain.jobs import Job, JobStatus
from shared.domain.ports import JobRepository, TargetLease
from shared.services.recovery import JobRecovery
from shared.services.targets import TargetService

log = get_logger(__name__)


@dataclass
class SweepReport:
    reaped: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    expired_waits: list[str] = field(default_factory=list)


class Reaper:
    def __init__(
        self, settings: Settings, jobs: JobRepository, lease: TargetLease, targets: TargetService, recovery: JobRecovery
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._lease = lease
        self._targets = targets
        self._recovery = recovery
        self._redis_lost_at = float("-inf")

    @property
    def interval_seconds(self) -> float:
        return self._settings.lease_seconds / 4

    def sweep(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        report = SweepReport()
        try:
            if self._lease.claim_sweep(self.interval_seconds * 0.9):
                self._sweep(now, report)
        except BrokerUnavailable:
            self._redis_lost_at = now
            raise
        if report.reaped or report.woken or report.expired_waits:
            log.info("reaper.swept", **report.__dict__)
        return report

    def _sweep(self, now: float, report: SweepReport) -> None:
        # After a Redis outage, running jobs get a lease's time to renew before they are judged.
        if now - self._redis_lost_at >= self._settings.lease_seconds:
            self._reap_dead(now, report)
        for target in self._targets.all():
            self._serve_line(target.name, now, report)

    def _reap_dead(self, now: float, report: SweepReport) -> None:
        notes = self._lease.unleased_notes()
        for job_id, target in self._lease.leased_jobs().items():
            holder = self._lease.holder(target)
            if holder == job_id:
                if job_id in notes:
                    self._lease.clear_unleased(job_id)
                continue
            first_seen = notes.get(job_id)
            if first_seen is None:
                self._lease.note_unleased(job_id, now)
                continue
            if now - first_seen < self._settings.lease_seconds / 2:
                continue
            job = self._job(job_id, target)
            if job is None or job.status is not JobStatus.RUNNING:
                self._lease.forget(target, job_id)
                continue
            if self._recovery.attempt_lost(job, "its worker stopped renewing the target's lease (killed or lost)"):
                self._recovery.send(job)
            report.reaped.append(job_id)

    def _serve_line(self, target: str, now: float, report: SweepReport) -> None:
        line = self._lease.line(target)
        if not line:
            return
        head: tuple[Job, float] | None = None
        for job_id, woken_at in line:
            job = self._job(job_id, target)
            if job is None or job.status is not JobStatus.QUEUED:
                self._lease.forget(target, job_id)
            elif self._recovery.waited_too_long(job):
                if self._recovery.end_wait(job, self._lease.holder(target)):
                    report.expired_waits.append(job_id)
            elif head is None:
                head = (job, woken_at)
        if head is None or self._lease.holder(target) is not None:
            return
        job, woken_at = head
        # Woken by a release that went astray (its worker died between release and send).
        if now - woken_at >= self._settings.lease_seconds:
            self._lease.mark_woken(job.id)
            self._recovery.send(job)
            report.woken.append(job.id)

    def _job(self, job_id: str, target: str) -> Job | None:
        try:
            return self._jobs.get(job_id)
        except JobNotFound:
            self._lease.forget(target, job_id)
            return None
