"""MongoDB: pymongo streams raw BSON into the ``mongodump --archive`` format; restore replays it.

No mongodump/mongorestore binary is needed. Documents travel as the raw bytes the server sent
(``find_raw_batches`` → archive → ``insert_many`` of ``RawBSONDocument``) and are never decoded,
so every BSON type survives byte for byte. ``FLEXDB_MONGO_PARALLEL_COLLECTIONS`` collections are
read (their blocks interleaved in the one archive, as mongodump does) or inserted into at once;
memory stays flat whatever a collection's size: about one server batch per collection being
read and one archive block, or one insert batch per collection being restored.

The archive is what ``mongorestore --archive`` reads; the backup workflow compresses it (zstd,
or gzip for ``mongorestore --archive --gzip``), and restore accepts archives written by the real
``mongodump --archive`` (plain, gzip or zstd).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any, BinaryIO

from bson.raw_bson import RawBSONDocument
from bson.son import SON

from shared.core.errors import (
    ArchiveCorrupt,
    AuthenticationFailed,
    DumpFailed,
    FlexDBError,
    RestoreFailed,
    TargetMisconfigured,
    TargetNotEmpty,
    TargetUnreachable,
    ValidationFailed,
)
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Settings, Target
from shared.domain.backups import BackupManifest
from shared.domain.engine import (
    BackupEngine,
    ConnectionAddress,
    DumpResult,
    ImportedArchive,
    RestoreRequest,
    ServerInfo,
)
from shared.domain.progress import ProgressTracker
from shared.domain.streams import HashingWriter
from shared.engines.mongodb_archive import (
    ArchiveReader,
    ArchiveWriter,
    CollectionEntry,
    DocumentBatch,
    NamespaceEnd,
    NamespaceStart,
    build_metadata,
    parse_server_version,
    verify,
)
from shared.engines.parallel import FanIn, SerialLanes, stopped_with_the_job
from shared.engines.registry import register

try:
    import pymongo
    from pymongo import MongoClient
    from pymongo.database import Database
    from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError
    from pymongo.errors import ConfigurationError as MongoConfigurationError
    from pymongo.uri_parser import parse_uri
except ImportError:  # the engine reports itself unavailable instead
    pymongo = None  # type: ignore[assignment]

log = get_logger(__name__)

SYSTEM_DATABASES = frozenset({"admin", "config", "local"})
BUCKETS_PREFIX = "system.buckets."
# Characters MongoDB refuses in a database name (and '.' which would split the namespace).
_DB_NAME_FORBIDDEN = frozenset('/\\. "$*<>:|?\0')
_DB_NAME_MAX_BYTES = 63
_AUTH_FAILED, _UNAUTHORIZED = 18, 13
# Blocks or insert batches smaller than this would only add headers and round trips.
_SMALLEST_BATCH_SHARE = 64 * 1024
# A dump's read batch and archive block get this part of a collection's byte share.
_READ_BATCHES_PER_SHARE = 4
_OPTION_KEYS = {"backup": ("collections", "exclude_collections"), "restore": ("collections",)}


# --------------------------------------------------------------------------- options


def validate_mongodb_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check backup/restore options; every problem is reported with its JSON pointer.

    backup: ``collections`` (only these) and ``exclude_collections``; restore: ``collections``.
    A name is a collection name (``orders``, ``a.b.c``) or a full namespace (``shop.orders``).
    """
    allowed = _OPTION_KEYS[kind]
    errors: list[dict[str, str]] = []
    clean: dict[str, Any] = {}
    for key in sorted(options):
        if key not in allowed:
            detail = f"unknown option; {kind} takes {', '.join(allowed)}"
            errors.append({"pointer": f"/options/{key}", "detail": detail})
            continue
        value = options[key]
        if not isinstance(value, list) or not value:
            errors.append({"pointer": f"/options/{key}", "detail": "must be a non-empty list of collection names"})
            continue
        bad = [i for i, name in enumerate(value) if not isinstance(name, str) or not name.strip() or "\0" in name]
        for index in bad:
            errors.append({"pointer": f"/options/{key}/{index}", "detail": "must be a non-empty collection name"})
        if not bad:
            clean[key] = list(dict.fromkeys(value))  # de-duplicated, order kept
    if errors:
        raise ValidationFailed(
            f"Invalid mongodb {kind} options: " + "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors),
            errors=errors,
        )
    return clean


