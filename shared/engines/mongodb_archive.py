"""Streaming codec for the ``mongodump --archive`` file format.

Byte layout (integers little-endian; "doc" = one BSON document; TERM = ``FF FF FF FF``)::

    archive = MAGIC(6D E2 99 81)  HEADER-doc  COLLMETA-doc*  TERM      # prelude
              BLOCK*                                                  # body, then end of stream
    BLOCK   = NS-HEADER-doc{db, collection, EOF, CRC}  DATA-doc*  TERM

Every namespace listed in the prelude appears in the body as one or more data blocks
(``EOF: false``) and then exactly one EOF block (``EOF: true``, no documents) whose ``CRC`` is the
CRC-64/XZ of all the namespace's data-document bytes, stored as an int64 bit pattern. Blocks of
different namespaces may interleave. ``--gzip`` compresses the whole stream as one unit.

Documents are moved as raw bytes and never decoded. Nothing here touches a database or the
network: the classes work on binary file-like objects (``.write(bytes)`` / ``.read(n)``).
"""

from __future__ import annotations

import struct
import uuid as uuid_module
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import bson
from bson import json_util
from bson.binary import Binary
from bson.errors import BSONError
from bson.int64 import Int64

from shared.core.errors import ArchiveCorrupt, ChecksumMismatch, DumpFailed
# The codecs are the backup workflow's, for every engine; re-exported for archive readers here.
from shared.domain.codecs import (
    GZIP_MAGIC,
    ZSTD_MAGIC,
    detect_codec,
    open_compressed_writer,
    open_decompressing_reader,
)

try:  # The CRC runs over every byte of every document: it must be C, not a Python loop.
    import anycrc as _anycrc
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "shared.engines.mongodb_archive needs the 'anycrc' package for CRC-64/XZ (pip install anycrc==2.1.0)"
    ) from exc

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BLOCK_SIZE",
    "MAGIC",
    "MAX_DOC_SIZE",
    "OPLOG_COLLECTION",
    "OPLOG_DB",
    "TERM",
    "ArchiveEvent",
    "ArchiveHeader",
    "ArchiveReader",
    "ArchiveSummary",
    "ArchiveWriter",
    "Codec",
    "CollectionEntry",
    "DocumentBatch",
    "NamespaceEnd",
    "NamespaceStart",
    "NamespaceSummary",
    "build_metadata",
    "crc64_update",
    "crc_to_int64",
    "decode_metadata",
    "detect_codec",
    "encode_metadata",
    "open_compressed_writer",
    "open_decompressing_reader",
    "parse_server_version",
    "verify",
]

# --- format constants -----------------------------------------------------------------------

MAGIC = b"\x6d\xe2\x99\x81"  # uint32 0x8199E26D, little-endian
TERM = b"\xff\xff\xff\xff"
_TERM_VALUE = 0xFFFFFFFF
MIN_DOC_SIZE = 5  # int32 length + the trailing 0x00
MAX_DOC_SIZE = 16 * 1024 * 1024  # mongo-tools refuses larger lengths
ARCHIVE_FORMAT_VERSION = "0.1"  # the only version there has ever been

DEFAULT_BLOCK_SIZE = 16 * 1024 * 1024  # what mongodump buffers per chunk
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_READ_SIZE = 1024 * 1024

OPLOG_DB, OPLOG_COLLECTION = "", "oplog"
_BUCKETS_PREFIX = "system.buckets."
_RAWDATA_TIMESERIES_SINCE = (8, 3, 0)  # from 8.3 timeseries data lives under the user name

_U64_MASK = (1 << 64) - 1
_UINT32 = struct.Struct("<I")
_NS_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "db": (str,),
    "collection": (str,),
    "EOF": (bool,),
    "CRC": (Int64,),  # must be BSON int64 (0x12); int32 is refused by mongorestore 100.14+
}
_METADATA_JSON_OPTIONS = json_util.CANONICAL_JSON_OPTIONS

Codec = Literal["gzip", "zstd", "none"]

BytesLike = bytes | bytearray | memoryview
Namespace = tuple[str, str]  # (db, collection) of a prelude entry


class WritableStream(Protocol):
    def write(self, data: bytes, /) -> object: ...


class ReadableStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# --- CRC-64/XZ ------------------------------------------------------------------------------

_CRC64_XZ = _anycrc.Model("CRC64-XZ")  # immutable parameter table, shared read-only


def crc64_update(crc: int, data: BytesLike) -> int:
    """Continue a CRC-64/XZ (Go's ``crc64.ECMA``) over ``data``; start with ``crc = 0``."""
    return _CRC64_XZ.calc(data, crc)


