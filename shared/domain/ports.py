"""Contracts the services depend on; infrastructure provides the implementations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import BinaryIO

from shared.domain.backups import BackupManifest
from shared.domain.jobs import Job, JobFilter, Page, Progress
from shared.domain.schedules import Schedule


class ArchiveSink(ABC):
    """A file being written under a temporary name; visible only after :meth:`commit`."""

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    @abstractmethod
    def commit(self) -> None:
        """Flush to disk and move into place atomically."""

    @abstractmethod
    def abort(self) -> None:
        """Remove the partial file."""

    def __enter__(self) -> ArchiveSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class Storage(ABC):
    """Where archives and their manifests live. A backup without a manifest does not exist."""

    @abstractmethod
    def open_sink(self, backup_id: str, name: str) -> ArchiveSink: ...

    @abstractmethod
    def open_archive(self, manifest: BackupManifest) -> BinaryIO: ...

    @abstractmethod
    def write_manifest(self, manifest: BackupManifest) -> None:
        """Write atomically; the manifest is the last thing written for a backup."""

    @abstractmethod
    def read_manifest(self, backup_id: str) -> BackupManifest:
        """Raise BackupNotFound when there is no complete backup with that id."""

    @abstractmethod
    def iter_manifests(self, before_id: str | None = None) -> Iterator[BackupManifest]:
        """Complete backups, newest first, optionally only those with ids below ``before_id``."""

    @abstractmethod
    def delete(self, backup_id: str) -> None:
        """Manifest first, then the archive, so a half-deleted backup never shows."""

    @abstractmethod
    def remove_incomplete(self, older_than_seconds: float) -> list[str]:
        """Remove what dead attempts left (no manifest, untouched for that long); their ids."""

    @abstractmethod
    def describe(self) -> str:
        """Where backups go, for health output (no secrets)."""

    @abstractmethod
    def problem(self) -> str | None:
        """Why backups cannot be written right now, or None when they can."""


class JobRepository(ABC):
    """Job records: the source of truth for job state (not Celery's result backend)."""

    @abstractmethod
    def add(self, job: Job) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> Job:
        """Raise JobNotFound."""

    @abstractmethod
    def save(self, job: Job) -> None: ...

    @abstractmethod
    def save_progress(self, job_id: str, progress: Progress) -> None: ...

    @abstractmethod
    def request_cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    @abstractmethod
    def save_callback_headers(self, job_id: str, headers: dict[str, str]) -> None:
        """Kept apart from the job: they may carry credentials of the receiver."""

    @abstractmethod
    def callback_headers(self, job_id: str) -> dict[str, str]: ...

    @abstractmethod
    def wait_for_change(self, job_id: str, seen: str, timeout_seconds: float) -> Job:
        """Return the job once its status is no longer ``seen``, or when the time is up."""

    @abstractmethod
    def find(self, filters: JobFilter, limit: int, cursor: str | None) -> Page: ...

    @abstractmethod
    def iter_jobs(self) -> Iterator[Job]:
        """Every job record still kept, newest first."""


class IdempotencyStore(ABC):
    """Remembers which job an ``Idempotency-Key`` produced, and for which request."""

    @abstractmethod
    def reserve(self, key: str, fingerprint: str) -> tuple[str, str | None] | None:
        """None when the key is new (now reserved); else (fingerprint, job id or None while in flight)."""

    @abstractmethod
    def complete(self, key: str, fingerprint: str, job_id: str) -> None: ...

    @abstractmethod
    def release(self, key: str) -> None: ...


class TargetLock(ABC):
    """One backup or restore per target at a time, across all workers."""

    @abstractmethod
    def hold(self, target: str, job_id: str) -> AbstractContextManager[None]:
        """Raise TargetBusy when another job holds the target."""

    @abstractmethod
    def holder(self, target: str) -> str | None:
        """The id of the job holding the target, or None when it is free."""


class TaskQueue(ABC):
    """Sends work to the workers by task name, with the job id as the only argument."""

    @abstractmethod
    def enqueue(self, task_name: str, job_id: str, delay_seconds: float = 0) -> None:
        """Raise BrokerUnavailable when the broker cannot take the message."""


class ScheduleRepository(ABC):
    """Schedule records (what the API shows); the trigger below makes beat fire them."""

    @abstractmethod
    def save(self, schedule: Schedule) -> None: ...

    @abstractmethod
    def get(self, schedule_id: str) -> Schedule:
        """Raise ScheduleNotFound."""

    @abstractmethod
    def all(self) -> list[Schedule]: ...

    @abstractmethod
    def delete(self, schedule_id: str) -> None: ...


class ScheduleTrigger(ABC):
    """Makes the scheduler fire ``schedule`` (or stop firing it)."""

    @abstractmethod
    def validate(self, schedule: Schedule) -> None:
        """Raise ValidationFailed when the scheduler cannot run this timing."""

    @abstractmethod
    def install(self, schedule: Schedule) -> None: ...

    @abstractmethod
    def remove(self, schedule_id: str) -> None: ...

    @abstractmethod
    def next_run_at(self, schedule: Schedule) -> datetime | None: ...


class WorkerRegistry(ABC):
    """Which workers are alive (heartbeats)."""

    @abstractmethod
    def beat(self, worker_name: str) -> None: ...

    @abstractmethod
    def forget(self, worker_name: str) -> None: ...

    @abstractmethod
    def alive(self) -> list[str]: ...
