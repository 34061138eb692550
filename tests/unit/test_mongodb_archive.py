"""Unit tests for the mongodump --archive codec (shared/engines/mongodb_archive.py).

Hand-built archives below are assembled with ``bson.encode`` straight from the format reference,
not with the writer under test, so a writer bug cannot hide a reader bug (and vice versa).
"""

from __future__ import annotations

import gzip
import io
import os
import random
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
import zstandard
from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument

from shared.core.errors import ArchiveCorrupt, ChecksumMismatch, DumpFailed
from shared.engines.mongodb_archive import (
    MAGIC,
    ArchiveReader,
    ArchiveWriter,
    CollectionEntry,
    DocumentBatch,
    NamespaceEnd,
    NamespaceStart,
    build_metadata,
    crc64_update,
    crc_to_int64,
    open_compressed_writer,
    open_decompressing_reader,
    verify,
)
from tests.support.fixtures import MONGODUMP_FIXTURES, needs_mongodump_fixtures

# Real mongodump archives (skipped with a reason when the shared fixtures are absent).
FIXTURES = MONGODUMP_FIXTURES
needs_fixtures = needs_mongodump_fixtures

# --- independent helpers -----------------------------------------------------------------------

MAGIC_BYTES = bytes.fromhex("6de29981")
TERM_BYTES = b"\xff\xff\xff\xff"
_MASK = (1 << 64) - 1


def reference_crc64(data: bytes, crc: int = 0) -> int:
    """Bit-at-a-time CRC-64/XZ: slow but obviously right, an oracle for the fast one."""
    crc ^= _MASK
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xC96C5795D7870F42 if crc & 1 else crc >> 1
    return crc ^ _MASK


def assemble(*items: Any) -> bytes:
    """Archive bytes from dicts (BSON-encoded), raw bytes, in order; MAGIC is prepended."""
    return MAGIC_BYTES + b"".join(bson.encode(i) if isinstance(i, dict) else i for i in items)


def header(server_version: str = "7.0.12") -> dict[str, Any]:
    return {"concurrent_collections": 4, "version": "0.1", "server_version": server_version, "tool_version": "100.10.0"}


def prelude_entry(db: str, coll: str, metadata: str = "", type_: str = "collection") -> dict[str, Any]:
    return {"db": db, "collection": coll, "metadata": metadata, "size": 0, "type": type_}


def ns_header(db: str, coll: str, eof: bool = False, crc: int = 0) -> dict[str, Any]:
    return {"db": db, "collection": coll, "EOF": eof, "CRC": Int64(crc_to_int64(crc))}


def tokens(data: bytes) -> list[bytes]:
    """Split an archive into its docs and TERMs (after checking the magic)."""
    assert data[:4] == MAGIC_BYTES
    pos, out = 4, []
    while pos < len(data):
        if data[pos : pos + 4] == TERM_BYTES:
            out.append(TERM_BYTES)
            pos += 4
            continue
        length = int.from_bytes(data[pos : pos + 4], "little")
        out.append(data[pos : pos + length])
        pos += length
    return out


def read_documents(data: bytes, **kwargs: Any) -> tuple[ArchiveReader, dict[str, list[bytes]], list[Any]]:
    reader = ArchiveReader(io.BytesIO(data), **kwargs)
    docs: dict[str, list[bytes]] = {}
    events = []
    for event in reader:
        events.append(event)
        if isinstance(event, NamespaceStart):
            docs.setdefault(event.entry.namespace, [])
        elif isinstance(event, DocumentBatch):
            docs[event.entry.namespace].extend(event.documents)
    return reader, docs, events


D1 = bson.encode({"_id": 1, "total": 50})
D2 = bson.encode({"_id": 2, "total": 150})


def small_archive() -> bytes:
    """A valid archive: test.c with 2 docs, test.v a view, interleaved the way mongodump may."""
    crc = reference_crc64(D1 + D2)
    view_meta = '{"options":{"viewOn":"c","pipeline":[]},"indexes":[],"collectionName":"v","type":"view"}'
    return assemble(
        header(),
        prelude_entry("test", "c", '{"indexes":[],"collectionName":"c"}'),
        prelude_entry("test", "v", view_meta, "view"),
        TERM_BYTES,
        ns_header("test", "c"), D1, TERM_BYTES,
        ns_header("test", "v"), TERM_BYTES,
        ns_header("test", "c"), D2, TERM_BYTES,
        ns_header("test", "c", True, crc), TERM_BYTES,
        ns_header("test", "v", True, 0), TERM_BYTES,
    )  # fmt: skip