@dataclass(frozen=True)
class CollectionFilter:
    """Which collections an operation covers: an include list (None = all) minus an exclude list."""

    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CollectionFilter:
        include = options.get("collections")
        return cls(frozenset(include) if include else None, frozenset(options.get("exclude_collections") or ()))

    @staticmethod
    def _names(db: str, collection: str) -> set[str]:
        return {collection, f"{db}.{collection}"}

    def admits(self, db: str, collection: str) -> bool:
        names = self._names(db, collection)
        if names & self.exclude:
            return False
        return self.include is None or bool(names & self.include)

    def unmatched(self, namespaces: Sequence[tuple[str, str]]) -> list[str]:
        """Included names that match none of ``namespaces`` (a typo the user must hear about)."""
        if self.include is None:
            return []
        seen: set[str] = set()
        for db, collection in namespaces:
            seen |= self._names(db, collection)
        return sorted(self.include - seen)


# --------------------------------------------------------------------------- pure helpers


def server_version_of(build_info: Mapping[str, Any]) -> str:
    """``X.Y.Z`` for the archive header (mongorestore 100.16+ refuses anything else)."""
    version = str(build_info.get("version") or "")
    if parse_server_version(version) is not None:
        return version
    parts = [int(p) for p in (build_info.get("versionArray") or [])[:3] if isinstance(p, int)]
    if parts:
        return ".".join(str(p) for p in (parts + [0, 0, 0])[:3])
    raise DumpFailed(f"The server reports version {version!r}, which is not MAJOR.MINOR.PATCH.")


def check_database_name(name: str) -> str:
    bad = sorted(set(name) & _DB_NAME_FORBIDDEN)
    if not name or bad or len(name.encode()) > _DB_NAME_MAX_BYTES:
        raise ValidationFailed(
            f"Database name {name!r} is not allowed in MongoDB: use 1-63 bytes without / \\ . space \" $ * < > : | ?.",
            errors=[{"pointer": "/database", "detail": "not a valid MongoDB database name"}],
        )
    return name


_REFUSED = re.compile(r"(?P<endpoint>[^\s,'(<]+:\d+): \[Errno \d+\] Connection refused")


def classify_error(exc: BaseException, target: Target, failure: type[FlexDBError]) -> FlexDBError:
    """Map a pymongo exception to the one error hierarchy. Messages never carry the URI password."""
    where = f"Target {target.name!r}"
    # pymongo appends the server's full reply or the topology dump: the first clause says it all
    text = redact(str(exc).split(", full error:")[0].split(", Timeout:")[0].split(" (configured timeouts")[0])
    if isinstance(exc, OperationFailure) and (exc.code == _AUTH_FAILED or "authentication failed" in text.lower()):
        return AuthenticationFailed(
            f"{where}: the MongoDB server refused the credentials ({text}). Check the user, password "
            "and authSource in the target's URI."
        )
    if isinstance(exc, OperationFailure) and exc.code == _UNAUTHORIZED:
        if not _has_credentials(target):
            return AuthenticationFailed(
                f"{where}: the MongoDB server requires credentials ({text}). Put a user and password in the "
                "target's URI (mongodb://user:password@host:27017/database?authSource=admin)."
            )
        return AuthenticationFailed(
            f"{where}: the MongoDB server refused the operation ({text}). Put a user with the backup/restore "
            "roles in the target's URI."
        )
    if isinstance(exc, ConnectionFailure):  # includes ServerSelectionTimeoutError and AutoReconnect
        refused = list(dict.fromkeys(m["endpoint"] for m in _REFUSED.finditer(str(exc))))
        if refused:
            return TargetUnreachable(
                f"{where}: connection refused at {', '.join(refused)}. Check that the MongoDB server is up and "
                "the host and port in the target's URI are right."
            )
        return TargetUnreachable(
            f"{where}: cannot reach the MongoDB server ({text}). Check that it is up and the host and port "
            "in the target's URI are right."
        )
    if isinstance(exc, (MongoConfigurationError, ValueError)):  # pymongo's URI parser raises both
        return TargetMisconfigured(f"{where}: the MongoDB URI is not usable ({text}).")
    if isinstance(exc, OSError):  # a file the URI names (tlsCAFile, tlsCertificateKeyFile...) cannot be read
        return TargetMisconfigured(
            f"{where}: a file named in the target's URI cannot be read ({text}). Fix the TLS options of the URI."
        )
    return failure(f"{where}: {text}")


