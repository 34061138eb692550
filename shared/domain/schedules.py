"""Schedules: when to back up a target automatically, and how the last run went."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.core.errors import ValidationFailed
from shared.domain.jobs import iso_utc, parse_iso, utcnow
from shared.domain.retention import RetentionPolicy

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# Rarer than yearly is no backup schedule, and the next run must stay a representable time.
MAX_INTERVAL_SECONDS = 366 * 24 * 3600


def new_schedule_id() -> str:
    return "sch_" + secrets.token_hex(6)


def split_cron(expression: str) -> dict[str, str]:
    """A 5-field cron expression (minute hour day-of-month month day-of-week) by field name."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValidationFailed(
            f"cron must have 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}: {expression!r}",
            errors=[{"pointer": "/cron", "detail": "must have 5 space-separated fields, e.g. '30 2 * * *'"}],
        )
    return dict(zip(CRON_FIELDS, parts))


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(
            f"Unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'.",
            errors=[{"pointer": "/timezone", "detail": "must be an IANA time zone name"}],
        ) from None


@dataclass
class Schedule:
    target: str
    cron: str | None = None
    interval_seconds: int | None = None
    timezone: str = "UTC"
    enabled: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    retention: RetentionPolicy | None = None
    id: str = field(default_factory=new_schedule_id)
    source: str = "api"  # "settings": declared by the deployment, changed only there
    created_at: datetime = field(default_factory=utcnow)
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    last_status: str | None = None
    last_message: str | None = None

    def with_changes(self, **changes: Any) -> Schedule:
        return replace(self, **changes)

    def record_run(self, job_id: str | None, status: str, message: str | None = None, now: datetime | None = None) -> None:
        self.last_run_at = now or utcnow()
        self.last_job_id = job_id or self.last_job_id
        self.last_status = status
        self.last_message = message

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "cron": self.cron,
            "interval_seconds": self.interval_seconds,
            "timezone": self.timezone,
            "enabled": self.enabled,
            "options": self.options,
            "retention": self.retention.to_dict() if self.retention else None,
            "source": self.source,
            "created_at": iso_utc(self.created_at),
            "last_run_at": iso_utc(self.last_run_at),
            "last_job_id": self.last_job_id,
            "last_status": self.last_status,
            "last_message": self.last_message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        return cls(
            id=data["id"],
            target=data["target"],
            cron=data.get("cron"),
            interval_seconds=data.get("interval_seconds"),
            timezone=data.get("timezone") or "UTC",
            enabled=bool(data.get("enabled", True)),
            options=data.get("options") or {},
            retention=RetentionPolicy.from_dict(data["retention"]) if data.get("retention") else None,
            source=data.get("source", "api"),
            created_at=parse_iso(data.get("created_at")) or utcnow(),
            last_run_at=parse_iso(data.get("last_run_at")),
            last_job_id=data.get("last_job_id"),
            last_status=data.get("last_status"),
            last_message=data.get("last_message"),
        )