def every_type_documents() -> list[bytes]:
    utc = UTC
    rich = {
        "_id": ObjectId("65a1b2c3d4e5f60718293a4b"),
        "double": 3.25,
        "nan": float("nan"),
        "neg_zero": -0.0,
        "string": "héllo ✓ \x00-free",
        "doc": {"a": {"b": [1, {"c": None}]}},
        "array": [1, "two", [3, [4, [5]]], {"six": 6}, []],
        "bin_generic": Binary(b"\x00\x01\x02", 0),
        "bin_function": Binary(b"fn", 1),
        "bin_old": Binary(b"old-binary", 2),
        "uuid_legacy": Binary(b"0123456789abcdef", 3),
        "uuid": Binary.from_uuid(uuid.UUID("12345678-1234-5678-1234-567812345678")),
        "md5": Binary(b"\xaa" * 16, 5),
        "encrypted": Binary(b"\x01cipher", 6),
        "user_defined": Binary(b"custom", 0x80),
        "bool_t": True,
        "bool_f": False,
        "date": datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=utc),
        "pre_epoch": datetime(1901, 1, 1, tzinfo=utc),
        "null": None,
        "regex": Regex(r"^a.*b$", "imsx"),
        "dbref": DBRef("other", ObjectId("65a1b2c3d4e5f60718293a4c"), "db2"),
        "code": Code("function () { return 1; }"),
        "code_w_scope": Code("function () { return x; }", {"x": 1}),
        "int32": -(2**31),
        "timestamp": Timestamp(1_700_000_000, 7),
        "int64": Int64(2**62),
        "decimal": Decimal128("-1234.567890123456789012345678901234"),
        "min": MinKey(),
        "max": MaxKey(),
    }
    # Deprecated types pymongo cannot encode (undefined 0x06, symbol 0x0E) must still pass through
    legacy_body = b"\x06undef\x00" + b"\x0esym\x00" + (4).to_bytes(4, "little") + b"abc\x00"
    legacy = (len(legacy_body) + 5).to_bytes(4, "little") + legacy_body + b"\x00"
    raw = RawBSONDocument(bson.encode({"_id": "raw", "nested": {"k": [Int64(1), 2.5]}}))
    return [bson.encode(rich), legacy, bytes(raw.raw), bson.encode({})]


# --- CRC ---------------------------------------------------------------------------------------


def test_crc_check_value_and_empty_input():
    assert crc64_update(0, b"123456789") == 0x995DC9BBDF1939FA
    assert crc64_update(0, b"") == 0


def test_crc_chained_over_pieces_matches_reference_in_one_go():
    rng = random.Random(1)
    data = rng.randbytes(5000)
    cuts = sorted(rng.sample(range(1, len(data)), 20))
    crc = 0
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        crc = crc64_update(crc, memoryview(data)[start:end])
    assert crc == reference_crc64(data)


def test_crc_stored_as_signed_int64_bit_pattern():
    assert crc_to_int64(0xEE0D8C1856C24721) == -1293223481822787807
    assert crc_to_int64(5) == 5


# --- worked example of reference §6 ------------------------------------------------------------

ORDERS_UUID = "0123456789abcdef0123456789abcdef"
EMPTY_UUID = "fedcba9876543210fedcba9876543210"


def worked_example_entries() -> list[CollectionEntry]:
    id_index = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
    return [
        CollectionEntry("shop", "orders", build_metadata(collection_name="orders", indexes=id_index, uuid=ORDERS_UUID)),
        CollectionEntry("shop", "empty", build_metadata(collection_name="empty", indexes=id_index, uuid=EMPTY_UUID)),
        CollectionEntry(
            "shop",
            "big_orders",
            build_metadata(
                collection_name="big_orders",
                options={"viewOn": "orders", "pipeline": [{"$match": {"total": {"$gt": 100}}}]},
                type="view",
            ),
            type="view",
        ),
    ]


def write_worked_example() -> tuple[bytes, ArchiveWriter]:
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "100.10.0", concurrent_collections=4)
    writer.write_prelude(worked_example_entries())
    writer.write_documents("shop", "orders", [D1 + D2])  # one find_raw_batches-style chunk
    writer.finish_namespace("shop", "orders")
    writer.finish_namespace("shop", "empty")
    writer.finish_namespace("shop", "big_orders")
    writer.finish()
    return out.getvalue(), writer


def test_worked_example_documents_and_crc():
    assert D1 == bytes.fromhex("19000000105f6964000100000010746f74616c003200000000")
    assert D2.endswith(bytes.fromhex("9600000000"))
    crc = crc64_update(crc64_update(0, D1), D2)
    assert crc == 0xEE0D8C1856C24721
    assert crc_to_int64(crc) == -1293223481822787807


