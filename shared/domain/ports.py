"""Contracts the services depend on; infrastructure provides the implementations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from shared.domain.backups import BackupManifest
from shared.domain.jobs import Job, JobFilter, JobStatus, Page, Progress
from shared.domain.schedules import Schedule


class ArchiveSink(ABC):
    """A file being written under a temporary name; visible only after :meth:`commit`."""

    # What the manifest records about encryption ({"algorithm", "key_id"}), None for plain bytes.
    encryption: dict[str, str] | None = None

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


class BlobMissing(LookupError):
    """No blob under that key (the catalog turns it into the user's "backup not found")."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


class BlobStore(ABC):
    """Bytes under keys (``<backup id>/<file name>``): the few primitives a storage backend
    provides, one module each (local folder, S3-compatible, in memory). The rules (manifests,
    newest-first listing, sweeping dead attempts, pins, confinement) are written once, in the
    catalog above (:class:`shared.storage.catalog.BlobCatalog`)."""

    @abstractmethod
    def writer(self, key: str) -> ArchiveSink:
        """Put a stream under ``key``, in bounded memory; visible only after ``commit``."""

    @abstractmethod
    def open(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        """Read the blob, or ``length`` bytes of it from ``start``; raise BlobMissing."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (unfinished local writes included, so
        that the catalog can sweep them), in no particular order."""

    @abstractmethod
    def stat(self, key: str) -> BlobInfo | None: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob (and any unfinished write of it); no error when it is absent."""

    @abstractmethod
    def describe(self) -> str:
        """Where the blobs go, for health output (no secrets)."""

    @abstractmethod
    def problem(self) -> str | None:
        """Why blobs cannot be written right now, or None when they can."""


class Storage(ABC):
    """Where archives and their manifests live. A backup without a manifest does not exist."""

    @abstractmethod
    def open_sink(self, backup_id: str, name: str) -> ArchiveSink: ...

    @abstractmethod
    def open_archive(self, manifest: BackupManifest, start: int = 0, length: int | None = None) -> BinaryIO:
        """The plain archive (decrypted if it is stored encrypted), or ``length`` bytes of it from
        ``start``; raise BackupNotFound when it is missing."""

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

    # A second storage every backup is copied to (FLEXDB_STORAGE_MIRROR_URL), or None.
    mirror: Storage | None = None

    def copies(self) -> list[Storage]:
        """Where archives can be read from, best first: this storage, then its mirror."""
        return [self] if self.mirror is None else [self, self.mirror]

    @abstractmethod
    def copy_to_mirror(self, backup_id: str) -> BackupManifest:
        """Copy a complete backup to the mirror (its manifest last) and record it in the manifest."""

    @abstractmethod
    def describe(self) -> str:
        """Where backups go, for health output (no secrets)."""

    @abstractmethod
    def problem(self) -> str | None:
        """Why backups cannot be written right now, or None when they can."""


class JobRepository(ABC):
    """Job records: the source of truth for job state (not Celery's result backend)."""

    @abstractmethod
    def add(
        self,
        job: Job,
        task_name: str | None = None,
        callback_url: str | None = None,
        callback_headers: dict[str, str] | None = None,
    ) -> None:
        """Write a new job, in one step with what comes with it: the callback's full URL (its
        query may hold a token) and headers, kept apart from the job since they may carry the
        receiver's credentials (the job shows the URL masked); and, with ``task_name``, that
        task's message (the job id its only argument), written after the record so a worker
        always finds it. Raise BrokerUnavailable when Redis does not answer."""

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
    def request_handback(self, job_id: str) -> None:
        """Ask the worker running the job to stop and put it back in the queue (worker shutdown)."""

    @abstractmethod
    def handback_requested(self, job_id: str) -> bool: ...

    @abstractmethod
    def save_if(self, job: Job, expected: JobStatus) -> bool:
        """Save only if the stored job still has status ``expected`` (compare and set)."""

    @abstractmethod
    def callback_secrets(self, job_id: str) -> tuple[str | None, dict[str, str]]:
        """(full URL or None when only the job's URL is known, headers)."""

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


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds a target: one attempt of one job, in one process on one host."""

    job_id: str
    host: str
    pid: int
    nonce: str

    def encode(self) -> str:
        return f"{self.job_id} {self.host} {self.pid} {self.nonce}"

    @classmethod
    def decode(cls, raw: str | None) -> LeaseOwner | None:
        parts = (raw or "").split(" ")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])


class TargetLease(ABC):
    """One backup or restore per target at a time, across all workers.

    A lease is owned by one attempt of a job and expires unless renewed, so a dead worker frees
    its target within one lease. A job that finds the target taken joins the target's line (by
    submit time) and leaves its worker slot; the line is served oldest first."""

    @abstractmethod
    def acquire(self, target: str, owner: LeaseOwner, queued_at: float, replacing: LeaseOwner | None = None) -> str | None:
        """Take the target (also from ``replacing``, a dead attempt of the same job), or join
        its line. None when taken; else the id of the job ahead (the holder or an older one in line)."""

    @abstractmethod
    def renew(self, target: str, owner: LeaseOwner) -> bool:
        """Extend the lease (re-taking it if it lapsed and nobody took it); False when it is lost."""

    @abstractmethod
    def release(self, target: str, owner: LeaseOwner) -> str | None:
        """Give the target up; the id of the job first in line, if any."""

    @abstractmethod
    def owner(self, target: str) -> LeaseOwner | None: ...

    def holder(self, target: str) -> str | None:
        """The id of the job holding the target, or None when it is free."""
        owner = self.owner(target)
        return owner.job_id if owner else None

    @abstractmethod
    def leased_jobs(self) -> dict[str, str]:
        """Job id -> target of every job that took a lease and has not released it (alive or dead)."""

    @abstractmethod
    def forget(self, target: str, job_id: str) -> None:
        """Drop what a dead or finished job left: its lease (if still its own) and its place in line."""

    @abstractmethod
    def line(self, target: str) -> list[tuple[str, float]]:
        """The jobs waiting for ``target``, first first, with the time each was last woken (0: never)."""

    @abstractmethod
    def mark_woken(self, job_id: str) -> None:
        """Remember that ``job_id`` was sent to a worker to try the target again."""

    @abstractmethod
    def unleased_notes(self) -> dict[str, float]:
        """The reaper's notes: job id -> when it first saw that job without its lease."""

    @abstractmethod
    def note_unleased(self, job_id: str, now: float) -> None: ...

    @abstractmethod
    def clear_unleased(self, job_id: str) -> None: ...

    @abstractmethod
    def claim_sweep(self, seconds: float) -> bool:
        """True for one caller in ``seconds``: one reaper sweeps at a time."""


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