def _has_credentials(target: Target) -> bool:
    try:
        parsed = parse_uri(target.uri, validate=False)
    except (PyMongoError, ValueError):
        return False
    mechanism = str((parsed.get("options") or {}).get("authMechanism") or "")
    # X.509 and Kerberos-like mechanisms authenticate without a password in the URI
    return bool(parsed.get("username")) or mechanism.upper() not in {"", "DEFAULT", "SCRAM-SHA-1", "SCRAM-SHA-256"}


def _index_spec(spec: Mapping[str, Any]) -> SON:
    """A listIndexes document as createIndexes takes it (``ns`` is only reported by old servers)."""
    return SON((key, value) for key, value in spec.items() if key != "ns")


# --------------------------------------------------------------------------- restore plan


@dataclass
class RestorePlan:
    """Where each archived namespace goes; None for those left out."""

    destinations: dict[tuple[str, str], str]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        namespaces: Sequence[tuple[str, str]],
        request: RestoreRequest,
        target_database: str | None,
    ) -> RestorePlan:
        """``namespaces``: (db, collection) pairs of the archive, oplog and system ones included."""
        only = CollectionFilter.from_options(request.options)
        # the oplog ("" db), users/roles ($admin.*) and system databases are never restored here
        restorable = [(db, c) for db, c in namespaces if db and db not in SYSTEM_DATABASES and not c.startswith("$")]
        missing = only.unmatched(restorable)
        if missing:
            raise ValidationFailed(
                f"The backup holds no collection named {', '.join(missing)}.",
                errors=[{"pointer": "/options/collections", "detail": f"not in the backup: {', '.join(missing)}"}],
            )
        databases = sorted({db for db, _ in restorable})
        into = request.database or (target_database if len(databases) == 1 else None)
        if request.database and len(databases) > 1:
            raise ValidationFailed(
                f"This backup holds {len(databases)} databases ({', '.join(databases)}); it can only be restored "
                'into their own names. Leave out "database".',
                errors=[{"pointer": "/database", "detail": "not allowed for a backup of several databases"}],
            )
        if into:
            check_database_name(into)
        plan, wanted = cls({}), set(restorable)
        for db, collection in namespaces:
            if (db, collection) in wanted and only.admits(db, collection):
                plan.destinations[(db, collection)] = into or db
            else:
                plan.skipped.append(f"{db}.{collection}")
        return plan

    def destination(self, entry: CollectionEntry) -> str | None:
        return self.destinations.get(entry.key)

    @property
    def databases(self) -> list[str]:
        return sorted(set(self.destinations.values()))


# --------------------------------------------------------------------------- the engine