def test_worked_example_written_layout_matches_reference():
    data, writer = write_worked_example()
    m1 = (
        '{"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"}],'
        f'"uuid":"{ORDERS_UUID}","collectionName":"orders","type":"collection"}}'
    )
    m2 = m1.replace(ORDERS_UUID, EMPTY_UUID).replace('"orders"', '"empty"')
    m3 = (
        '{"options":{"viewOn":"orders","pipeline":[{"$match":{"total":{"$gt":{"$numberInt":"100"}}}}]},'
        '"indexes":[],"collectionName":"big_orders","type":"view"}'
    )
    expected = [
        bson.encode(header()),
        bson.encode(prelude_entry("shop", "orders", m1)),
        bson.encode(prelude_entry("shop", "empty", m2)),
        bson.encode(prelude_entry("shop", "big_orders", m3, "view")),
        TERM_BYTES,
        bson.encode(ns_header("shop", "orders")), D1, D2, TERM_BYTES,
        bson.encode(ns_header("shop", "orders", True, 0xEE0D8C1856C24721)), TERM_BYTES,
        bson.encode(ns_header("shop", "empty")), TERM_BYTES,
        bson.encode(ns_header("shop", "empty", True, 0)), TERM_BYTES,
        bson.encode(ns_header("shop", "big_orders")), TERM_BYTES,
        bson.encode(ns_header("shop", "big_orders", True, 0)), TERM_BYTES,
    ]  # fmt: skip
    assert data[:4] == MAGIC == MAGIC_BYTES
    assert tokens(data) == expected
    assert len(expected[0]) == 104  # header doc size given by the reference
    assert len(expected[5]) == 60  # namespace header size given by the reference
    eof_header = bson.decode(expected[9])
    assert eof_header["CRC"] == -1293223481822787807 and isinstance(eof_header["CRC"], Int64)
    assert writer.bytes_written == len(data)
    assert writer.documents_written == 2


def test_worked_example_reads_back():
    data, _ = write_worked_example()
    reader, docs, events = read_documents(data)
    assert reader.header.server_version == "7.0.12" and reader.header.concurrent_collections == 4
    assert [e.namespace for e in reader.entries] == ["shop.orders", "shop.empty", "shop.big_orders"]
    view = reader.entries[2]
    assert view.is_view and view.options["pipeline"] == [{"$match": {"total": {"$gt": 100}}}]
    assert reader.entries[0].uuid == ORDERS_UUID and reader.entries[0].indexes[0]["name"] == "_id_"
    assert docs == {"shop.orders": [D1, D2], "shop.empty": [], "shop.big_orders": []}
    ends = {e.entry.namespace: e.summary for e in events if isinstance(e, NamespaceEnd)}
    assert ends["shop.orders"].crc == 0xEE0D8C1856C24721 and ends["shop.orders"].documents == 2
    assert reader.bytes_read == len(data)


# --- writer/reader round trip ------------------------------------------------------------------


def test_round_trip_many_namespaces_bytes_identical():
    special = every_type_documents()
    many = [bson.encode({"_id": i, "pad": "x" * (i % 50), "n": Int64(i)}) for i in range(1000)]
    big = bson.encode({"_id": "big", "blob": Binary(os.urandom(5000))})  # larger than a block
    dotted = [bson.encode({"_id": i, "v": i * 1.5}) for i in range(10)]
    entries = [
        CollectionEntry("app", "every_type", build_metadata(collection_name="every_type")),
        CollectionEntry("app", "many", build_metadata(collection_name="many", uuid=uuid.uuid4())),
        CollectionEntry("app", "a.b.c", build_metadata(collection_name="a.b.c")),
        CollectionEntry("app", "empty", build_metadata(collection_name="empty")),
        CollectionEntry(
            "app",
            "recent",
            build_metadata(collection_name="recent", options={"viewOn": "many", "pipeline": []}, type="view"),
            type="view",
        ),
        CollectionEntry("other", "many", build_metadata(collection_name="many")),
    ]
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "flexdb-test", block_size=2048)
    writer.write_prelude(entries)
    writer.write_documents("app", "every_type", special)  # one doc per chunk
    writer.finish_namespace("app", "every_type")
    # raw batches of many concatenated docs, as find_raw_batches yields, over two calls
    writer.write_documents("app", "many", [b"".join(many[i : min(i + 37, 500)]) for i in range(0, 500, 37)])
    writer.write_documents("app", "many", [bytearray(b"".join(many[500:])), big])
    writer.finish_namespace("app", "many")
    writer.write_documents("app", "a.b.c", [b"".join(dotted)])
    writer.finish_namespace("app", "a.b.c")
    writer.finish_namespace("app", "empty")
    writer.finish_namespace("app", "recent")
    writer.write_documents("other", "many", [many[0]])
    writer.finish_namespace("other", "many")
    written = writer.finish()
    data = out.getvalue()

    reader, docs, _ = read_documents(data)
    assert docs == {
        "app.every_type": special,
        "app.many": [*many, big],
        "app.a.b.c": dotted,
        "app.empty": [],
        "app.recent": [],
        "other.many": [many[0]],
    }
    summary = reader.summary()
    assert summary == verify(io.BytesIO(data))
    assert summary.namespaces == written.namespaces
    assert summary.namespaces["app.many"].blocks > 10  # small block size really split the data
    assert summary.namespaces["app.many"].crc == reference_crc64(b"".join([*many, big]))
    assert summary.namespaces["app.a.b.c"].collection == "a.b.c"
    assert summary.total_documents == writer.documents_written == len(special) + 1001 + 10 + 1
    assert summary.archive_bytes == writer.bytes_written == len(data)
    # each block holds at most block_size bytes of documents unless one document alone is bigger
    for token_list in _data_blocks(data):
        assert sum(map(len, token_list)) <= 2048 or len(token_list) == 1