def crc_to_int64(crc: int) -> int:
    """The signed value under which the archive stores an unsigned CRC (same 8 bytes)."""
    crc &= _U64_MASK
    return crc - (1 << 64) if crc >= (1 << 63) else crc


def parse_server_version(text: str) -> tuple[int, int, int] | None:
    """``"7.0.12-rc1+x"`` -> ``(7, 0, 12)``; None when it is not MAJOR.MINOR.PATCH."""
    core = text
    for sep in ("-", "+"):
        core = core.split(sep, 1)[0]
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


# --- metadata JSON --------------------------------------------------------------------------


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """Canonical Extended JSON v2, compact, key order kept; ``""`` for no metadata.

    Like mongodump 100.11+, refuse metadata that would not decode back to the same BSON, so a
    bad value fails the dump instead of the restore.
    """
    if not metadata:
        return ""
    text = json_util.dumps(metadata, json_options=_METADATA_JSON_OPTIONS, separators=(",", ":"), ensure_ascii=False)
    if bson.encode(decode_metadata(text)) != bson.encode(metadata):
        raise ValueError(f"collection metadata does not round-trip through Extended JSON: {text[:200]}")
    return text


def decode_metadata(text: str) -> dict[str, Any]:
    """Parse a metadata string (canonical or legacy JSON) into an ordered dict; ``""`` -> ``{}``.

    Raises ValueError for invalid JSON, TypeError when it is not an object of the right shape.
    """
    if text == "":
        return {}
    value = json_util.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"metadata is a JSON {type(value).__name__}, not an object")
    if not isinstance(value.get("options", {}), dict):
        raise TypeError("metadata 'options' is not an object")
    if not isinstance(value.get("indexes", []), list):
        raise TypeError("metadata 'indexes' is not an array")
    return value


def _uuid_hex(value: str | uuid_module.UUID | Binary | bytes) -> str:
    """The 32-lowercase-hex form mongodump writes (not an EJSON $binary)."""
    if isinstance(value, uuid_module.UUID):
        return value.hex
    if isinstance(value, (Binary, bytes)):
        return bytes(value).hex()
    return uuid_module.UUID(value).hex


def build_metadata(
    *,
    collection_name: str,
    options: Mapping[str, Any] | None = None,
    indexes: Iterable[Mapping[str, Any]] = (),
    uuid: str | uuid_module.UUID | Binary | bytes | None = None,
    type: str = "collection",
) -> dict[str, Any]:
    """Metadata dict with the keys in mongodump's order (options, indexes, uuid, collectionName, type)."""
    meta: dict[str, Any] = {}
    if options:  # mongodump 100.0+ leaves out empty options
        meta["options"] = dict(options)
    meta["indexes"] = [dict(ix) for ix in indexes]  # always present, [] for views
    if uuid is not None:
        meta["uuid"] = _uuid_hex(uuid)
    meta["collectionName"] = collection_name
    if type:
        meta["type"] = type
    return meta


# --- value types ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveHeader:
    """The archive header doc that follows the magic number."""

    concurrent_collections: int
    version: str
    server_version: str
    tool_version: str

    @property
    def server_version_tuple(self) -> tuple[int, int, int] | None:
        return parse_server_version(self.server_version)

    @property
    def timeseries_in_buckets(self) -> bool:
        """Whether timeseries data is stored under ``system.buckets.X`` (sources before 8.3).

        An unparseable version (e.g. ``"unknown"``) is treated as "before 8.3", the only case
        tools that wrote such a value could produce.
        """
        parsed = self.server_version_tuple
        return parsed is None or parsed < _RAWDATA_TIMESERIES_SINCE

    def to_bson(self) -> bytes:
        return bson.encode(
            {
                "concurrent_collections": self.concurrent_collections,
                "version": self.version,
                "server_version": self.server_version,
                "tool_version": self.tool_version,
            }
        )


