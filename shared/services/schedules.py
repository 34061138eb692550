"""Schedules: create, change and fire automatic backups.

Records live in the schedule repository; the trigger (RedBeat) makes beat fire
``flexdb.scheduled_backup(<schedule id>)``, which lands in :meth:`ScheduleService.fire`.
"""

from __future__ import annotations

from typing import Any

from shared.core.errors import (
    ConfigurationError,
    FlexDBError,
    ScheduleManagedBySettings,
    ScheduleNotFound,
    TargetBusy,
    TargetNotFound,
    ValidationFailed,
)
from shared.core.logs import get_logger
from shared.core.settings import NAME_PATTERN, Settings
from shared.domain.jobs import Job, iso_utc
from shared.domain.ports import JobRepository, ScheduleRepository, ScheduleTrigger, TargetLease
from shared.domain.retention import RetentionPolicy
from shared.domain.schedules import MAX_INTERVAL_SECONDS, Schedule
from shared.services.jobs import JobService
from shared.services.targets import TargetService

log = get_logger(__name__)
_FIELDS = {"target", "cron", "interval_seconds", "timezone", "enabled", "options", "retention"}


class ScheduleService:
    def __init__(
        self,
        settings: Settings,
        schedules: ScheduleRepository,
        trigger: ScheduleTrigger,
        targets: TargetService,
        jobs: JobService,
        job_records: JobRepository,
        lock: TargetLease,
    ) -> None:
        self._settings = settings
        self._schedules = schedules
        self._trigger = trigger
        self._targets = targets
        self._jobs = jobs
        self._job_records = job_records
        self._lock = lock

    # ------------------------------------------------------------------ reading

    def get(self, schedule_id: str) -> Schedule:
        if not NAME_PATTERN.match(schedule_id):
            raise ScheduleNotFound(f"No schedule with id {schedule_id!r}.")
        return self._schedules.get(schedule_id)

    def all(self, target: str | None = None) -> list[Schedule]:
        return [s for s in self._schedules.all() if target is None or s.target == target]

    def describe(self, schedule: Schedule) -> dict[str, Any]:
        """The schedule as clients see it: next run from the scheduler, last status kept current."""
        data = schedule.to_dict()
        data["next_run_at"] = None
        if schedule.enabled:
            data["next_run_at"] = iso_utc(self._trigger.next_run_at(schedule))
        if schedule.last_status in {"queued", "running"} and schedule.last_job_id:
            try:
                data["last_status"] = self._job_records.get(schedule.last_job_id).status.value
            except FlexDBError:
                pass  # the job record expired; keep what was recorded
        return data

    # ------------------------------------------------------------------ changing

    def create(self, fields: dict[str, Any], source: str = "api", schedule_id: str | None = None) -> Schedule:
        schedule = Schedule(**self._validated(fields), source=source)
        if schedule_id:
            schedule.id = schedule_id
        # Scheduler first: if it fails, no record claims a schedule that will never fire (a
        # trigger without a record removes itself when it fires).
        self._trigger.install(schedule)
        self._schedules.save(schedule)
        log.info("schedule.created", schedule_id=schedule.id, target=schedule.target, source=source)
        return schedule

    def update(self, schedule_id: str, changes: dict[str, Any]) -> Schedule:
        current = self._editable(schedule_id)
        merged = {key: getattr(current, key) for key in _FIELDS}
        merged["retention"] = current.retention.to_dict() if current.retention else None
        # Setting one kind of timing replaces the other.
        if changes.get("cron") is not None:
            merged["interval_seconds"] = None
        if changes.get("interval_seconds") is not None:
            merged["cron"] = None
        merged.update(changes)
        try:
            updated = current.with_changes(**self._validated(merged))
        except TargetNotFound as exc:
            # The schedule exists: a 404 here would tell the client it does not.
            raise ValidationFailed(exc.message, errors=[{"pointer": "/target", "detail": "no such target"}]) from None
        self._trigger.install(updated)
        self._schedules.save(updated)
        log.info("schedule.updated", schedule_id=schedule_id, fields=sorted(changes))
        return updated

    def delete(self, schedule_id: str) -> None:
        self._editable(schedule_id)
        self._trigger.remove(schedule_id)
        self._schedules.delete(schedule_id)
        log.info("schedule.deleted", schedule_id=schedule_id)

    def sync_from_settings(self) -> None:
        """Install the schedules the deployment declares (settings win over earlier state)."""
        for index, declared in enumerate(self._settings.schedules):
            where = f"FLEXDB_SCHEDULES[{index}]"
            schedule_id = declared.get("id")
            if not isinstance(schedule_id, str) or not NAME_PATTERN.match(schedule_id):
                raise ConfigurationError(f"{where}: needs an \"id\" of 1-64 letters, digits, '_' or '-'")
            fields = {key: value for key, value in declared.items() if key != "id"}
            try:
                fresh = Schedule(**self._validated(fields), source="settings")
            except FlexDBError as exc:
                raise ConfigurationError(f"{where}: {exc.message}") from None
            fresh.id = schedule_id
            try:  # keep the run history of a schedule that was already installed
                previous = self._schedules.get(schedule_id)
                fresh.created_at, fresh.last_run_at = previous.created_at, previous.last_run_at
                fresh.last_job_id, fresh.last_status, fresh.last_message = (
                    previous.last_job_id,
                    previous.last_status,
                    previous.last_message,
                )
            except ScheduleNotFound:
                pass
            self._trigger.install(fresh)
            self._schedules.save(fresh)

    # ------------------------------------------------------------------ running

    def run_now(self, schedule_id: str) -> Job:
        """``POST /schedules/<id>/run``: a backup now, refused while the target is busy."""
        schedule = self.get(schedule_id)
        busy = self._busy_reason(schedule)
        if busy:
            raise TargetBusy(busy)
        return self._start(schedule)

    def fire(self, schedule_id: str) -> Job | None:
        """Beat fired the schedule: start a backup, or record why not."""
        try:
            schedule = self._schedules.get(schedule_id)
        except ScheduleNotFound:
            log.warning("schedule.fired_unknown", schedule_id=schedule_id)
            self._trigger.remove(schedule_id)
            return None
        if not schedule.enabled:
            return None
        busy = self._busy_reason(schedule)
        if busy:
            schedule.record_run(None, "skipped", busy)
            self._schedules.save(schedule)
            log.info("schedule.skipped", schedule_id=schedule.id, target=schedule.target, reason=busy)
            return None
        return self._start(schedule)

    def _start(self, schedule: Schedule) -> Job:
        try:
            job = self._jobs.submit_backup(schedule.target, schedule.options, schedule_id=schedule.id)
        except FlexDBError as exc:
            schedule.record_run(None, "failed", exc.message)
            self._schedules.save(schedule)
            raise
        schedule.record_run(job.id, job.status.value)
        self._schedules.save(schedule)
        log.info("schedule.fired", schedule_id=schedule.id, target=schedule.target, job_id=job.id)
        return job

    def _busy_reason(self, schedule: Schedule) -> str | None:
        holder = self._lock.holder(schedule.target)
        # A job that has already ended may hold its target a moment longer (retention after a
        # backup): the new backup waits in the target's line for that, it is not refused.
        if holder and not self._has_ended(holder):
            return f"target {schedule.target!r} is busy with job {holder}"
        if schedule.last_job_id and schedule.last_status in {"queued", "running"}:
            try:
                last = self._job_records.get(schedule.last_job_id)
            except FlexDBError:
                return None
            if not last.status.is_terminal:
                return f"the previous run (job {last.id}) is still {last.status.value}"
        return None

    def _has_ended(self, job_id: str) -> bool:
        try:
            return self._job_records.get(job_id).status.is_terminal
        except FlexDBError:
            return False

    # ------------------------------------------------------------------ validation

    def _editable(self, schedule_id: str) -> Schedule:
        schedule = self.get(schedule_id)
        if schedule.source == "settings":
            raise ScheduleManagedBySettings(
                f"Schedule {schedule_id!r} is declared in FLEXDB_SCHEDULES; change it there and restart."
            )
        return schedule

    def _validated(self, fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - _FIELDS
        if unknown:
            raise ValidationFailed(
                f"Unknown schedule fields: {', '.join(sorted(unknown))}.",
                errors=[{"pointer": f"/{key}", "detail": "unknown field"} for key in sorted(unknown)],
            )
        target = self._targets.get(str(fields.get("target")))
        cron, every = fields.get("cron"), fields.get("interval_seconds")
        if cron is not None and not isinstance(cron, str):
            raise ValidationFailed("cron must be a string such as '30 2 * * *'.", errors=[{"pointer": "/cron", "detail": "must be a string"}])
        if (cron is None) == (every is None):
            raise ValidationFailed(
                "Give exactly one of cron (5 fields, e.g. '30 2 * * *') or interval_seconds.",
                errors=[{"pointer": "/cron", "detail": "give cron or interval_seconds, not both or neither"}],
            )
        minimum = self._settings.schedule_min_interval_seconds
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or not minimum <= every <= MAX_INTERVAL_SECONDS
        ):
            raise ValidationFailed(
                f"interval_seconds must be a whole number from {minimum} (FLEXDB_SCHEDULE_MIN_INTERVAL_SECONDS) "
                f"to {MAX_INTERVAL_SECONDS} (366 days).",
                errors=[{"pointer": "/interval_seconds", "detail": f"must be between {minimum} and {MAX_INTERVAL_SECONDS}"}],
            )
        retention = fields.get("retention")
        options = self._targets.backup_options(target, fields.get("options"))
        values = {
            "target": target.name,
            "cron": " ".join(cron.split()) if isinstance(cron, str) else cron,
            "interval_seconds": every,
            "timezone": fields.get("timezone") or "UTC",
            "enabled": bool(fields.get("enabled", True)),
            "options": options,
            "retention": RetentionPolicy.from_dict(retention) if retention is not None else None,
        }
        self._trigger.validate(Schedule(**values))
        return values