def _data_blocks(data: bytes) -> list[list[bytes]]:
    blocks: list[list[bytes]] = []
    current: list[bytes] | None = None
    for tok in tokens(data)[1:]:
        if tok == TERM_BYTES:
            if current is not None:
                blocks.append(current)
            current = None
        elif current is None and set(bson.decode(tok)) == {"db", "collection", "EOF", "CRC"}:
            current = [] if not bson.decode(tok)["EOF"] else None
        elif current is not None:
            current.append(tok)
    return blocks


def test_writer_rejects_malformed_raw_chunks():
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "t")
    writer.write_prelude([CollectionEntry("d", "c", build_metadata(collection_name="c"))])
    with pytest.raises(DumpFailed, match="invalid BSON document length"):
        writer.write_documents("d", "c", [D1 + D2[:-3]])
    with pytest.raises(DumpFailed, match="does not end with 0x00"):
        writer.write_documents("d", "c", [D1[:-1] + b"\x01"])


def test_writer_enforces_a_restorable_order():
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "t")
    with pytest.raises(RuntimeError, match="write_prelude"):
        writer.write_documents("d", "a", [D1])
    writer.write_prelude(
        [
            CollectionEntry("d", "a", build_metadata(collection_name="a")),
            CollectionEntry("d", "b", build_metadata(collection_name="b")),
            CollectionEntry.oplog(),
        ]
    )
    with pytest.raises(ValueError, match="not in the prelude"):
        writer.write_documents("d", "zzz", [D1])
    writer.write_documents("d", "a", [D1])
    with pytest.raises(RuntimeError, match="still open"):
        writer.write_documents("d", "b", [D2])
    writer.finish_namespace("d", "a")
    with pytest.raises(RuntimeError, match="already finished"):
        writer.write_documents("d", "a", [D2])
    with pytest.raises(RuntimeError, match="oplog must be written after"):
        writer.write_documents("", "oplog", [D2])
    with pytest.raises(RuntimeError, match="d.b"):
        writer.finish()
    writer.finish_namespace("d", "b")
    writer.write_documents("", "oplog", [D2])
    writer.finish_namespace("", "oplog")
    summary = writer.finish()
    assert summary.namespaces[".oplog"].documents == 1
    assert verify(io.BytesIO(out.getvalue())).total_documents == 2


def test_writer_refuses_server_version_mongorestore_cannot_parse():
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        ArchiveWriter(io.BytesIO(), "unknown", "t")


def test_metadata_json_is_canonical_compact_and_key_ordered():
    meta = build_metadata(
        collection_name="c",
        options={"validator": {"x": {"$gt": 1.0}}, "collation": {"locale": "fr", "strength": 2}, "capped": True},
        indexes=[{"v": 2, "key": {"b": -1, "a": 1}, "name": "b_-1_a_1", "expireAfterSeconds": Int64(5)}],
        uuid=uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"),
    )
    entry = CollectionEntry("d", "c", meta)
    text = entry.metadata_text()
    assert text == (
        '{"options":{"validator":{"x":{"$gt":{"$numberDouble":"1.0"}}},"collation":{"locale":"fr",'
        '"strength":{"$numberInt":"2"}},"capped":true},"indexes":[{"v":{"$numberInt":"2"},"key":'
        '{"b":{"$numberInt":"-1"},"a":{"$numberInt":"1"}},"name":"b_-1_a_1","expireAfterSeconds":'
        '{"$numberLong":"5"}}],"uuid":"00112233445566778899aabbccddeeff","collectionName":"c",'
        '"type":"collection"}'
    )
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "t")
    writer.write_prelude([entry])
    writer.finish_namespace("d", "c")
    reader = ArchiveReader(io.BytesIO(out.getvalue()))
    (read,) = reader.entries
    assert list(read.options) == ["validator", "collation", "capped"]  # key order kept
    assert list(read.indexes[0]["key"]) == ["b", "a"]
    assert read.metadata_json == text