@dataclass
class CollectionEntry:
    """One collection-metadata doc of the prelude.

    ``metadata`` is the parsed metadata (``options`` ordered, ``indexes``, ``uuid``,
    ``collectionName``, ``type``). ``metadata_json`` is the raw text as found in an archive; a
    writer emits it verbatim when set and otherwise encodes ``metadata``.
    """

    db: str
    collection: str
    metadata: dict[str, Any] = field(default_factory=dict)
    type: str = "collection"
    metadata_json: str | None = None

    @classmethod
    def oplog(cls) -> CollectionEntry:
        """The entry mongodump writes for ``--oplog`` (no metadata, empty type)."""
        return cls(OPLOG_DB, OPLOG_COLLECTION, {}, "", "")

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.collection}"

    @property
    def key(self) -> Namespace:
        return (self.db, self.collection)

    @property
    def options(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.metadata.get("options") or {})

    @property
    def indexes(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.metadata.get("indexes") or [])

    @property
    def uuid(self) -> str | None:
        value = self.metadata.get("uuid")
        return value if isinstance(value, str) else None

    @property
    def is_view(self) -> bool:
        # not the type field: --viewsAsCollections keeps type "view" but drops viewOn
        return "viewOn" in self.options

    @property
    def is_timeseries(self) -> bool:
        # mongorestore keys on options.timeseries; the type field only exists since 100.4.0
        return self.type == "timeseries" or "timeseries" in self.options

    @property
    def is_oplog(self) -> bool:
        return self.key == (OPLOG_DB, OPLOG_COLLECTION)

    def metadata_text(self) -> str:
        return self.metadata_json if self.metadata_json is not None else encode_metadata(self.metadata)

    def to_bson(self) -> bytes:
        return bson.encode(
            {
                "db": self.db,
                "collection": self.collection,
                "metadata": self.metadata_text(),
                "size": 0,  # mongodump never fills it; restore only uses it for progress bars
                "type": self.type,
            }
        )


@dataclass(frozen=True)
class NamespaceSummary:
    """What one namespace's body held: the counts a backup manifest or progress bar needs."""

    db: str
    collection: str  # the prelude (user-facing) name
    body_collection: str  # the name in the body (``system.buckets.X`` for old timeseries)
    type: str
    documents: int
    bytes: int  # sum of the raw BSON document sizes
    blocks: int  # data blocks
    crc: int  # unsigned CRC-64/XZ of the documents

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.collection}"


@dataclass(frozen=True)
class ArchiveSummary:
    header: ArchiveHeader
    entries: tuple[CollectionEntry, ...]
    namespaces: dict[str, NamespaceSummary]  # keyed by prelude "db.collection"
    archive_bytes: int  # uncompressed archive length

    @property
    def total_documents(self) -> int:
        return sum(ns.documents for ns in self.namespaces.values())

    @property
    def total_bytes(self) -> int:
        return sum(ns.bytes for ns in self.namespaces.values())


@dataclass(frozen=True)
class NamespaceStart:
    """A namespace's first block arrived: the moment mongorestore creates the collection/view."""

    entry: CollectionEntry
    body_collection: str


@dataclass(frozen=True)
class DocumentBatch:
    """Consecutive raw documents of one namespace, in archive order (never decoded)."""

    entry: CollectionEntry
    body_collection: str
    documents: list[bytes]
    nbytes: int


@dataclass(frozen=True)
class NamespaceEnd:
    """The namespace's EOF block was read and its CRC matched."""

    entry: CollectionEntry
    body_collection: str
    summary: NamespaceSummary


ArchiveEvent = NamespaceStart | DocumentBatch | NamespaceEnd


@dataclass
class _Progress:
    """Mutable per-namespace running totals (private to one reader or writer)."""

    entry: CollectionEntry
    body_collection: str
    crc: int = 0
    documents: int = 0
    bytes: int = 0
    blocks: int = 0
    finished: bool = False

    def summary(self) -> NamespaceSummary:
        return NamespaceSummary(
            db=self.entry.db,
            collection=self.entry.collection,
            body_collection=self.body_collection,
            type=self.entry.type,
            documents=self.documents,
            bytes=self.bytes,
            blocks=self.blocks,
            crc=self.crc,
        )


def _body_collection(entry: CollectionEntry, header: ArchiveHeader) -> str:
    if entry.is_timeseries and header.timeseries_in_buckets:
        return _BUCKETS_PREFIX + entry.collection
    return entry.collection


def _ns_header(db: str, collection: str, eof: bool, crc: int) -> bytes:
    return bson.encode({"db": db, "collection": collection, "EOF": eof, "CRC": Int64(crc_to_int64(crc))})


# --- writer ---------------------------------------------------------------------------------


@dataclass
class _PendingBlock:
    """Documents gathered for a namespace's next data block: views of the caller's chunks."""

    pieces: list[memoryview] = field(default_factory=list)
    bytes: int = 0
    documents: int = 0

    def add(self, piece: memoryview, documents: int) -> None:
        self.pieces.append(piece)
        self.bytes += len(piece)
        self.documents += documents


