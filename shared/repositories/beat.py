"""Celery beat's schedule in Redis (RedBeat), with a time zone per schedule.

RedBeat keeps each entry in Redis and takes a lock so that only one beat process fires at a
time; beat re-reads the entries at every tick, so a change made over the API takes effect
without a restart. RedBeat stores crontabs without a time zone, so a schedule's IANA zone
travels in the entry's options and :class:`ZonedEntry` re-attaches it when beat loads the entry.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from celery.schedules import crontab, schedule as interval
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedulers import ensure_conf, get_redis

from shared.core.errors import ValidationFailed
from shared.core.logs import get_logger
from shared.domain.ports import ScheduleTrigger
from shared.domain.schedules import Schedule, split_cron, zone
from shared.domain.tasks import SCHEDULED_BACKUP_TASK
from shared.repositories.redis_store import redis_errors

TZ_OPTION = "flexdb_timezone"
log = get_logger(__name__)


class ZonedCrontab(crontab):
    """A crontab evaluated in its own time zone (Celery's uses the app's), DST included."""

    def __init__(self, *args: Any, zone_name: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zone_name = zone_name

    @cached_property
    def tz(self) -> ZoneInfo:  # type: ignore[override]
        return ZoneInfo(self.zone_name)

    @classmethod
    def of(cls, plain: crontab, zone_name: str, app: Celery | None = None) -> ZonedCrontab:
        return cls(
            minute=plain._orig_minute,
            hour=plain._orig_hour,
            day_of_week=plain._orig_day_of_week,
            day_of_month=plain._orig_day_of_month,
            month_of_year=plain._orig_month_of_year,
            zone_name=zone_name,
            app=app,
        )


class ZonedEntry(RedBeatSchedulerEntry):
    @staticmethod
    def decode_definition(definition: Any) -> dict[str, Any]:
        data = RedBeatSchedulerEntry.decode_definition(definition)
        zone_name = (data.get("options") or {}).get(TZ_OPTION)
        if zone_name and isinstance(data.get("schedule"), crontab):
            data["schedule"] = ZonedCrontab.of(data["schedule"], zone_name)
        return data


class FlexDBScheduler(RedBeatScheduler):
    """``celery beat -S shared.repositories.beat:FlexDBScheduler``."""

    Entry = ZonedEntry

    def tick(self, min=min, **kwargs):  # noqa: A002 - Celery's own signature
        """Ride out a Redis outage: skip the tick and try again later, instead of exiting (which
        would stop scheduled backups until someone restarts beat)."""
        try:
            return super().tick(min=min, **kwargs)
        except redis.exceptions.LockError:
            # The lock lapsed while Redis was away: take it again, unless another beat has.
            if self.lock is None or not self.lock.acquire(blocking=False):
                log.info("beat.standby", reason="another beat holds the schedule lock")
                return self.max_interval
            log.info("beat.lock_retaken")
            return self.max_interval
        except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
            log.warning("beat.redis_unavailable", error=type(exc).__name__, retry_in_s=self.max_interval)
            return self.max_interval

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        # The zone is for the schedule, not a message option for the broker.
        entry.options = {key: value for key, value in entry.options.items() if key != TZ_OPTION}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)


def parse_cron(expression: str, zone_name: str, app: Celery | None = None) -> ZonedCrontab:
    try:
        return ZonedCrontab(**split_cron(expression), zone_name=zone_name, app=app)
    except ValueError as exc:
        raise ValidationFailed(
            f"Invalid cron expression {expression!r}: {exc}",
            errors=[{"pointer": "/cron", "detail": f"invalid: {exc}"}],
        ) from None


class RedBeatTrigger(ScheduleTrigger):
    """Installs schedules as RedBeat entries that send ``flexdb.scheduled_backup(<id>)``."""

    def __init__(self, app: Celery, queue: str) -> None:
        self._app = app
        self._queue = queue
        # RedBeat sets app.redbeat_conf lazily, on the first entry built; the key helpers below
        # need it before that in a process that only reads or removes entries.
        ensure_conf(app)

    def validate(self, schedule: Schedule) -> None:
        zone(schedule.timezone)
        if schedule.cron is not None:
            parse_cron(schedule.cron, schedule.timezone, self._app)

    def _entry(self, schedule: Schedule) -> ZonedEntry:
        options: dict[str, Any] = {"queue": self._queue}
        if schedule.cron is not None:
            when: Any = parse_cron(schedule.cron, schedule.timezone, self._app)
            options[TZ_OPTION] = schedule.timezone
        else:
            when = interval(run_every=timedelta(seconds=schedule.interval_seconds or 0), app=self._app)
        return ZonedEntry(
            name=schedule.id, task=SCHEDULED_BACKUP_TASK, schedule=when, args=[schedule.id], options=options, app=self._app
        )

    @redis_errors
    def install(self, schedule: Schedule) -> None:
        if not schedule.enabled:
            self.remove(schedule.id)
            return
        # A new entry starts counting from now (it does not fire at once); an existing one
        # keeps its last run, so changing the cron moves the next run, not the history.
        self._entry(schedule).save()

    @redis_errors
    def remove(self, schedule_id: str) -> None:
        key = ZonedEntry.generate_key(self._app, schedule_id)
        with get_redis(self._app).pipeline() as pipe:
            pipe.zrem(self._app.redbeat_conf.schedule_key, key)
            pipe.delete(key)
            pipe.execute()

    @redis_errors
    def next_run_at(self, schedule: Schedule) -> datetime | None:
        key = ZonedEntry.generate_key(self._app, schedule.id)
        score = get_redis(self._app).zscore(self._app.redbeat_conf.schedule_key, key)
        if score is None or score < 0:
            return None
        if schedule.cron is not None:
            # RedBeat scores whole seconds, truncated; a cron fires on a whole minute.
            score = round(score / 60) * 60
        return datetime.fromtimestamp(score, tz=timezone.utc)