# --- timeseries and oplog ----------------------------------------------------------------------


def _timeseries_archive(server_version: str) -> bytes:
    entry = CollectionEntry(
        "iot",
        "weather",
        build_metadata(
            collection_name="weather", options={"timeseries": {"timeField": "ts", "metaField": "m"}}, type="timeseries"
        ),
        type="timeseries",
    )
    out = io.BytesIO()
    writer = ArchiveWriter(out, server_version, "t")
    writer.write_prelude([entry])
    writer.write_documents("iot", "weather", [D1, D2])
    writer.finish_namespace("iot", "weather")
    return out.getvalue()


@pytest.mark.parametrize(
    ("server_version", "body_name"),
    [("7.0.12", "system.buckets.weather"), ("8.2.1", "system.buckets.weather"), ("8.3.0", "weather")],
)
def test_timeseries_body_namespace_depends_on_source_version(server_version, body_name):
    data = _timeseries_archive(server_version)
    assert bson.decode(tokens(data)[3])["collection"] == body_name
    _, docs, events = read_documents(data)
    assert docs == {"iot.weather": [D1, D2]}
    starts = [e for e in events if isinstance(e, NamespaceStart)]
    assert [(s.entry.collection, s.body_collection, s.entry.is_timeseries) for s in starts] == [
        ("weather", body_name, True)
    ]


def test_buckets_namespace_is_not_mapped_for_83_sources():
    crc = reference_crc64(D1)
    meta = '{"options":{"timeseries":{"timeField":"ts"}},"indexes":[],"type":"timeseries"}'
    data = assemble(
        header("8.3.0"), prelude_entry("iot", "weather", meta, "timeseries"), TERM_BYTES,
        ns_header("iot", "system.buckets.weather"), D1, TERM_BYTES,
        ns_header("iot", "system.buckets.weather", True, crc), TERM_BYTES,
    )  # fmt: skip
    with pytest.raises(ArchiveCorrupt, match=r"iot\.system\.buckets\.weather .*no collection entry in the prelude"):
        verify(io.BytesIO(data))


# --- real mongodump archives -------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "server_version", "expected"),
    [
        ("test.bar.archive", "3.4.3", {"admin.system.version": 1, "test.bar": 1}),
        ("dump-w-oplog.archive", "4.0.2", {"admin.system.version": 1, "test.foo": 25, ".oplog": 18}),
        (
            "timeseries.archive",
            "5.0.0-rc0",
            {"admin.system.version": 1, "admin.system.views": 0, "timeseries_test.foo_ts": 10},
        ),
    ],
)
def test_real_archives_verify(name, server_version, expected):
    with open(FIXTURES / name, "rb") as raw:
        summary = verify(open_decompressing_reader(raw))
    assert summary.header.server_version == server_version
    assert {ns: s.documents for ns, s in summary.namespaces.items()} == expected
    assert summary.archive_bytes == (FIXTURES / name).stat().st_size


@needs_fixtures
def test_real_oplog_archive_exposes_oplog_entry():
    reader, docs, _ = read_documents((FIXTURES / "dump-w-oplog.archive").read_bytes())
    oplog = [e for e in reader.entries if e.is_oplog]
    assert len(oplog) == 1 and oplog[0].metadata == {} and oplog[0].metadata_json == ""
    assert all(bson.decode(d)["op"] in {"i", "u", "d", "c", "n"} for d in docs[".oplog"])
    foo = next(e for e in reader.entries if e.namespace == "test.foo")
    assert foo.indexes[0]["key"] == {"_id": 1}  # legacy plain-JSON numbers still parse


@needs_fixtures
def test_real_timeseries_archive_maps_buckets_and_reencodes_byte_for_byte():
    original = (FIXTURES / "timeseries.archive").read_bytes()
    reader = ArchiveReader(io.BytesIO(original))
    ts = next(e for e in reader.entries if e.collection == "foo_ts")
    assert ts.is_timeseries and ts.type == "timeseries" and ts.options["timeseries"]["timeField"] == "ts"
    out = io.BytesIO()
    writer = ArchiveWriter(out, reader.header.server_version, reader.header.tool_version, 4)
    writer.write_prelude(reader.entries)
    bodies = []
    for event in reader:
        if isinstance(event, NamespaceStart):
            bodies.append(event.body_collection)
        elif isinstance(event, DocumentBatch):
            writer.write_documents(event.entry.db, event.body_collection, event.documents)
        elif isinstance(event, NamespaceEnd):
            writer.finish_namespace(event.entry.db, event.entry.collection)
    writer.finish()
    assert bodies == ["system.version", "system.views", "system.buckets.foo_ts"]
    assert out.getvalue() == original


