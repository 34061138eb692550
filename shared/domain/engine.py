"""The engine contract: one Strategy per database kind, the workflow as a Template Method.

``backup`` and ``restore`` are the fixed workflows; engines fill in the hooks (``probe``,
``dump``, ``prepare_restore``, ``load``). The workflow guarantees what every engine must: a
backup becomes visible only once the archive is complete, checksummed and its manifest is
written; a restore touches the database only after the archive's checksum verifies.

Compression is the workflow's, not the engines': a dump writes plain bytes into the codec the
backup's ``compression`` option (or the settings) chose, and a load reads plain bytes decoded by
the codec its manifest names. The checksum is always of the bytes in storage.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, ClassVar

from shared.core.errors import ArchiveCorrupt, BackupNotFound, ChecksumMismatch, SystemDatabaseRefused, ValidationFailed
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Settings, Target
from shared.domain.backups import BackupManifest
from shared.domain.codecs import CODEC_NAMES, StreamCodec, codec_from_settings, detect_codec, stored_codec
from shared.domain.jobs import iso_utc
from shared.domain.ports import Storage
from shared.domain.progress import ProgressTracker
from shared.domain.streams import CountingReader, HashingReader, HashingWriter

log = get_logger(__name__)
# Options the workflow itself takes, for every engine; engines never see them.
WORKFLOW_OPTIONS: Mapping[str, frozenset[str]] = {"backup": frozenset({"compression"}), "restore": frozenset()}


@dataclass(frozen=True)
class ServerInfo:
    version: str
    latency_ms: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectionAddress:
    """Where a URI makes the driver connect, as the driver itself reads it."""

    hosts: tuple[str, ...]  # host names and IP addresses (IPv6 without brackets)
    sockets: tuple[str, ...]  # local socket paths
    options: Mapping[str, str]  # query options; names lower-cased where the driver ignores case


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
    # The options that made it a subset of the target (e.g. {"collections": [...]}); {} = all of it.
    scope: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportedArchive:
    """What an engine found in an uploaded archive it accepts (for the archive's manifest)."""

    archive_format: str
    database: str | None = None
    server_version: str | None = None
    tool_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class BackupEngine(ABC):
    name: ClassVar[str]
    archive_format: ClassVar[str]
    # The archive's file name before the codec's extension (".zst", ".gz", "").
    archive_name: ClassVar[str]
    # The server's own databases. A restore never writes into ``forbidden_databases`` and into
    # ``system_databases`` only when the request says "allow_system_database": true.
    forbidden_databases: ClassVar[frozenset[str]] = frozenset()
    system_databases: ClassVar[frozenset[str]] = frozenset()
    # The query options an ad-hoc URI (POST /connections/check) may carry: lower-case name ->
    # the values allowed (None: any). Every other option may change where or how the driver
    # connects (another host, a socket, a local file), so it is refused.
    adhoc_uri_options: ClassVar[Mapping[str, frozenset[str] | None]] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this engine cannot run here (missing driver or tool), or None when it can."""
        return None

    @classmethod
    def validate_options(
        cls, kind: str, options: Mapping[str, Any], settings: Settings | None = None
    ) -> dict[str, Any]:
        """Check a backup's or restore's ``options`` at submit time (``kind`` is "backup" or
        "restore") and return them normalised: the workflow's own (``compression``) here, for
        every engine, the rest by :meth:`validate_engine_options`. Every problem is reported."""
        own = WORKFLOW_OPTIONS[kind]
        clean: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        if "compression" in options and "compression" in own:
            if options["compression"] in CODEC_NAMES:
                clean["compression"] = options["compression"]
            else:
                errors.append({"pointer": "/options/compression", "detail": f"must be one of {', '.join(CODEC_NAMES)}"})
        rest = {key: value for key, value in options.items() if key not in own}
        try:
            clean.update(cls.validate_engine_options(kind, rest, settings))
        except ValidationFailed as exc:
            if not errors:
                raise
            errors = list(exc.errors or []) + errors
        if errors:
            raise ValidationFailed(
                f"Invalid {kind} options: " + "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors), errors=errors
            )
        return clean

    @classmethod
    def validate_engine_options(
        cls, kind: str, options: Mapping[str, Any], settings: Settings | None = None
    ) -> dict[str, Any]:
        """The engine's own options (``settings`` bound some, when given). Default: none."""
        if options:
            raise ValidationFailed(
                f"The {cls.name} engine takes no {kind} options; remove {', '.join(sorted(options))}.",
                errors=[{"pointer": f"/options/{key}", "detail": "unknown option"} for key in sorted(options)],
            )
        return {}

    @classmethod
    def restore_destination(cls, target: Target, manifest: BackupManifest, database: str | None) -> str | None:
        """The database a restore of ``manifest`` writes into when the request names ``database``
        (None: the target's own), or None when it keeps the archive's own names."""
        return database

    @classmethod
    def check_restore_destination(
        cls, target: Target, manifest: BackupManifest, database: str | None, allow_system_database: bool
    ) -> None:
        """Refuse, at submit, a restore into one of the server's own databases."""
        destination = cls.restore_destination(target, manifest, database)
        if destination is None:
            return
        pointer = "/database" if database else "/target"
        where = f"database {destination!r}" + ("" if database else f" (the own database of target {target.name!r})")
        errors = [{"pointer": pointer, "detail": f"{destination} is a {cls.name} system database"}]
        if destination in cls.forbidden_databases:
            raise SystemDatabaseRefused(
                f"A restore into {where} is never allowed: it is a {cls.name} system database that must stay "
                "as it is (a template is copied into every database created later). Choose another database.",
                errors=errors,
            )
        if destination in cls.system_databases and not allow_system_database:
            raise SystemDatabaseRefused(
                f"A restore into {where} needs \"allow_system_database\": true: it is a {cls.name} system "
                "database. Or choose another database.",
                errors=errors,
            )

    @classmethod
    def connection_address(cls, uri: str) -> ConnectionAddress:
        """Parse ``uri`` as the driver will, without connecting or reading any file; raise
        ValidationFailed (pointer /uri) for a URI the driver would refuse or that cannot be
        checked before connecting (e.g. hosts found through DNS SRV records)."""
        raise ValidationFailed(
            f"The {cls.name} engine takes no ad-hoc connections.",
            errors=[{"pointer": "/uri", "detail": f"the {cls.name} engine takes no ad-hoc connections"}],
        )

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
        sink: BinaryIO,
        progress: ProgressTracker,
        server: ServerInfo,
        options: Mapping[str, Any],
    ) -> DumpResult:
        """Stream the plain archive into ``sink`` (the workflow compresses and checksums it);
        raise DumpFailed (or a more specific error). ``options`` are the job's engine options,
        already checked by :meth:`validate_engine_options`."""

    @abstractmethod
    def prepare_restore(self, target: Target, manifest: BackupManifest, request: RestoreRequest) -> list[str]:
        """Make the destination ready (create a database, refuse a non-empty one...). Return the
        databases that did not exist before and that this restore creates (now, or while loading)."""

    def drop_database(self, target: Target, database: str) -> None:
        """Drop a database this restore created (called only for those :meth:`prepare_restore`
        returned). Default: nothing to drop."""

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

    def archive_kind(self, options: Mapping[str, Any]) -> tuple[str, str]:
        """(format, file name before the codec's extension) of a backup with these options."""
        return self.archive_format, self.archive_name

    @property
    def default_compression(self) -> str:
        """The codec of a backup that names none."""
        return self.settings.compression

    @property
    def codec_settings(self) -> Settings:
        """The settings that tune the codec of this engine's backups (default: the service's)."""
        return self.settings

    def import_codec(self, head: bytes) -> StreamCodec:
        """The codec an uploaded archive was compressed with, told by its first bytes (at least
        the first few, unless the upload is shorter): what a download of our own backups, or
        ``zstd``/``gzip`` by hand, wrapped around the engine's archive."""
        return codec_from_settings(detect_codec(head), self.settings)

    def import_archive_name(self, head: bytes) -> str:
        """The file name an uploaded archive is stored under: this engine's, with its codec's extension."""
        return self.archive_name + self.import_codec(head).extension

    def inspect_import(self, open_archive: Callable[[], BinaryIO]) -> ImportedArchive:
        """Read an uploaded archive (``open_archive()`` opens it from its start, decompressed, as
        often as the check needs) and tell whether this engine can restore it: raise
        ArchiveCorrupt with the reason when it cannot. Default: this engine imports nothing."""
        raise ArchiveCorrupt(f"The {self.name} engine does not import archives made elsewhere.")

    # ----------------------------------------------------------------- template methods

    def backup(
        self,
        target: Target,
        storage: Storage,
        backup_id: str,
        job_id: str,
        progress: ProgressTracker,
        options: Mapping[str, Any] | None = None,
        schedule_id: str | None = None,
    ) -> BackupManifest:
        started_wall, started = datetime.now(timezone.utc), time.monotonic()
        options = dict(options or {})
        codec = codec_from_settings(options.get("compression") or self.default_compression, self.codec_settings)
        engine_options = {key: value for key, value in options.items() if key not in WORKFLOW_OPTIONS["backup"]}
        archive_format, base_name = self.archive_kind(engine_options)
        archive_name = base_name + codec.extension
        progress.stage("connecting")
        server = self.probe(target)
        progress.stage("dumping")
        with storage.open_sink(backup_id, archive_name) as sink:
            hashing = HashingWriter(sink, progress)  # the checksum is of the stored bytes
            compressed = codec.writer(hashing)
            result = self.dump(target, compressed, progress, server, engine_options)
            compressed.close()  # the codec's trailer; the sink stays open until committed
            sink.commit()
        manifest = BackupManifest(
            id=backup_id,
            target=target.name,
            engine=self.name,
            format=archive_format,
            archive_name=archive_name,
            created_at=iso_utc(started_wall),
            finished_at=iso_utc(datetime.now(timezone.utc)),
            duration_seconds=round(time.monotonic() - started, 3),
            size_bytes=hashing.size,
            sha256=hashing.sha256,
            database=result.database,
            job_id=job_id,
            tool_version=result.tool_version or self.tool_version(),
            server_version=result.server_version or server.version,
            compression=codec.name,
            details=result.details,
            schedule_id=schedule_id,
            partial=bool(result.scope),
            scope=result.scope,
            encryption=sink.encryption,
        )
        try:
            storage.write_manifest(manifest)
        except BaseException:
            storage.delete(backup_id)
            raise
        progress.flush()
        return manifest

    def verify(self, storage: Storage, manifest: BackupManifest, progress: ProgressTracker) -> None:
        """Checksum and size against the manifest, and the engine's own structural check, in
        one read of the archive. A damaged archive is reported as a checksum mismatch whenever
        the checksum says so, whichever check noticed first."""
        progress.stage("verifying", bytes_total=manifest.size_bytes)
        codec = self._stored_codec(manifest)
        with storage.open_archive(manifest) as archive:
            reader = HashingReader(archive, progress)
            try:
                with codec.reader(reader) as plain:
                    self.verify_archive(plain, manifest, progress)
            except ArchiveCorrupt as exc:
                reader.drain(self.settings.stream_chunk_bytes)
                self._check_checksum(manifest, reader)
                raise exc
            reader.drain(self.settings.stream_chunk_bytes)
        self._check_checksum(manifest, reader)
        log.info("archive.verified", backup_id=manifest.id, size_bytes=reader.size)

    @staticmethod
    def _check_checksum(manifest: BackupManifest, reader: HashingReader) -> None:
        digest, size = reader.sha256, reader.size
        if digest != manifest.sha256 or size != manifest.size_bytes:
            raise ChecksumMismatch(
                f"Backup {manifest.id} does not match its manifest (sha256 {digest[:12]}..., {size} bytes; "
                f"expected {manifest.sha256[:12]}..., {manifest.size_bytes} bytes). The archive is damaged; "
                "restore another backup."
            )

    def restore(
        self,
        target: Target,
        storage: Storage,
        manifest: BackupManifest,
        request: RestoreRequest,
        progress: ProgressTracker,
    ) -> dict[str, Any]:
        source = self._verified_copy(storage, manifest, progress)
        progress.stage("connecting")
        self.probe(target)
        created = self.prepare_restore(target, manifest, request) or []
        progress.stage("restoring", bytes_total=manifest.size_bytes)
        codec = self._stored_codec(manifest)
        try:
            with source.open_archive(manifest) as archive, codec.reader(CountingReader(archive, progress)) as plain:
                details = self.load(target, plain, manifest, request, progress)
        except BaseException:
            # A failed (or cancelled) restore leaves no half-filled database it made itself behind;
            # a database that existed before is never dropped.
            self._drop_created(target, created)
            raise
        progress.flush()
        return details

    def _stored_codec(self, manifest: BackupManifest) -> StreamCodec:
        return stored_codec(manifest.compression, self.settings)

    def _verified_copy(self, storage: Storage, manifest: BackupManifest, progress: ProgressTracker) -> Storage:
        """The first copy of the archive that verifies: the primary, else a mirror."""
        copies = storage.copies()
        for number, copy in enumerate(copies, start=1):
            try:
                self.verify(copy, manifest, progress)
                return copy
            except (BackupNotFound, ArchiveCorrupt) as exc:
                if number == len(copies):
                    raise
                log.warning("restore.copy_unusable", backup_id=manifest.id, copy=copy.describe(), error=exc.message)
        raise BackupNotFound(f"Backup {manifest.id} has no copy to read.")  # no copies at all

    def _drop_created(self, target: Target, databases: list[str]) -> None:
        for database in databases:
            try:
                self.drop_database(target, database)
                log.info("restore.created_database_dropped", database=database)
            except Exception as exc:  # noqa: BLE001 - the restore's own error is the one to report
                log.warning("restore.created_database_not_dropped", database=database, error=redact(str(exc)))
