"""The engine contract: one Strategy per database kind, the workflow as a Template Method.

``backup`` and ``restore`` are the fixed workflows; engines fill in the hooks (``probe``,
``dump``, ``prepare_restore``, ``load``). The workflow guarantees what every engine must: a
backup becomes visible only once the archive is complete, checksummed and its manifest is
written; a restore touches the database only after the archive's checksum verifies.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, ClassVar

from shared.core.errors import ChecksumMismatch, ValidationFailed
from shared.core.logs import get_logger
from shared.core.settings import Settings, Target
from shared.domain.backups import BackupManifest
from shared.domain.jobs import iso_utc
from shared.domain.ports import Storage
from shared.domain.progress import ProgressTracker
from shared.domain.streams import HashingWriter, sha256_of

log = get_logger(__name__)


@dataclass(frozen=True)
class ServerInfo:
    version: str
    latency_ms: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore where. ``database`` None means the target's own database."""

    database: str | None = None
    drop: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DumpResult:
    """What an engine reports about the dump it streamed."""

    database: str | None = None
    server_version: str | None = None
    tool_version: str | None = None  # when the engine learned it while dumping
    details: dict[str, Any] = field(default_factory=dict)


class BackupEngine(ABC):
    name: ClassVar[str]
    archive_format: ClassVar[str]
    archive_name: ClassVar[str]
    compression: ClassVar[str | None] = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this engine cannot run here (missing driver or tool), or None when it can."""
        return None

    @classmethod
    def validate_options(cls, kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check a backup's or restore's ``options`` at submit time (``kind`` is "backup" or
        "restore") and return them normalised. Default: this engine takes none."""
        if options:
            raise ValidationFailed(
                f"The {cls.name} engine takes no {kind} options; remove {', '.join(sorted(options))}.",
                errors=[{"pointer": f"/options/{key}", "detail": "unknown option"} for key in sorted(options)],
            )
        return {}

    # ----------------------------------------------------------------- hooks

    @abstractmethod
    def probe(self, target: Target) -> ServerInfo:
        """Connect once and report the server; raise TargetUnreachable/AuthenticationFailed."""

    @abstractmethod
    def tool_version(self) -> str:
        """The version of the dump tool or driver that writes the archives."""

    @abstractmethod
    def dump(
        self,
        target: Target,
        sink: HashingWriter,
        progress: ProgressTracker,
        server: ServerInfo,
        options: Mapping[str, Any],
    ) -> DumpResult:
        """Stream the archive into ``sink``; raise DumpFailed (or a more specific error).
        ``options`` are the job's, already checked by :meth:`validate_options`."""

    @abstractmethod
    def prepare_restore(self, target: Target, manifest: BackupManifest, request: RestoreRequest) -> None:
        """Make the destination ready (create a database, refuse a non-empty one...)."""

    @abstractmethod
    def load(
        self,
        target: Target,
        archive: BinaryIO,
        manifest: BackupManifest,
        request: RestoreRequest,
        progress: ProgressTracker,
    ) -> dict[str, Any]:
        """Restore the verified archive; raise RestoreFailed. Returns details for the job."""

    def verify_archive(self, archive: BinaryIO, manifest: BackupManifest, progress: ProgressTracker) -> None:
        """Engine-specific structural check after the checksum (default: none)."""

    # ----------------------------------------------------------------- template methods

    def backup(
        self,
        target: Target,
        storage: Storage,
        backup_id: str,
        job_id: str,
        progress: ProgressTracker,
        options: Mapping[str, Any] | None = None,
    ) -> BackupManifest:
        started_wall, started = datetime.now(timezone.utc), time.monotonic()
        progress.stage("connecting")
        server = self.probe(target)
        progress.stage("dumping")
        with storage.open_sink(backup_id, self.archive_name) as sink:
            hashing = HashingWriter(sink, progress)
            result = self.dump(target, hashing, progress, server, options or {})
            sink.commit()
        manifest = BackupManifest(
            id=backup_id,
            target=target.name,
            engine=self.name,
            format=self.archive_format,
            archive_name=self.archive_name,
            created_at=iso_utc(started_wall),
            finished_at=iso_utc(datetime.now(timezone.utc)),
            duration_seconds=round(time.monotonic() - started, 3),
            size_bytes=hashing.size,
            sha256=hashing.sha256,
            database=result.database,
            job_id=job_id,
            tool_version=result.tool_version or self.tool_version(),
            server_version=result.server_version or server.version,
            compression=self.compression,
            details=result.details,
        )
        try:
            storage.write_manifest(manifest)
        except BaseException:
            storage.delete(backup_id)
            raise
        progress.flush()
        return manifest

    def verify(self, storage: Storage, manifest: BackupManifest, progress: ProgressTracker) -> None:
        """Checksum and size against the manifest, then the engine's own structural check."""
        progress.stage("verifying", bytes_total=manifest.size_bytes)
        with storage.open_archive(manifest) as archive:
            digest, size = sha256_of(archive, self.settings.stream_chunk_bytes, progress)
        if digest != manifest.sha256 or size != manifest.size_bytes:
            raise ChecksumMismatch(
                f"Backup {manifest.id} does not match its manifest (sha256 {digest[:12]}..., {size} bytes; "
                f"expected {manifest.sha256[:12]}..., {manifest.size_bytes} bytes). The archive is damaged; "
                "restore another backup."
            )
        with storage.open_archive(manifest) as archive:
            self.verify_archive(archive, manifest, progress)
        log.info("archive.verified", backup_id=manifest.id, size_bytes=size)

    def restore(
        self,
        target: Target,
        storage: Storage,
        manifest: BackupManifest,
        request: RestoreRequest,
        progress: ProgressTracker,
    ) -> dict[str, Any]:
        self.verify(storage, manifest, progress)
        progress.stage("connecting")
        self.probe(target)
        self.prepare_restore(target, manifest, request)
        progress.stage("restoring", bytes_total=manifest.size_bytes)
        with storage.open_archive(manifest) as archive:
            details = self.load(target, archive, manifest, request, progress)
        progress.flush()
        return details