@needs_fixtures
def test_bad_format_archive_is_refused():
    expected = r"metadata JSON of test\.ixtest cannot be parsed"
    with open(FIXTURES / "bad-format.archive", "rb") as raw, pytest.raises(ArchiveCorrupt, match=expected):
        verify(open_decompressing_reader(raw))


@needs_fixtures
def test_every_truncation_of_a_real_archive_is_refused():
    data = (FIXTURES / "dump-w-oplog.archive").read_bytes()
    for cut in range(len(data)):
        with pytest.raises(ArchiveCorrupt):
            verify(io.BytesIO(data[:cut]))


# --- corruption detection ----------------------------------------------------------------------


def test_every_truncation_of_a_written_archive_is_refused():
    data = small_archive()
    assert verify(io.BytesIO(data)).total_documents == 2
    for cut in range(len(data)):
        with pytest.raises(ArchiveCorrupt):
            verify(io.BytesIO(data[:cut]))


def test_truncation_messages_say_where():
    data = small_archive()
    cut = data.index(D2) + 10
    with pytest.raises(ArchiveCorrupt, match=rf"test\.c: the archive is truncated at byte offset {cut}"):
        verify(io.BytesIO(data[:cut]))
    last_eof = len(data) - len(bson.encode(ns_header("test", "v", True))) - 4
    with pytest.raises(ArchiveCorrupt, match=r"never reached their EOF block.*test\.v"):
        verify(io.BytesIO(data[:last_eof]))


def test_flipped_byte_in_a_document_fails_the_crc_after_streaming_it():
    docs = [bson.encode({"_id": i, "marker": f"marker-{i:03d}"}) for i in range(200)]
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "t", block_size=1000)
    writer.write_prelude([CollectionEntry("db", "coll", build_metadata(collection_name="coll"))])
    writer.write_documents("db", "coll", [b"".join(docs)])
    writer.finish_namespace("db", "coll")
    data = bytearray(out.getvalue())
    data[data.index(b"marker-117") + 7] ^= 0x01  # '1' -> '0': still valid BSON, different bytes

    with pytest.raises(ChecksumMismatch, match=r"namespace db\.coll: CRC mismatch") as info:
        verify(io.BytesIO(bytes(data)))
    assert isinstance(info.value, ArchiveCorrupt)
    # streaming readers hand documents out before the EOF's CRC: why verify() must run first
    seen = 0
    with pytest.raises(ChecksumMismatch):
        for event in ArchiveReader(io.BytesIO(bytes(data))):
            if isinstance(event, DocumentBatch):
                seen += len(event.documents)
    assert seen == 200


def _valid_parts() -> list[Any]:
    return [
        header(),
        prelude_entry("test", "c", '{"indexes":[]}'),
        TERM_BYTES,
        ns_header("test", "c"),
        D1,
        TERM_BYTES,
        ns_header("test", "c", True, reference_crc64(D1)),
        TERM_BYTES,
    ]


def _with(index: int, replacement: list[Any]) -> bytes:
    parts = _valid_parts()
    parts[index : index + 1] = replacement
    return assemble(*parts)


def test_hand_built_valid_archive_is_accepted():
    assert verify(io.BytesIO(assemble(*_valid_parts()))).namespaces["test.c"].documents == 1


_HEADER_BAD_CRC = {"db": "test", "collection": "c", "EOF": False, "CRC": 0}  # CRC as int32
_HEADER_BAD_EOF = {"db": "test", "collection": "c", "EOF": 0, "CRC": Int64(0)}
_GOOD = _valid_parts()
_TWO_ENTRIES = [prelude_entry("test", "c", '{"indexes":[]}'), prelude_entry("test", "ghost", "")]