class ArchiveWriter:
    """Writes an archive; up to ``concurrent_collections`` namespaces may be open at once.

    mongorestore runs as many workers as the header's ``concurrent_collections`` and each holds
    one namespace from its first block to its EOF, so more namespaces open at the same time could
    starve it (reference §4): the writer refuses to open more. As mongodump does, each open
    namespace gathers its documents into a block of up to ``block_size`` bytes, written when full
    (or at the namespace's end), so the blocks of the open namespaces interleave and the writer
    holds at most one block per open namespace.
    Call ``write_prelude`` once, then ``write_documents``/``finish_namespace`` for every entry
    (the oplog, if any, last), then ``finish``. The stream is never closed here.
    """

    def __init__(
        self,
        stream: WritableStream,
        server_version: str,
        tool_version: str,
        concurrent_collections: int = 1,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if parse_server_version(server_version) is None:
            # mongorestore 100.16+ refuses the whole archive otherwise
            raise ValueError(f"server_version must look like MAJOR.MINOR.PATCH, got {server_version!r}")
        if concurrent_collections < 1:
            raise ValueError("concurrent_collections must be at least 1")
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self._stream = stream
        self._block_size = block_size
        self.header = ArchiveHeader(concurrent_collections, ARCHIVE_FORMAT_VERSION, server_version, tool_version)
        self._progress: dict[Namespace, _Progress] = {}
        self._open: dict[Namespace, _Progress] = {}  # started, not yet at EOF; insertion ordered
        self._pending: dict[Namespace, _PendingBlock] = {}  # the next block of each open namespace
        self._prelude_written = False
        self.bytes_written = 0
        self.documents_written = 0

    # public API

    def write_prelude(self, entries: Iterable[CollectionEntry]) -> None:
        if self._prelude_written:
            raise RuntimeError("the prelude has already been written")
        progress: dict[Namespace, _Progress] = {}
        parts = [MAGIC, self.header.to_bson()]
        for entry in entries:  # validate everything before writing a byte
            if not entry.collection:
                raise ValueError(f"collection name is empty for an entry of database {entry.db!r}")
            if entry.key in progress:
                raise ValueError(f"namespace {entry.namespace} is listed twice")
            progress[entry.key] = _Progress(entry, _body_collection(entry, self.header))
            parts.append(entry.to_bson())
        parts.append(TERM)
        self._write(b"".join(parts))
        self._progress = progress
        self._prelude_written = True

    def write_documents(self, db: str, collection: str, raw_bson_chunks: Iterable[BytesLike]) -> int:
        """Append raw documents to a namespace; each chunk holds one or more whole BSON docs.

        ``collection`` may be the prelude name or, for timeseries, ``system.buckets.<name>``.
        Returns how many documents were taken. Raises DumpFailed if a chunk is not a sequence of
        well-framed BSON documents.
        """
        progress = self._begin(db, collection)
        return sum(self._take_chunk(progress, chunk, index) for index, chunk in enumerate(raw_bson_chunks))

    def finish_namespace(self, db: str, collection: str) -> int:
        """Flush the namespace's last data block and write its EOF block; returns the CRC."""
        progress = self._begin(db, collection)
        if self._pending[progress.entry.key].pieces or progress.blocks == 0:
            # an empty collection or a view still needs one (empty) data block
            self._flush_block(progress)
        self._write(_ns_header(progress.entry.db, progress.body_collection, True, progress.crc) + TERM)
        progress.finished = True
        del self._open[progress.entry.key], self._pending[progress.entry.key]
        return progress.crc

    def finish(self) -> ArchiveSummary:
        """Check every prelude namespace reached EOF (else the archive would be refused)."""
        self._require_prelude()
        if self._open:
            raise RuntimeError(f"namespaces were not finished: {', '.join(p.entry.namespace for p in self._open.values())}")
        missing = [p.entry.namespace for p in self._progress.values() if not p.finished]
        if missing:
            raise RuntimeError(f"namespaces listed in the prelude were never written: {', '.join(missing)}")
        return self.summary()

    def summary(self) -> ArchiveSummary:
        return ArchiveSummary(
            header=self.header,
            entries=tuple(p.entry for p in self._progress.values()),
            namespaces={p.entry.namespace: p.summary() for p in self._progress.values() if p.finished},
            archive_bytes=self.bytes_written,
        )

    # internals

    def _require_prelude(self) -> None:
        if not self._prelude_written:
            raise RuntimeError("write_prelude() must be called first")

    def _resolve(self, db: str, collection: str) -> _Progress:
        progress = self._progress.get((db, collection))
        if progress is None and collection.startswith(_BUCKETS_PREFIX):
            candidate = self._progress.get((db, collection[len(_BUCKETS_PREFIX) :]))
            if candidate is not None and candidate.entry.is_timeseries:
                progress = candidate
        if progress is None:
            raise ValueError(f"namespace {db}.{collection} is not in the prelude")
        return progress

    def _begin(self, db: str, collection: str) -> _Progress:
        self._require_prelude()
        progress = self._resolve(db, collection)
        if self._open.get(progress.entry.key) is progress:
            return progress
        if progress.finished:
            raise RuntimeError(f"namespace {progress.entry.namespace} is already finished")
        if len(self._open) >= self.header.concurrent_collections:
            raise RuntimeError(
                f"namespace {', '.join(p.entry.namespace for p in self._open.values())} is still open; the header "
                f"allows {self.header.concurrent_collections} at once: finish one before starting "
                f"{progress.entry.namespace}"
            )
        # mongodump writes the oplog after every other namespace reached EOF; restore relies on it
        others_open = [p for p in self._progress.values() if not p.finished and p is not progress]
        if progress.entry.is_oplog and others_open:
            raise RuntimeError("the oplog must be written after every other namespace is finished")
        oplog = self._progress.get((OPLOG_DB, OPLOG_COLLECTION))
        if oplog is not None and oplog.finished and not progress.entry.is_oplog:
            raise RuntimeError(f"{progress.entry.namespace} cannot follow the oplog")
        self._open[progress.entry.key] = progress
        self._pending[progress.entry.key] = _PendingBlock()
        return progress

    def _take_chunk(self, progress: _Progress, chunk: BytesLike, index: int) -> int:
        """Queue one chunk's documents (cutting blocks at ``block_size``); returns how many."""
        # Walk the length prefixes only: enough to count documents, check framing and cut
        # blocks at document boundaries. Contiguous runs are kept as views, not copied.
        data = chunk if isinstance(chunk, bytes) else bytes(chunk)  # a caller may reuse a bytearray
        view = memoryview(data)
        size = len(data)
        unpack = _UINT32.unpack_from
        limit = self._block_size
        pending = self._pending[progress.entry.key]
        pos = run_start = 0
        docs_in_run = taken = 0
        while pos < size:
            if size - pos < MIN_DOC_SIZE:
                raise DumpFailed(
                    f"{progress.entry.namespace}: chunk {index} ends with {size - pos} stray bytes at offset {pos}"
                )
            length = unpack(data, pos)[0]
            if length < MIN_DOC_SIZE or length > MAX_DOC_SIZE or pos + length > size:
                raise DumpFailed(
                    f"{progress.entry.namespace}: chunk {index} has an invalid BSON document length "
                    f"{length} at offset {pos} (chunk is {size} bytes)"
                )
            if data[pos + length - 1] != 0:
                raise DumpFailed(
                    f"{progress.entry.namespace}: BSON document at offset {pos} of chunk {index} does not end with 0x00"
                )
            run_bytes = pos - run_start
            if pending.bytes + run_bytes + length > limit and pending.bytes + run_bytes > 0:
                if run_bytes:
                    pending.add(view[run_start:pos], docs_in_run)
                self._flush_block(progress)
                pending = self._pending[progress.entry.key]
                run_start, docs_in_run = pos, 0
            pos += length
            docs_in_run += 1
            taken += 1
        if pos > run_start:
            pending.add(view[run_start:pos], docs_in_run)
        return taken

    def _flush_block(self, progress: _Progress) -> None:
        """Write the namespace's pending documents as one data block (none: an empty block)."""
        pending = self._pending[progress.entry.key]
        self._write(_ns_header(progress.entry.db, progress.body_collection, False, 0))
        crc = progress.crc
        for piece in pending.pieces:
            crc = crc64_update(crc, piece)
            self._write(piece)
        self._write(TERM)
        progress.crc = crc
        progress.documents += pending.documents
        progress.bytes += pending.bytes
        progress.blocks += 1
        self.documents_written += pending.documents
        self._pending[progress.entry.key] = _PendingBlock()

    def _write(self, data: BytesLike) -> None:
        self._stream.write(data)  # type: ignore[arg-type]  # memoryview is fine for file objects
        self.bytes_written += len(data)


# --- reader ---------------------------------------------------------------------------------


class _InputBuffer:
    """A read-ahead window over a stream, tracking the absolute byte offset for messages."""

    def __init__(self, stream: ReadableStream, read_size: int) -> None:
        self._stream = stream
        self._read_size = read_size
        self.buf = b""
        self.pos = 0
        self.base = 0  # absolute offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def ensure(self, n: int) -> int:
        """Make at least ``n`` bytes available from ``pos``; returns how many are (less only at EOF)."""
        have = len(self.buf) - self.pos
        if have >= n:
            return have
        parts = [self.buf[self.pos :]]
        while have < n:
            data = self._stream.read(max(self._read_size, n - have))
            if not data:
                break
            parts.append(data if isinstance(data, bytes) else bytes(data))
            have += len(data)
        self.base += self.pos
        self.pos = 0
        self.buf = b"".join(parts)
        return have


class ArchiveReader:
    """Reads and validates an (uncompressed) archive as a stream of events.

    The constructor reads the magic number, header and prelude (``header``, ``entries``).
    ``events()`` then yields ``NamespaceStart`` / ``DocumentBatch`` / ``NamespaceEnd`` while checking
    every rule in reference §4 and each namespace's CRC. Because documents are yielded before a
    namespace's CRC has been checked, run :func:`verify` over the archive first when nothing may
    be written unless the whole archive is sound. Memory stays bounded by ``read_size`` +
    ``batch_bytes`` + one document.
    """

    def __init__(
        self,
        stream: ReadableStream,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        read_size: int = DEFAULT_READ_SIZE,
    ) -> None:
        if batch_bytes < 1 or read_size < 1:
            raise ValueError("batch_bytes and read_size must be positive")
        self._in = _InputBuffer(stream, read_size)
        self._batch_bytes = batch_bytes
        self._progress: dict[Namespace, _Progress] = {}
        self._iterated = False
        self._complete = False
        self.documents_read = 0
        self._read_magic()
        self.header = self._read_header()
        self.entries: list[CollectionEntry] = self._read_prelude()
        self._by_key = {entry.key: entry for entry in self.entries}

    @property
    def bytes_read(self) -> int:
        """Uncompressed archive bytes consumed so far."""
        return self._in.offset

    def entry_for(self, db: str, body_collection: str) -> CollectionEntry | None:
        """The prelude entry a body namespace belongs to (maps ``system.buckets.X`` to timeseries X)."""
        entry = self._by_key.get((db, body_collection))
        if entry is None and body_collection.startswith(_BUCKETS_PREFIX) and self.header.timeseries_in_buckets:
            candidate = self._by_key.get((db, body_collection[len(_BUCKETS_PREFIX) :]))
            if candidate is not None and candidate.is_timeseries:
                entry = candidate
        return entry

    def __iter__(self) -> Iterator[ArchiveEvent]:
        return self.events()

    def events(self) -> Iterator[ArchiveEvent]:
        if self._iterated:
            raise RuntimeError("an ArchiveReader can be iterated only once")
        self._iterated = True
        return self._events()

    def verify(self) -> ArchiveSummary:
        """Read to the end, checking everything, and return the per-namespace totals."""
        for _ in self.events():
            pass
        return self.summary()

    def summary(self) -> ArchiveSummary:
        if not self._complete:
            raise RuntimeError("the archive has not been read to its end yet")
        return ArchiveSummary(
            header=self.header,
            entries=tuple(self.entries),
            namespaces={p.entry.namespace: p.summary() for p in self._progress.values()},
            archive_bytes=self.bytes_read,
        )

    # prelude

    def _read_magic(self) -> None:
        got = self._in.ensure(4)
        if got == 0:
            raise ArchiveCorrupt("the archive is empty (0 bytes); expected a mongodump archive")
        head = self._in.buf[:4]
        if got < 4 or head != MAGIC:
            hint = ""
            if head.startswith(GZIP_MAGIC):
                hint = " (it looks gzip-compressed: decompress it first)"
            elif head == ZSTD_MAGIC:
                hint = " (it looks zstd-compressed: decompress it first)"
            raise ArchiveCorrupt(
                f"this does not appear to be a mongodump archive: the first bytes are {head.hex()} "
                f"at byte offset 0, expected {MAGIC.hex()}{hint}"
            )
        self._in.pos += 4

    def _read_header(self) -> ArchiveHeader:
        offset = self._in.offset
        doc = self._read_doc("the archive header")
        if doc is None:
            raise ArchiveCorrupt(f"TERM found at byte offset {offset} where the archive header doc was expected")
        fields = self._decode(doc, "the archive header", offset)
        expected: dict[str, tuple[type, ...]] = {
            "concurrent_collections": (int,),
            "version": (str,),
            "server_version": (str,),
            "tool_version": (str,),
        }
        for key, types in expected.items():  # unknown keys are tolerated, as mongorestore does
            if key in fields and (not isinstance(fields[key], types) or isinstance(fields[key], bool)):
                raise ArchiveCorrupt(
                    f"archive header at byte offset {offset}: '{key}' has type "
                    f"{type(fields[key]).__name__}, expected {types[0].__name__}"
                )
        return ArchiveHeader(
            concurrent_collections=int(fields.get("concurrent_collections", 0)),
            version=fields.get("version", ""),
            server_version=fields.get("server_version", ""),
            tool_version=fields.get("tool_version", ""),
        )

    def _read_prelude(self) -> list[CollectionEntry]:
        entries: list[CollectionEntry] = []
        seen: set[Namespace] = set()
        while True:
            offset = self._in.offset
            doc = self._read_doc("the prelude (collection metadata or TERM)")
            if doc is None:
                return entries
            entry = self._parse_entry(doc, offset)
            if entry.key in seen:
                raise ArchiveCorrupt(f"prelude lists namespace {entry.namespace} twice (byte offset {offset})")
            seen.add(entry.key)
            entries.append(entry)

    def _parse_entry(self, doc: bytes, offset: int) -> CollectionEntry:
        fields = self._decode(doc, "a prelude collection entry", offset)
        where = f"prelude entry at byte offset {offset}"
        for key in ("db", "collection", "metadata", "type"):
            if key in fields and not isinstance(fields[key], str):
                raise ArchiveCorrupt(f"{where}: '{key}' has type {type(fields[key]).__name__}, expected string")
        db, collection = fields.get("db", ""), fields.get("collection", "")
        if not collection:
            raise ArchiveCorrupt(f"{where}: the collection name is missing or empty")
        text: str = fields.get("metadata", "")
        try:
            metadata = decode_metadata(text)
        except (ValueError, TypeError) as exc:
            raise ArchiveCorrupt(f"{where}: the metadata JSON of {db}.{collection} cannot be parsed: {exc}") from exc
        return CollectionEntry(db, collection, metadata, fields.get("type", ""), text)

    # body

    def _events(self) -> Iterator[ArchiveEvent]:
        while True:
            offset = self._in.offset
            if self._in.ensure(1) == 0:
                break  # clean end of stream at a block boundary
            doc = self._read_doc("a namespace header")
            if doc is None:
                raise ArchiveCorrupt(f"TERM found at byte offset {offset} where a namespace header was expected")
            db, collection, eof, stored_crc = self._parse_ns_header(doc, offset)
            progress, is_new = self._progress_for(db, collection, offset)
            if is_new:
                yield NamespaceStart(progress.entry, progress.body_collection)
            ns = f"{db}.{collection}"
            if eof:
                yield from self._read_eof_block(progress, ns, stored_crc, offset)
            else:
                progress.blocks += 1
                yield from self._read_data_block(progress, ns)
        unfinished = [p.entry.namespace for p in self._progress.values() if not p.finished]
        if unfinished:
            raise ArchiveCorrupt(
                f"the archive ends at byte offset {self._in.offset} but these namespaces never reached "
                f"their EOF block (truncated archive?): {', '.join(unfinished)}"
            )
        unseen = [e.namespace for e in self.entries if e.key not in self._progress]
        if unseen:
            raise ArchiveCorrupt(
                "the archive finished before all collections were seen: listed in the prelude but "
                f"absent from the body: {', '.join(unseen)}"
            )
        self._complete = True

    def _progress_for(self, db: str, collection: str, offset: int) -> tuple[_Progress, bool]:
        entry = self.entry_for(db, collection)
        if entry is None:
            raise ArchiveCorrupt(
                f"namespace {db}.{collection} at byte offset {offset} has no collection entry in the prelude"
            )
        progress = self._progress.get(entry.key)
        if progress is None:
            progress = self._progress[entry.key] = _Progress(entry, collection)
            return progress, True
        if progress.finished:
            raise ArchiveCorrupt(
                f"namespace {db}.{collection} appears again at byte offset {offset} after its EOF block"
            )
        if progress.body_collection != collection:
            raise ArchiveCorrupt(
                f"timeseries {entry.namespace} is stored under both {progress.body_collection} and "
                f"{collection} (byte offset {offset})"
            )
        return progress, False

    def _read_eof_block(self, progress: _Progress, ns: str, stored_crc: int, offset: int) -> Iterator[ArchiveEvent]:
        doc_offset = self._in.offset
        if self._read_doc(f"the TERM after the EOF header of {ns}") is not None:
            raise ArchiveCorrupt(
                f"namespace {ns}: a document follows its EOF header at byte offset {doc_offset} "
                "(collection data without a collection header)"
            )
        expected = stored_crc & _U64_MASK
        if expected != progress.crc:
            raise ChecksumMismatch(
                f"namespace {ns}: CRC mismatch in the EOF block at byte offset {offset}: the archive "
                f"says {expected:#018x}, its {progress.documents} documents hash to {progress.crc:#018x}"
            )
        progress.finished = True
        yield NamespaceEnd(progress.entry, progress.body_collection, progress.summary())

    def _read_data_block(self, progress: _Progress, ns: str) -> Iterator[ArchiveEvent]:
        # Documents of a block are contiguous, so the CRC runs once per buffered run of
        # documents (fast C call over a large slice) rather than once per document.
        source = self._in
        unpack = _UINT32.unpack_from
        batch: list[bytes] = []
        batch_bytes = 0
        buf, pos = source.buf, source.pos
        run_start = pos
        while True:
            end = len(buf)
            if end - pos >= 4:
                length = unpack(buf, pos)[0]
                if length == _TERM_VALUE:
                    progress.crc = crc64_update(progress.crc, memoryview(buf)[run_start:pos])
                    source.pos = pos + 4
                    if batch:
                        yield self._batch(progress, batch, batch_bytes)
                    return
                if length < MIN_DOC_SIZE or length > MAX_DOC_SIZE:
                    raise ArchiveCorrupt(
                        f"namespace {ns}: invalid BSON document length {length} at byte offset "
                        f"{source.base + pos} (must be {MIN_DOC_SIZE}..{MAX_DOC_SIZE})"
                    )
                if end - pos >= length:
                    if buf[pos + length - 1] != 0:
                        raise ArchiveCorrupt(
                            f"namespace {ns}: the BSON document at byte offset {source.base + pos} "
                            f"({length} bytes) does not end with 0x00"
                        )
                    batch.append(buf[pos : pos + length])
                    batch_bytes += length
                    pos += length
                    if batch_bytes >= self._batch_bytes:
                        progress.crc = crc64_update(progress.crc, memoryview(buf)[run_start:pos])
                        source.pos = run_start = pos
                        yield self._batch(progress, batch, batch_bytes)
                        batch, batch_bytes = [], 0
                    continue
                need = length
            else:
                need = 4
            # the next document (or TERM) is not fully buffered: hash what is, then refill
            progress.crc = crc64_update(progress.crc, memoryview(buf)[run_start:pos])
            source.pos = pos
            got = source.ensure(need)
            buf, pos = source.buf, source.pos
            run_start = pos
            if got < need:
                raise ArchiveCorrupt(
                    f"namespace {ns}: the archive is truncated at byte offset {source.base + pos + got} "
                    f"inside a data block (needed {need} bytes at offset {source.base + pos}, "
                    f"only {got} left)"
                )

    def _batch(self, progress: _Progress, docs: list[bytes], nbytes: int) -> DocumentBatch:
        progress.documents += len(docs)
        progress.bytes += nbytes
        self.documents_read += len(docs)
        return DocumentBatch(progress.entry, progress.body_collection, docs, nbytes)

    def _parse_ns_header(self, doc: bytes, offset: int) -> tuple[str, str, bool, int]:
        fields = self._decode(doc, "a namespace header", offset)
        for key, value in fields.items():
            types = _NS_HEADER_TYPES.get(key)
            if types is None:
                raise ArchiveCorrupt(f"namespace header at byte offset {offset} has an unknown key {key!r}")
            if not isinstance(value, types):
                raise ArchiveCorrupt(
                    f"namespace header at byte offset {offset}: {key!r} has type "
                    f"{type(value).__name__}, expected {types[0].__name__}"
                )
        collection = fields.get("collection", "")
        if not collection:
            raise ArchiveCorrupt(f"namespace header at byte offset {offset} has an empty collection name")
        return fields.get("db", ""), collection, fields.get("EOF", False), int(fields.get("CRC", 0))

    # low level

    def _read_doc(self, context: str) -> bytes | None:
        """Read one whole BSON doc, or return None for a TERM. Any shortfall is corruption."""
        source = self._in
        offset = source.offset
        got = source.ensure(4)
        if got < 4:
            raise ArchiveCorrupt(f"the archive is truncated at byte offset {offset + got} while reading {context}")
        length = _UINT32.unpack_from(source.buf, source.pos)[0]
        if length == _TERM_VALUE:
            source.pos += 4
            return None
        if length < MIN_DOC_SIZE or length > MAX_DOC_SIZE:
            raise ArchiveCorrupt(
                f"invalid BSON document length {length} at byte offset {offset} while reading {context}"
            )
        got = source.ensure(length)
        if got < length:
            raise ArchiveCorrupt(
                f"the archive is truncated at byte offset {offset + got} while reading {context} "
                f"({length}-byte document starting at offset {offset})"
            )
        start = source.pos
        if source.buf[start + length - 1] != 0:
            raise ArchiveCorrupt(f"{context} at byte offset {offset} does not end with 0x00")
        source.pos = start + length
        return source.buf[start : start + length]

    @staticmethod
    def _decode(doc: bytes, context: str, offset: int) -> dict[str, Any]:
        try:
            return bson.decode(doc)
        except BSONError as exc:
            raise ArchiveCorrupt(f"{context} at byte offset {offset} is not valid BSON: {exc}") from exc


def verify(stream: ReadableStream, *, read_size: int = DEFAULT_READ_SIZE) -> ArchiveSummary:
    """Validate a whole uncompressed archive (framing, prelude, ordering, every CRC).

    Raises ArchiveCorrupt (ChecksumMismatch for a CRC) on the first problem; returns
    per-namespace document counts and sizes. Wrap a compressed stream with
    :func:`open_decompressing_reader` first.
    """
    return ArchiveReader(stream, read_size=read_size).verify()
