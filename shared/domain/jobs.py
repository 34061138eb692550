"""Jobs: what a client submits and polls. Pure data and state transitions."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def parse_iso(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")) if moment else None


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class JobKind(StrEnum):
    BACKUP = "backup"
    RESTORE = "restore"
    VERIFY = "verify"
    RETENTION = "retention"


@dataclass
class Progress:
    """How far a job got in its current ``stage``."""

    stage: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    items_done: int = 0
    items_total: int | None = None
    current: str | None = None

    @property
    def percent(self) -> float | None:
        """From items when their total is known, else from bytes, else unknown."""
        done, total = (self.items_done, self.items_total) if self.items_total else (self.bytes_done, self.bytes_total)
        if not total:
            return None
        return round(min(100.0, 100.0 * done / total), 1)

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies, and this is on every job write and read.
        return {
            "stage": self.stage,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "items_done": self.items_done,
            "items_total": self.items_total,
            "percent": self.percent,
            "current": self.current,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Progress:
        data = dict(data or {})
        data.pop("percent", None)
        return cls(**data)


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass
class Callback:
    """Where the finished job is POSTed, and how delivery went. Its headers are secret and
    kept apart from the job record, so they never show in a response or in Flower."""

    url: str
    status: str = "pending"  # pending, delivered, failed
    attempts: int = 0
    response_status: int | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    kind: JobKind
    target: str
    engine: str
    params: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: JobStatus = JobStatus.QUEUED
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = field(default_factory=Progress)
    backup_id: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: JobError | None = None
    callback: Callback | None = None
    # Set from its own flag in the store: a cancel request must not race progress writes.
    cancel_requested: bool = False
    # How many times a worker started this job (a backup whose worker died is retried).
    attempts: int = 0
    # The backup the current attempt is writing: what to remove if that attempt dies.
    work_backup_id: str | None = None

    # --------------------------------------------------------------- transitions

    def start(self, now: datetime | None = None) -> None:
        self.status = JobStatus.RUNNING
        self.started_at = now or utcnow()
        self.error = None
        self.attempts += 1

    def requeue(self, reason: str) -> None:
        """Back to the queue (its worker died or shut down); ``reason`` shows as the stage."""
        self.status = JobStatus.QUEUED
        self.work_backup_id = None
        self.progress = Progress(stage=reason)

    def succeed(self, result: dict[str, Any] | None = None, now: datetime | None = None) -> None:
        self._end(JobStatus.SUCCEEDED, now)
        self.result = dict(result or {})

    def fail(self, code: str, message: str, now: datetime | None = None) -> None:
        self._end(JobStatus.FAILED, now)
        self.error = JobError(code, message)

    def cancel(self, now: datetime | None = None) -> None:
        self._end(JobStatus.CANCELLED, now)

    def _end(self, status: JobStatus, now: datetime | None) -> None:
        self.status = status
        self.finished_at = now or utcnow()
        self.work_backup_id = None

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or utcnow()
        return round((end - self.started_at).total_seconds(), 3)

    # --------------------------------------------------------------- serialization

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "status": self.status.value,
            "target": self.target,
            "engine": self.engine,
            "params": self.params,
            "created_at": iso_utc(self.created_at),
            "started_at": iso_utc(self.started_at),
            "finished_at": iso_utc(self.finished_at),
            "progress": self.progress.to_dict(),
            "backup_id": self.backup_id,
            "result": self.result,
            "error": asdict(self.error) if self.error else None,
            "callback": self.callback.to_dict() if self.callback else None,
            "cancel_requested": self.cancel_requested,
            "attempts": self.attempts,
            "work_backup_id": self.work_backup_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            kind=JobKind(data["kind"]),
            status=JobStatus(data["status"]),
            target=data["target"],
            engine=data["engine"],
            params=data.get("params") or {},
            created_at=parse_iso(data["created_at"]) or utcnow(),
            started_at=parse_iso(data.get("started_at")),
            finished_at=parse_iso(data.get("finished_at")),
            progress=Progress.from_dict(data.get("progress")),
            backup_id=data.get("backup_id"),
            result=data.get("result") or {},
            error=JobError(**data["error"]) if data.get("error") else None,
            callback=Callback(**data["callback"]) if data.get("callback") else None,
            cancel_requested=bool(data.get("cancel_requested")),
            attempts=int(data.get("attempts") or 0),
            work_backup_id=data.get("work_backup_id"),
        )


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    kind: JobKind | None = None
    target: str | None = None

    def matches(self, job: Job) -> bool:
        return (
            (self.status is None or job.status == self.status)
            and (self.kind is None or job.kind == self.kind)
            and (self.target is None or job.target == self.target)
        )


@dataclass(frozen=True)
class Page:
    """One page of a newest-first listing; ``next_cursor`` is None on the last page."""

    items: list[Any]
    next_cursor: str | None