# id -> (archive bytes, regex the ArchiveCorrupt message must match)
CORRUPTIONS: dict[str, tuple[bytes, str]] = {
    "empty-stream": (b"", r"empty"),
    "wrong-magic": (b"\x6d\xe2\x99\x80" + assemble(*_GOOD)[4:], r"does not appear to be a mongodump archive"),
    "gzip-not-decompressed": (gzip.compress(assemble(*_GOOD)), r"gzip-compressed"),
    "term-instead-of-header": (_with(0, [TERM_BYTES]), r"TERM found at byte offset 4 where the archive header"),
    "doc-length-too-small": (_with(4, [(3).to_bytes(4, "little")]), r"invalid BSON document length 3 at byte offset"),
    "doc-length-too-big": (
        _with(4, [(16 * 1024 * 1024 + 1).to_bytes(4, "little") + D1[4:]]),
        r"invalid BSON document length 16777217",
    ),
    "missing-trailing-zero": (_with(4, [D1[:-1] + b"\x07"]), r"does not end with 0x00"),
    "term-where-header-expected": (
        _with(5, [TERM_BYTES, TERM_BYTES]),
        r"TERM found at byte offset \d+ where a namespace header was expected",
    ),
    "doc-after-eof": (_with(7, [D1, TERM_BYTES]), r"test\.c: a document follows its EOF header"),
    "unknown-header-key": (_with(3, [{**ns_header("test", "c"), "extra": 1}]), r"unknown key 'extra'"),
    "crc-as-int32": (_with(3, [_HEADER_BAD_CRC]), r"'CRC' has type int, expected Int64"),
    "eof-not-bool": (_with(3, [_HEADER_BAD_EOF]), r"'EOF' has type int"),
    "empty-collection": (_with(3, [ns_header("test", "")]), r"empty collection name"),
    "namespace-without-prelude": (
        _with(3, [ns_header("test", "nope")]),
        r"namespace test\.nope at byte offset \d+ has no collection entry",
    ),
    "reappears-after-eof": (
        assemble(*_GOOD, ns_header("test", "c"), TERM_BYTES),
        r"test\.c appears again at byte offset \d+ after its EOF",
    ),
    "crc-mismatch": (_with(6, [ns_header("test", "c", True, 12345)]), r"archive says 0x0000000000003039"),
    "prelude-namespace-never-seen": (_with(1, _TWO_ENTRIES), r"absent from the body: test\.ghost"),
    "bad-metadata-json": (
        _with(1, [prelude_entry("test", "c", '{"indexes": [')]),
        r"metadata JSON of test\.c cannot be parsed",
    ),
    "metadata-not-string": (_with(1, [{**prelude_entry("test", "c"), "metadata": 5}]), r"'metadata' has type int"),
    "header-ill-typed": (
        _with(0, [{**header(), "concurrent_collections": "4"}]),
        r"'concurrent_collections' has type str",
    ),
}


@pytest.mark.parametrize(("data", "message"), list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_corruption_is_refused_with_a_precise_message(data, message):
    with pytest.raises(ArchiveCorrupt, match=message):
        verify(io.BytesIO(data))


def test_interleaved_blocks_and_eof_after_other_namespaces_are_accepted():
    reader, docs, events = read_documents(small_archive())
    assert docs == {"test.c": [D1, D2], "test.v": []}
    order = [(type(e).__name__, e.entry.collection) for e in events]
    assert order == [
        ("NamespaceStart", "c"),
        ("DocumentBatch", "c"),
        ("NamespaceStart", "v"),
        ("DocumentBatch", "c"),
        ("NamespaceEnd", "c"),
        ("NamespaceEnd", "v"),
    ]
    assert reader.entries[1].is_view


def test_unknown_header_keys_and_size_values_are_tolerated():
    data = _with(0, [{**header(), "future_key": [1, 2]}])
    assert verify(io.BytesIO(data)).header.tool_version == "100.10.0"


# --- streaming and bounded memory --------------------------------------------------------------


class CountingStream:
    """A non-seekable source that records how much has been read and serves short reads."""

    def __init__(self, data: bytes, max_read: int | None = None) -> None:
        self._io = io.BytesIO(data)
        self._max = max_read
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        if self._max is not None and (size < 0 or size > self._max):
            size = self._max
        chunk = self._io.read(size)
        self.consumed += len(chunk)
        return chunk


def test_reader_streams_in_bounded_batches_without_reading_everything():
    docs = [bson.encode({"_id": i, "p": "z" * 1000}) for i in range(4000)]  # ~4 MB
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "t")
    writer.write_prelude([CollectionEntry("d", "c", build_metadata(collection_name="c"))])
    writer.write_documents("d", "c", [b"".join(docs[i : i + 500]) for i in range(0, 4000, 500)])
    writer.finish_namespace("d", "c")
    data = out.getvalue()

    source = CountingStream(data)
    reader = ArchiveReader(source, batch_bytes=64 * 1024, read_size=64 * 1024)
    consumed_at_first_batch = None
    got: list[bytes] = []
    for event in reader:
        if isinstance(event, DocumentBatch):
            if consumed_at_first_batch is None:
                consumed_at_first_batch = source.consumed
            assert event.nbytes == sum(map(len, event.documents))
            assert event.nbytes - len(event.documents[-1]) < 64 * 1024  # bounded batch
            got.extend(event.documents)
    assert got == docs
    assert consumed_at_first_batch is not None and consumed_at_first_batch <= 256 * 1024 < len(data)
    assert reader.documents_read == 4000