@register
class MongoDBEngine(BackupEngine):
    name = "mongodb"
    archive_format = "mongodump-archive"
    archive_name = "archive"
    system_databases = SYSTEM_DATABASES
    # Everything else may read local files (tlsCAFile, tlsCertificateKeyFile...), go through a
    # proxy (proxyHost), turn off certificate checks, or log in through another service
    # (authMechanism MONGODB-AWS asks the cloud metadata address, GSSAPI a Kerberos server).
    adhoc_uri_options = MappingProxyType({
        "authsource": None,
        "authmechanism": frozenset({"DEFAULT", "SCRAM-SHA-1", "SCRAM-SHA-256"}),
        "replicaset": None,
        "readpreference": None,
        "directconnection": None,
        "tls": None,
        "ssl": None,
        "appname": None,
    })

    @classmethod
    def connection_address(cls, uri: str) -> ConnectionAddress:
        def refuse(detail: str) -> ValidationFailed:
            return ValidationFailed(f"The MongoDB URI cannot be used: {detail}.", errors=[{"pointer": "/uri", "detail": detail}])

        if not uri.startswith("mongodb://"):
            # mongodb+srv:// learns its hosts and options from DNS records, after any check here
            raise refuse("write it as mongodb://user:password@host:27017/database (mongodb+srv:// is not taken here)")
        try:
            # validate=False: validating would read the files the options name
            parsed = parse_uri(uri, validate=False, warn=True, normalize=False)
        except (PyMongoError, ValueError) as exc:
            raise refuse(f"pymongo refuses it ({redact(str(exc))})") from None
        # pymongo ignores the case of option names (and splits on ';' as on '&'): use its reading
        options = {str(key).lower(): str(value) for key, value in (parsed.get("options") or {}).items()}
        nodes = [str(host) for host, _ in parsed.get("nodelist") or []]
        sockets = tuple(host for host in nodes if host.startswith("/") or host.endswith(".sock"))
        return ConnectionAddress(hosts=tuple(h for h in nodes if h not in sockets), sockets=sockets, options=options)

    @property
    def default_compression(self) -> str:
        # FLEXDB_MONGO_COMPRESSION predates FLEXDB_COMPRESSION: where a deployment set it, it stays
        return self.settings.mongo_compression or self.settings.compression

    @property
    def codec_settings(self) -> Settings:
        return replace(self.settings, zstd_long=self.settings.mongo_zstd_long)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if pymongo is None:
            return "the pymongo driver is not installed"
        return None

    @classmethod
    def validate_engine_options(
        cls, kind: str, options: Mapping[str, Any], settings: Settings | None = None
    ) -> dict[str, Any]:
        return validate_mongodb_options(kind, options)

    def tool_version(self) -> str:
        return f"pymongo {pymongo.version}"

    # ------------------------------------------------------------------ connections

    def _client(self, target: Target) -> MongoClient:
        timeout_ms = self.settings.connect_timeout_seconds * 1000
        try:
            return MongoClient(
                target.uri,
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                appname="flexdb",
                connect=False,
            )
        except (PyMongoError, ValueError, OSError) as exc:  # OSError: a TLS file the URI names
            raise classify_error(exc, target, TargetMisconfigured) from None

    @contextmanager
    def _session(self, target: Target, failure: type[FlexDBError]) -> Iterator[MongoClient]:
        """A client for one operation; pymongo errors leave it as errors of our hierarchy."""
        client = self._client(target)
        try:
            yield client
        except BulkWriteError as exc:
            raise failure(self._bulk_message(target, exc)) from None
        except PyMongoError as exc:
            raise classify_error(exc, target, failure) from None
        finally:
            client.close()

    @classmethod
    def restore_destination(cls, target: Target, manifest: BackupManifest, database: str | None) -> str | None:
        # As RestorePlan decides: a backup of one database goes into "database", else into the
        # target's own; a backup of several keeps their names (never a system one, see there).
        if database:
            return database
        return cls._uri_database(target) if manifest.database else None

    @staticmethod
    def _uri_database(target: Target) -> str | None:
        try:
            # validate=False: validating would read the TLS files the URI names
            return parse_uri(target.uri, validate=False).get("database") or None
        except (PyMongoError, ValueError):
            return None  # MongoClient reports the bad URI with a proper message

    def _databases(self, client: MongoClient, target: Target) -> list[str]:
        own = self._uri_database(target)
        if own:
            return [own]
        return sorted(name for name in client.list_database_names() if name not in SYSTEM_DATABASES)

    # ------------------------------------------------------------------ probe

    def probe(self, target: Target) -> ServerInfo:
        with self._session(target, TargetUnreachable) as client:
            started = time.monotonic()
            build = client.admin.command("buildInfo")
            latency_ms = round((time.monotonic() - started) * 1000, 1)
            databases = self._databases(client, target)
            details: dict[str, Any] = {"databases": databases, "database": self._uri_database(target)}
            if details["database"]:
                # buildInfo answers anyone; listing collections needs a login where auth is on, so
                # a target without credentials fails its check instead of its first backup.
                details["collections"] = len(client[details["database"]].list_collection_names())
        return ServerInfo(version=server_version_of(build), latency_ms=latency_ms, details=details)

    # ------------------------------------------------------------------ backup

    def dump(
        self,
        target: Target,
        sink: HashingWriter,
        progress: ProgressTracker,
        server: ServerInfo,
        options: Mapping[str, Any],
    ) -> DumpResult:
        # A job's options narrow what the target's own options select.
        merged = validate_mongodb_options("backup", {**dict(target.options), **dict(options)})
        scope = CollectionFilter.from_options(merged)
        with self._session(target, DumpFailed) as client:
            databases = self._databases(client, target)
            plan = [entry for db in databases for entry in self._entries(client, db, scope)]
            missing = scope.unmatched(self._all_names(client, databases)) if scope.include else []
            if missing:
                raise ValidationFailed(
                    f"Target {target.name!r} has no collection named {', '.join(missing)}.",
                    errors=[{"pointer": "/options/collections", "detail": f"not found: {', '.join(missing)}"}],
                )
            sources = {e.key: self._data_source(client, e) for e in plan}
            # estimates are cheap (collection metadata) and good enough for a percent
            estimates = {key: client[db][name].estimated_document_count() for key, (db, name) in sources.items() if name}
            progress.set_total(sum(estimates.values()) or None)
            # the biggest collections are read first, so the dump does not end on one of them alone
            plan_by_size = sorted(plan, key=lambda entry: -estimates.get(entry.key, 0))
            counts = self._write_archive(client, plan, sources, sink, progress, server, plan_by_size)
        log.info("mongodb.dump_finished", databases=databases, namespaces=len(plan), documents=sum(counts.values()))
        return DumpResult(
            database=databases[0] if len(databases) == 1 else None,
            server_version=server.version,
            scope=merged,  # collections / exclude_collections: a partial backup
            details={
                "databases": databases,
                "namespaces": counts,
                "views": sorted(e.namespace for e in plan if e.is_view),
            },
        )

    @staticmethod
    def _all_names(client: MongoClient, databases: list[str]) -> list[tuple[str, str]]:
        return [(db, name) for db in databases for name in client[db].list_collection_names()]

    def _entries(self, client: MongoClient, db: str, scope: CollectionFilter) -> list[CollectionEntry]:
        """Prelude entries of one database: collections first, then views (which may read them)."""
        collections, views = [], []
        for info in client[db].list_collections():
            name, kind = info["name"], info.get("type", "collection")
            if name.startswith("system.") or not scope.admits(db, name):
                continue  # system.* are the server's own (views, buckets, profile...)
            options = info.get("options") or {}
            if kind == "view" or "viewOn" in options:
                meta = build_metadata(collection_name=name, options=options, type="view")
                views.append(CollectionEntry(db, name, meta, "view"))
                continue
            kind = "timeseries" if "timeseries" in options else kind
            indexes = list(client[db][name].list_indexes())
            uuid = (info.get("info") or {}).get("uuid")
            meta = build_metadata(collection_name=name, options=options, indexes=indexes, uuid=uuid, type=kind)
            collections.append(CollectionEntry(db, name, meta, kind))
        return collections + views

    @staticmethod
    def _data_source(client: MongoClient, entry: CollectionEntry) -> tuple[str, str | None]:
        """Which collection holds an entry's documents: none for a view, the buckets for timeseries."""
        if entry.is_view:
            return entry.db, None
        if not entry.is_timeseries:
            return entry.db, entry.collection
        buckets = BUCKETS_PREFIX + entry.collection
        if client[entry.db].list_collection_names(filter={"name": buckets}):
            return entry.db, buckets  # what mongodump reads and mongorestore writes back
        raise DumpFailed(
            f"Timeseries collection {entry.namespace}: the server does not expose its buckets ({buckets}), so "
            'it cannot be dumped in the mongodump format. Leave it out with "exclude_collections".'
        )

    def _write_archive(
        self,
        client: MongoClient,
        plan: list[CollectionEntry],
        sources: dict[tuple[str, str], tuple[str, str | None]],
        sink: HashingWriter,
        progress: ProgressTracker,
        server: ServerInfo,
        read_order: list[CollectionEntry],
    ) -> dict[str, int]:
        # the header's concurrent_collections tells mongorestore how many namespaces may be open at once
        parallel = self.settings.mongo_parallel_collections
        # the writer holds at most one block of documents per open namespace before writing it out;
        # a block keeps the read batches it points into alive, so it is no bigger than one of them
        block = self._read_batch_bytes
        writer = ArchiveWriter(sink, server.version, self.tool_version(), parallel, block_size=block)
        try:
            writer.write_prelude(plan)
        except ValueError as exc:  # metadata that would not survive Extended JSON, as mongodump refuses
            raise DumpFailed(f"The collection metadata cannot be written as a mongodump archive: {exc}") from None
        counts = {entry.namespace: 0 for entry in plan}
        # One thread writes the archive; readers hand it raw batches through a bounded channel, so
        # each collection being read holds about one server batch, and the writer one block.
        read = partial(self._read_collection, client, sources)
        with FanIn(read_order, read, workers=parallel, capacity=parallel, name="mongodb-dump") as batches:
            with stopped_with_the_job(progress, batches):
                for entry, batch in batches:
                    db, source = sources[entry.key]
                    if batch is not None:
                        taken = writer.write_documents(db, source or entry.collection, (batch,))
                        counts[entry.namespace] += taken
                        progress.add_items(taken, current=entry.namespace)
                        continue
                    writer.finish_namespace(entry.db, source or entry.collection)  # read to its end
                    progress.add_items(0, current=entry.namespace)
                    log.info(
                        "mongodb.collection_dumped",
                        namespace=entry.namespace,
                        type=entry.type,
                        documents=counts[entry.namespace],
                    )
        writer.finish()
        return counts

    def _share(self, total: int, smallest: int) -> int:
        """One collection's share of a memory budget that the collections in flight split among
        them, so the worker's memory does not grow with FLEXDB_MONGO_PARALLEL_COLLECTIONS."""
        return max(total // self.settings.mongo_parallel_collections, smallest)

    @property
    def _batch_share(self) -> int:
        """Bytes of documents one collection in flight holds: an archive block, an insert batch."""
        return self._share(self.settings.mongo_batch_bytes, _SMALLEST_BATCH_SHARE)

    @property
    def _read_batch_bytes(self) -> int:
        """Bytes a dump's read batch, and archive block, aims at: a part of the collection's
        share, since the driver holds a batch about four times over while it arrives (message,
        payload, cursor document, documents) and the channel and the archive writer hold those
        before it."""
        return max(self._batch_share // _READ_BATCHES_PER_SHARE, _SMALLEST_BATCH_SHARE)

    def _read_batch_docs(self, db: Database, collection: str) -> int:
        """Documents per server batch of one collection (0: the server's default, up to 16 MiB):
        its share of FLEXDB_MONGO_READ_BATCH_DOCS, fewer when its documents are big, so that a
        batch stays near ``_read_batch_bytes`` (by count alone, a batch of big documents reaches
        the server's 16 MiB)."""
        docs = self.settings.mongo_read_batch_docs
        share = self._share(docs, 1) if docs else 0
        try:
            average = float(db.command("collStats", collection).get("avgObjSize") or 0)
        except PyMongoError:  # no collStats for this user, or not on this server: count alone
            return share
        if average <= 0:
            return share
        by_size = max(int(self._read_batch_bytes // average), 1)
        return min(share, by_size) if share else by_size

    def _read_collection(
        self,
        client: MongoClient,
        sources: dict[tuple[str, str], tuple[str, str | None]],
        entry: CollectionEntry,
        emit: Callable[[tuple[CollectionEntry, bytes | None]], None],
    ) -> None:
        """Runs on a reader thread: every raw batch of one collection, then None for its end."""
        db, source = sources[entry.key]
        if source is not None:
            batch_size = self._read_batch_docs(client[db], source)
            with client[db][source].find_raw_batches(batch_size=batch_size) as cursor:
                for batch in cursor:
                    emit((entry, batch))
        emit((entry, None))

    # ------------------------------------------------------------------ restore

    def verify_archive(self, archive: BinaryIO, manifest: BackupManifest, progress: ProgressTracker) -> None:
        """Read the whole archive (framing, prelude, every CRC) before the target is touched."""
        summary = verify(archive, read_size=self.settings.stream_chunk_bytes)
        expected = manifest.details.get("namespaces") if isinstance(manifest.details, dict) else None
        if isinstance(expected, dict):
            found = {ns: s.documents for ns, s in summary.namespaces.items()}
            if found != expected:
                raise ArchiveCorrupt(
                    f"Backup {manifest.id}: the archive's collections or document counts differ from its manifest; "
                    "restore another backup."
                )
        log.info("mongodb.archive_verified", backup_id=manifest.id, documents=summary.total_documents)

    # ------------------------------------------------------------------ import

    def inspect_import(self, open_archive: Callable[[], BinaryIO]) -> ImportedArchive:
        """A ``mongodump --archive`` file (plain, or gzip or zstd around it: the workflow opens it
        decompressed): the whole archive is read and checked as before a restore (framing,
        prelude, every block's CRC)."""
        with open_archive() as archive:
            try:
                summary = verify(archive, read_size=self.settings.stream_chunk_bytes)
            except ArchiveCorrupt as exc:
                raise ArchiveCorrupt(f"This is not a readable mongodump archive: {exc.message}") from None
        databases = sorted({entry.db for entry in summary.entries})
        return ImportedArchive(
            archive_format=self.archive_format,
            database=databases[0] if len(databases) == 1 else None,
            server_version=summary.header.server_version or None,
            tool_version=summary.header.tool_version or None,
            details={
                "databases": databases,
                # Not "namespaces": a restore then plans from the archive's own prelude, as for
                # any archive made elsewhere (oplog and system collections included).
                "documents": {ns: s.documents for ns, s in summary.namespaces.items()},
                "views": sorted(entry.namespace for entry in summary.entries if entry.is_view),
            },
        )

    def prepare_restore(self, target: Target, manifest: BackupManifest, request: RestoreRequest) -> list[str]:
        """Refuse early when the manifest names the namespaces (load checks again from the archive).
        Returns the destination databases that do not exist yet (MongoDB creates them on the first write)."""
        if request.database:
            check_database_name(request.database)
        namespaces = (manifest.details or {}).get("namespaces")
        if not isinstance(namespaces, dict):
            # an archive brought from elsewhere: load plans from its prelude
            destinations = [name for name in (request.database or self._uri_database(target),) if name]
            with self._session(target, RestoreFailed) as client:
                return self._missing_databases(client, destinations)
        keys = [tuple(ns.split(".", 1)) for ns in namespaces]
        plan = RestorePlan.build([(k[0], k[1]) for k in keys if len(k) == 2], request, self._uri_database(target))
        with self._session(target, RestoreFailed) as client:
            self._refuse_occupied(client, plan, request, target)
            return self._missing_databases(client, plan.databases)

    @staticmethod
    def _missing_databases(client: MongoClient, databases: Sequence[str]) -> list[str]:
        existing = set(client.list_database_names())
        return [name for name in databases if name not in existing]

    def drop_database(self, target: Target, database: str) -> None:
        with self._session(target, RestoreFailed) as client:
            client.drop_database(database)

    def _refuse_occupied(self, client: MongoClient, plan: RestorePlan, request: RestoreRequest, target: Target) -> None:
        if request.drop:
            return
        occupied = []
        for (_, collection), db in plan.destinations.items():
            infos = list(client[db].list_collections(filter={"name": collection}))
            if not infos:
                continue
            # a view cannot take documents, so it is in the way just as a collection with data is
            if infos[0].get("type") == "view" or client[db][collection].find_one({}, {"_id": 1}) is not None:
                occupied.append(f"{db}.{collection}")
        if occupied:
            shown = ", ".join(occupied[:5]) + (f" and {len(occupied) - 5} more" if len(occupied) > 5 else "")
            raise TargetNotEmpty(
                f"Target {target.name!r} already holds data in {shown}. Restore with \"drop\": true to replace "
                'those collections, or into another "database".'
            )

    def load(
        self,
        target: Target,
        archive: BinaryIO,
        manifest: BackupManifest,
        request: RestoreRequest,
        progress: ProgressTracker,
    ) -> dict[str, Any]:
        reader = ArchiveReader(
            archive, batch_bytes=self._batch_share, read_size=self.settings.stream_chunk_bytes
        )
        plan = RestorePlan.build([e.key for e in reader.entries], request, self._uri_database(target))
        counts = (manifest.details or {}).get("namespaces") or {}
        expected = [counts.get(f"{db}.{collection}") for db, collection in plan.destinations]
        progress.set_total(sum(n for n in expected if isinstance(n, int)) or None)
        parallel = self.settings.mongo_parallel_collections
        with self._session(target, RestoreFailed) as client:
            self._refuse_occupied(client, plan, request, target)
            # The archive is read on this thread; inserts run on others, at most `parallel` batches
            # waiting or running at a time (memory), those of one collection in archive order.
            with SerialLanes(workers=parallel, capacity=parallel, name="mongodb-restore") as lanes:
                with stopped_with_the_job(progress, lanes):
                    loader = _NamespaceLoader(client, plan, request.drop, progress, lanes)
                    for event in reader:
                        loader.handle(event)
                    lanes.join()
        for namespace in plan.skipped:
            log.info("mongodb.namespace_skipped", namespace=namespace)
        return {
            "databases": plan.databases,
            "namespaces": loader.restored,
            "documents": sum(loader.restored.values()),
            "dropped_existing": request.drop,
        }

    @staticmethod
    def _bulk_message(target: Target, exc: BulkWriteError) -> str:
        errors = exc.details.get("writeErrors") or [{}]
        first = redact(str(errors[0].get("errmsg", "unknown error")))
        return (
            f"Target {target.name!r}: the server refused {len(errors)} document(s) (first: {first}). "
            "Collections restored before this one stay in place."
        )


class _NamespaceLoader:
    """Replays archive events into the server: create, insert raw batches, then build indexes.

    Each namespace is a lane: its steps run one after the other in archive order (so indexes
    are built once all its documents are in, and a capped collection keeps its order), while
    the lanes of different namespaces run in parallel."""

    def __init__(
        self, client: MongoClient, plan: RestorePlan, drop: bool, progress: ProgressTracker, lanes: SerialLanes
    ) -> None:
        self._client = client
        self._plan = plan
        self._drop = drop
        self._progress = progress
        self._lanes = lanes
        self.restored: dict[str, int] = {}  # keys set here, in archive order; counts by each lane

    def handle(self, event: NamespaceStart | DocumentBatch | NamespaceEnd) -> None:
        db_name = self._plan.destination(event.entry)
        if db_name is None:
            return
        db = self._client[db_name]
        step: Callable[[], None]
        if isinstance(event, NamespaceStart):
            self.restored[f"{db.name}.{event.entry.collection}"] = 0
            step = partial(self._create, db, event.entry)
        elif isinstance(event, DocumentBatch):
            step = partial(self._insert, db, event)
        else:
            step = partial(self._finish, db, event)
        self._lanes.submit(event.entry.key, step)

    def _create(self, db: Database, entry: CollectionEntry) -> None:
        if self._drop:
            db.drop_collection(entry.collection)
        elif db.list_collection_names(filter={"name": entry.collection}):
            return  # empty and not dropped (checked before): keep it, as mongorestore does
        command = SON([("create", entry.collection)])
        command.update(entry.options)
        # the _id index comes with the collection; idIndex keeps its options (collation...)
        id_index = next((ix for ix in entry.indexes if ix.get("name") == "_id_"), None)
        plain = not (entry.is_view or entry.is_timeseries or "clusteredIndex" in entry.options)
        if id_index is not None and plain:
            command["idIndex"] = _index_spec(id_index)
        db.command(command)

    def _insert(self, db: Database, batch: DocumentBatch) -> None:
        documents = [RawBSONDocument(raw) for raw in batch.documents]
        # unordered and without validation, like mongorestore: the data was valid where it came from
        db[batch.body_collection].insert_many(documents, ordered=False, bypass_document_validation=True)
        namespace = f"{db.name}.{batch.entry.collection}"
        self.restored[namespace] += len(documents)
        self._progress.add_items(len(documents), current=namespace)

    def _finish(self, db: Database, end: NamespaceEnd) -> None:
        entry = end.entry
        specs = [_index_spec(ix) for ix in entry.indexes if ix.get("name") != "_id_"]
        if specs and not entry.is_view:
            db.command(SON([("createIndexes", entry.collection), ("indexes", specs)]))
        namespace = f"{db.name}.{entry.collection}"
        log.info(
            "mongodb.collection_restored",
            namespace=namespace,
            source=entry.namespace,
            documents=self.restored.get(namespace, 0),
            indexes=len(specs),
        )
