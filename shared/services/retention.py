"""Retention: plan and apply the policies of a target; every application is a `retention` job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.core.errors import BackupNotFound, ConfigurationError, ValidationFailed
from shared.core.logs import get_logger
from shared.domain.backups import BackupManifest
from shared.domain.jobs import Job, JobKind, parse_iso, utcnow
from shared.domain.ports import JobRepository, ScheduleRepository, Storage
from shared.domain.retention import BackupRef, RetentionDecision, RetentionPolicy, ScopedPolicy, plan_retention
from shared.services.targets import TargetService

log = get_logger(__name__)


class RetentionService:
    def __init__(
        self,
        storage: Storage,
        jobs: JobRepository,
        schedules: ScheduleRepository,
        targets: TargetService,
        incomplete_after_seconds: float,
    ) -> None:
        self._incomplete_after = incomplete_after_seconds
        self._storage = storage
        self._jobs = jobs
        self._schedules = schedules
        self._targets = targets

    def check_settings(self) -> None:
        """Refuse to start with a target whose declared retention policy is invalid."""
        for target in self._targets.all():
            if target.retention is not None:
                try:
                    RetentionPolicy.from_dict(target.retention)
                except ValidationFailed as exc:
                    raise ConfigurationError(f"FLEXDB_TARGETS[{target.name!r}].retention: {exc.message}") from None

    def policies_for(self, target_name: str) -> list[ScopedPolicy]:
        """The target's own policy (governing all its backups) when it declares one, else those
        of its schedules (each governing the backups its schedule made)."""
        target = self._targets.get(target_name)
        if target.retention is not None:
            return [ScopedPolicy(RetentionPolicy.from_dict(target.retention))]
        return [
            ScopedPolicy(s.retention, schedule_id=s.id)
            for s in self._schedules.all()
            if s.target == target_name and s.retention is not None
        ]

    def plan(self, target_name: str, now: datetime | None = None) -> tuple[list[ScopedPolicy], list[RetentionDecision]]:
        policies = self.policies_for(target_name)
        backups = [self._ref(m) for m in self._storage.iter_manifests() if m.target == target_name]
        return policies, plan_retention(backups, policies, now or utcnow())

    def apply(self, target_name: str, trigger: str) -> Job | None:
        """Delete what the policies do not keep; None when the target has no policy."""
        policies, decisions = self.plan(target_name)
        if not policies:
            return None
        target = self._targets.get(target_name)
        job = Job(kind=JobKind.RETENTION, target=target.name, engine=target.engine, params={"trigger": trigger})
        job.start()
        deleted: list[dict[str, Any]] = []
        for decision in decisions:
            if not decision.keep and not self._pinned_since(decision.backup.id):
                self._storage.delete(decision.backup.id)
                deleted.append(decision.to_dict())
        job.succeed(
            {
                "deleted": deleted,
                "kept": sum(d.keep for d in decisions),
                "policies": [p.to_dict() for p in policies],
            }
        )
        self._jobs.add(job)
        log.info("retention.applied", target=target.name, deleted=len(deleted), kept=job.result["kept"], trigger=trigger)
        return job

    def apply_all(self, trigger: str) -> list[Job]:
        """Every target's policy, then the leftovers of attempts whose worker died mid-dump
        (a folder without manifest, written by no one for longer than any task may run)."""
        jobs = [job for target in self._targets.all() if (job := self.apply(target.name, trigger))]
        removed = self._storage.remove_incomplete(self._incomplete_after)
        if removed:
            log.info("retention.incomplete_removed", backup_ids=removed)
        return jobs

    def _pinned_since(self, backup_id: str) -> bool:
        """A pin that arrived after the plan was made still wins."""
        try:
            return self._storage.read_manifest(backup_id).pinned
        except BackupNotFound:
            return True  # already gone (or refused): nothing to delete

    @staticmethod
    def _ref(manifest: BackupManifest) -> BackupRef:
        return BackupRef(
            manifest.id,
            parse_iso(manifest.created_at) or utcnow(),
            schedule_id=manifest.schedule_id,
            partial=manifest.partial,
            pinned=manifest.pinned,
        )