def test_reader_handles_one_byte_reads():
    data = small_archive()
    summary = verify(CountingStream(data, max_read=1))
    assert summary.namespaces["test.c"].documents == 2


def test_events_can_be_iterated_only_once_and_summary_needs_the_end():
    reader = ArchiveReader(io.BytesIO(small_archive()))
    with pytest.raises(RuntimeError):
        reader.summary()
    list(reader)
    with pytest.raises(RuntimeError):
        list(reader)
    assert reader.summary().total_documents == 2


# --- compression -------------------------------------------------------------------------------


def _compress(data: bytes, codec: str) -> bytes:
    raw = io.BytesIO()
    with open_compressed_writer(raw, codec) as writer:  # type: ignore[arg-type]
        writer.write(data)
    assert not raw.closed  # the caller's stream stays usable (hashing, upload)
    return raw.getvalue()


def test_gzip_output_is_one_standard_gzip_stream_and_round_trips():
    data, _ = write_worked_example()
    compressed = _compress(data, "gzip")
    assert compressed[:2] == b"\x1f\x8b"
    inflater = zlib.decompressobj(wbits=31)
    assert inflater.decompress(compressed) == data
    assert inflater.eof and inflater.unused_data == b""  # a single member, nothing after it
    reader = open_decompressing_reader(io.BytesIO(compressed))
    assert reader.codec == "gzip"  # type: ignore[attr-defined]
    assert verify(reader).namespaces["shop.orders"].crc == 0xEE0D8C1856C24721


def test_gzip_writer_streams_through_an_archive_writer():
    raw = io.BytesIO()
    with open_compressed_writer(raw, "gzip") as compressed:
        writer = ArchiveWriter(compressed, "7.0.12", "t")
        writer.write_prelude([CollectionEntry("d", "c", build_metadata(collection_name="c"))])
        writer.write_documents("d", "c", [D1, D2])
        writer.finish_namespace("d", "c")
    _, docs, _ = read_documents(gzip.decompress(raw.getvalue()))
    assert docs == {"d.c": [D1, D2]}


def test_zstd_round_trip_and_detection():
    data, _ = write_worked_example()
    compressed = _compress(data, "zstd")
    assert compressed[:4] == bytes.fromhex("28b52ffd")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == data
    reader = open_decompressing_reader(CountingStream(compressed, max_read=3))
    assert reader.codec == "zstd"  # type: ignore[attr-defined]
    assert verify(reader).total_documents == 2


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_auto_detection_with_short_reads(codec):
    data = small_archive()
    payload = {"none": data, "gzip": gzip.compress(data), "zstd": zstandard.ZstdCompressor().compress(data)}[codec]
    reader = open_decompressing_reader(CountingStream(payload, max_read=2))
    assert reader.codec == codec  # type: ignore[attr-defined]
    assert verify(reader).total_documents == 2


def test_concatenated_gzip_members_are_read_like_go_does():
    data = small_archive()
    payload = gzip.compress(data[:100]) + gzip.compress(data[100:])
    assert verify(open_decompressing_reader(io.BytesIO(payload))).total_documents == 2


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_truncated_compressed_archives_are_refused(codec):
    docs = [bson.encode({"_id": i, "r": os.urandom(64)}) for i in range(300)]
    out = io.BytesIO()
    writer = ArchiveWriter(out, "7.0.12", "t")
    writer.write_prelude([CollectionEntry("d", "c", build_metadata(collection_name="c"))])
    writer.write_documents("d", "c", docs)
    writer.finish_namespace("d", "c")
    compressed = _compress(out.getvalue(), codec)
    for cut in (10, len(compressed) // 2, len(compressed) - 30):
        with pytest.raises(ArchiveCorrupt):
            verify(open_decompressing_reader(io.BytesIO(compressed[:cut])))


def test_corrupted_gzip_payload_is_refused():
    compressed = bytearray(_compress(small_archive(), "gzip"))
    compressed[len(compressed) // 2] ^= 0xFF
    with pytest.raises(ArchiveCorrupt):
        verify(open_decompressing_reader(io.BytesIO(bytes(compressed))))


def test_unknown_codec_is_rejected():
    with pytest.raises(ValueError, match="unknown compression codec"):
        open_compressed_writer(io.BytesIO(), "brotli")  # type: ignore[arg-type]
