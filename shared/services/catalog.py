"""The backup catalog: what storage holds, read from the manifests (survives a Redis loss)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import BinaryIO

from shared.core.errors import (
    ArchiveCorrupt,
    ArchiveTooLarge,
    BackupInUse,
    BackupPinned,
    BadRequest,
    ConfigurationError,
)
from shared.core.logs import get_logger
from shared.core.settings import Settings
from shared.domain.backups import BackupManifest, new_backup_id, validate_backup_id
from shared.domain.jobs import JobFilter, JobKind, Page, iso_utc
from shared.domain.ports import JobRepository, Storage
from shared.domain.ranges import ByteRange
from shared.domain.streams import HashingWriter
from shared.engines import engine_for
from shared.services.targets import TargetService

log = get_logger(__name__)


@dataclass
class ArchiveDownload:
    """An archive (or one range of it) ready to stream: ``length`` bytes from ``start`` of
    ``size``. The caller reads ``stream`` in chunks and closes it."""

    manifest: BackupManifest
    stream: BinaryIO
    start: int
    length: int
    size: int
    partial: bool


class BackupCatalog:
    def __init__(
        self,
        storage: Storage,
        jobs: JobRepository | None = None,
        targets: TargetService | None = None,
        settings: Settings | None = None,
    ) -> None:
        """``jobs`` tells which backups a restore still reads (without it, none is);
        ``targets`` and ``settings`` are needed only to import archives."""
        self._storage = storage
        self._jobs = jobs
        self._targets = targets
        self._settings = settings or Settings()

    def get(self, backup_id: str) -> BackupManifest:
        return self._storage.read_manifest(validate_backup_id(backup_id))

    def mirror(self, backup_id: str) -> BackupManifest:
        """Copy a backup to the mirror storage (the follow-up of every backup when one is set)."""
        return self._storage.copy_to_mirror(validate_backup_id(backup_id))

    def set_pinned(self, backup_id: str, pinned: bool) -> BackupManifest:
        """Pin (retention never deletes it) or unpin a backup. The pin is in its manifest, in
        storage, so it survives a Redis loss like the backup itself."""
        manifest = self.get(backup_id)
        if manifest.pinned != pinned:
            manifest = replace(manifest, pinned=pinned)
            self._storage.write_manifest(manifest)
            log.info("backup.pinned" if pinned else "backup.unpinned", backup_id=manifest.id, target=manifest.target)
        return manifest

    def list(self, target: str | None, limit: int, cursor: str | None) -> Page:
        before = validate_backup_id(cursor) if cursor else None
        items: list[BackupManifest] = []
        for manifest in self._storage.iter_manifests(before_id=before):
            if target is None or manifest.target == target:
                items.append(manifest)
                if len(items) > limit:
                    break
        has_more = len(items) > limit
        items = items[:limit]
        return Page(items, items[-1].id if has_more else None)

    # ------------------------------------------------------------------ archive content

    def open_content(self, manifest: BackupManifest, start: int = 0, length: int | None = None) -> BinaryIO:
        """The archive's bytes as a restore tool reads them, or ``length`` bytes of them from
        ``start``. The one way the services read an archive's content."""
        return self._storage.open_archive(manifest, start, length)

    def download(self, backup_id: str, byte_range: ByteRange | None = None) -> ArchiveDownload:
        """The archive of a backup to send, whole or the one range asked for."""
        manifest = self.get(backup_id)
        size = manifest.size_bytes
        start, length = byte_range.resolve(size) if byte_range is not None else (0, size)
        partial = byte_range is not None
        stream = self.open_content(manifest, start, length) if partial else self.open_content(manifest)
        log.info("backup.download_started", backup_id=manifest.id, start=start, length=length, size_bytes=size)
        return ArchiveDownload(manifest, stream, start, length, size, partial)

    # ------------------------------------------------------------------ deleting

    def delete(self, backup_id: str) -> None:
        """Remove a backup from storage (manifest first). Refused for a pinned backup and for
        one that a queued or running restore reads."""
        manifest = self.get(backup_id)
        if manifest.pinned:
            raise BackupPinned(
                f"Backup {manifest.id} is pinned; unpin it first with PATCH /api/v1/backups/{manifest.id} "
                '{"pinned": false}, then delete it.'
            )
        readers = self._restores_reading(manifest.id)
        if readers:
            raise BackupInUse(
                f"Backup {manifest.id} is being read by restore job {readers[0]}"
                + (f" (and {len(readers) - 1} more)" if len(readers) > 1 else "")
                + "; delete it once that job has finished, or cancel the job first."
            )
        self._storage.delete(manifest.id)
        log.info("backup.deleted", backup_id=manifest.id, target=manifest.target, size_bytes=manifest.size_bytes)

    def _restores_reading(self, backup_id: str) -> list[str]:
        if self._jobs is None:
            return []
        found: list[str] = []
        cursor: str | None = None
        while True:
            page = self._jobs.find(JobFilter(kind=JobKind.RESTORE), 200, cursor)
            found += [
                job.id
                for job in page.items
                if not job.status.is_terminal and (job.params or {}).get("backup_id") == backup_id
            ]
            cursor = page.next_cursor
            if cursor is None:
                return found

    # ------------------------------------------------------------------ importing

    def import_archive(self, target_name: str, body: BinaryIO, declared_size: int | None) -> BackupManifest:
        """Store an uploaded archive as a backup of ``target_name``: streamed into storage in
        chunks (never whole in memory), then checked by the target's engine; listed (a manifest
        written) only when the engine accepts it, removed from storage otherwise."""
        if self._targets is None:
            raise ConfigurationError("This catalog was built without targets; it cannot import archives.")
        target = self._targets.get(target_name)
        limit = self._settings.import_max_bytes
        if declared_size is not None and declared_size > limit:
            raise ArchiveTooLarge(self._too_large(declared_size, limit))
        engine = engine_for(target.engine, self._settings)
        chunk_size = self._settings.stream_chunk_bytes
        started_wall, started = datetime.now(UTC), time.monotonic()
        head = _read_at_least(body, 8, chunk_size)
        if not head:
            raise ArchiveCorrupt(
                "The body is empty, and an empty file is no archive; send the archive file as the body "
                "(curl --data-binary @FILE -H 'Content-Type: application/octet-stream')."
            )
        backup_id = new_backup_id(started_wall)
        archive_name = engine.import_archive_name(head)
        codec = engine.import_codec(head)
        log.info("backup.import_started", backup_id=backup_id, target=target.name, declared_size=declared_size)
        with self._storage.open_sink(backup_id, archive_name) as sink:
            hashing = HashingWriter(sink)
            chunk = head
            while chunk:
                if hashing.size + len(chunk) > limit:
                    raise ArchiveTooLarge(self._too_large(hashing.size + len(chunk), limit, streamed=True))
                hashing.write(chunk)
                chunk = body.read(chunk_size)
            if declared_size is not None and hashing.size != declared_size:
                raise BadRequest(f"The body ended after {hashing.size} of the {declared_size} bytes announced.")
            sink.commit()
        provisional = BackupManifest(
            id=backup_id,
            target=target.name,
            engine=engine.name,
            format=engine.archive_format,
            archive_name=archive_name,
            created_at=iso_utc(started_wall),
            finished_at=iso_utc(started_wall),
            duration_seconds=0.0,
            size_bytes=hashing.size,
            sha256=hashing.sha256,
            source="import",
            encryption=sink.encryption,
        )
        try:
            # the engine reads the archive decompressed, as a restore will
            found = engine.inspect_import(lambda: codec.reader(self.open_content(provisional), owns_source=True))
            manifest = replace(
                provisional,
                format=found.archive_format,
                finished_at=iso_utc(datetime.now(UTC)),
                duration_seconds=round(time.monotonic() - started, 3),
                database=found.database,
                tool_version=found.tool_version,
                server_version=found.server_version,
                compression=codec.name,
                details=found.details,
            )
            self._storage.write_manifest(manifest)
        except BaseException as exc:
            self._storage.delete(backup_id)  # a refused upload leaves nothing behind
            if isinstance(exc, ArchiveCorrupt):
                log.info("backup.import_refused", backup_id=backup_id, target=target.name, reason=exc.message)
            raise
        log.info(
            "backup.imported",
            backup_id=backup_id,
            target=target.name,
            size_bytes=manifest.size_bytes,
            sha256=manifest.sha256,
        )
        return manifest

    @staticmethod
    def _too_large(size: int, limit: int, streamed: bool = False) -> str:
        what = f"more than {limit} bytes arrived" if streamed else f"the body has {size} bytes"
        return f"The archive is too large: {what}, and FLEXDB_IMPORT_MAX_BYTES allows {limit}."


def _read_at_least(body: BinaryIO, wanted: int, chunk_size: int) -> bytes:
    """The first chunk of ``body``, at least ``wanted`` bytes unless the body is shorter (a
    network stream may answer a read with a few bytes)."""
    data = body.read(chunk_size)
    while data and len(data) < wanted:
        more = body.read(chunk_size)
        if not more:
            break
        data += more
    return data
