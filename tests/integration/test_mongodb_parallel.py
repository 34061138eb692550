"""MongoDB backups and restores that work on several collections at once, as a user sees them:
a database of collections of different sizes comes back byte for byte from an archive whose
blocks really interleave (and which our own check still accepts); a server refusal in the middle
of a parallel restore fails the job with the server's words; a cancel stops a parallel dump."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import struct
import uuid
from collections.abc import Iterator

import bson
import pytest
import zstandard
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, MongoClient
from pymongo.database import Database

from shared.engines.mongodb_archive import MAGIC, ArchiveReader, ArchiveWriter, CollectionEntry, build_metadata
from tests.conftest import Stack, running_stack
from tests.integration.test_mongodb_backup_restore import every_bson_type, snapshot
from tests.support.mongo import MongoTestServer
from tests.support.processes import wait_for

PARALLEL = 3
# Small read batches and blocks: every collection spans many of each, so the readers' blocks
# interleave and a dump takes long enough to be cancelled while it runs.
READ_BATCH_DOCS = 3 * PARALLEL  # shared by the readers: 3 documents a batch each
BLOCK_BYTES = 64 * 1024
SIZES = {"big": 2000, "medium": 600, "small": 7, "empty": 0}
CAPPED = "capped_log"  # natural order matters in a capped collection
NAMES = (*SIZES, CAPPED, "every_type", "recent_big")
TERM = b"\xff\xff\xff\xff"


# ----------------------------------------------------------------------------- helpers


def seed(db: Database) -> None:
    db.client.drop_database(db.name)
    for name, count in SIZES.items():
        db.create_collection(name)
        if count:
            db[name].insert_many(
                [{"_id": n, "n": n, "text": f"{name} line {n} " * (20 + n % 7), "tags": [n % 3, [n % 5]]} for n in range(count)]
            )
    db.big.create_index([("n", ASCENDING), ("text", ASCENDING)], name="by_n_text")
    db.medium.create_index("n", unique=True, name="n_unique")
    db.create_collection(CAPPED, capped=True, size=1 << 20, max=500)
    db[CAPPED].insert_many([{"_id": 1000 - n, "line": f"log {n}"} for n in range(300)])  # _id order != natural order
    db.every_type.insert_many([RawBSONDocument(bson.encode(every_bson_type(n))) for n in range(30)])
    db.create_collection("recent_big", viewOn="big", pipeline=[{"$match": {"n": {"$gte": 1990}}}])


def natural_order(db: Database, name: str) -> bytes:
    return b"".join(db[name].find_raw_batches())


def plain_archive(data: bytes) -> bytes:
    """The archive without its compression, whichever codec wrote it."""
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def encoded_like(original: bytes, plain: bytes) -> bytes:
    """``plain`` compressed as ``original`` is, so it can stand in its place."""
    if original.startswith(b"\x1f\x8b"):
        return gzip.compress(plain)
    if original.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdCompressor().compress(plain)
    return plain


def namespace_headers(plain: bytes) -> list[tuple[str, bool]]:
    """(namespace, EOF) of every block header of the body, in archive order, read straight from
    the bytes (independent of the reader under test)."""
    assert plain.startswith(MAGIC)
    pos, in_body, expect_header, headers = 4, False, False, []
    pos += struct.unpack_from("<i", plain, pos)[0]  # the archive header doc
    while pos < len(plain):
        if plain[pos : pos + 4] == TERM:
            pos += 4
            if not in_body:
                in_body = True  # the prelude ends here
            expect_header = True
            continue
        length = struct.unpack_from("<i", plain, pos)[0]
        if in_body and expect_header:
            doc = bson.decode(plain[pos : pos + length])
            headers.append((f"{doc['db']}.{doc['collection']}", doc["EOF"]))
            expect_header = False
        pos += length
    return headers


def interleaved(headers: list[tuple[str, bool]]) -> set[str]:
    """Namespaces with a data block of another namespace between two data blocks of their own."""
    found, last = set(), {}
    data_blocks = [ns for ns, eof in headers if not eof]
    for at, ns in enumerate(data_blocks):
        if ns in last and last[ns] != at - 1:
            found.add(ns)
        last[ns] = at
    return found


def most_open_at_once(headers: list[tuple[str, bool]]) -> int:
    """The most namespaces started (a data block) and not yet ended (their EOF block) at once."""
    open_now: set[str] = set()
    most = 0
    for ns, eof in headers:
        if eof:
            open_now.discard(ns)
        else:
            open_now.add(ns)
        most = max(most, len(open_now))
    return most


def archive_of(stack: Stack, backup_id: str) -> tuple[dict, bytes]:
    manifest = json.loads((stack.storage_dir / backup_id / "manifest.json").read_text())
    return manifest, (stack.storage_dir / backup_id / manifest["archive_name"]).read_bytes()


def submit(stack: Stack, path: str, body: dict) -> str:
    response = stack.api.post(path, body)
    assert response.status == 202, response.text
    return response.headers["Location"]


def run_job(stack: Stack, path: str, body: dict) -> dict:
    return stack.api.wait_job(submit(stack, path, body), timeout=120)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    suffix = secrets.token_hex(4)
    return {"source": f"flexdb_par_{suffix}", "cancel": f"flexdb_par_cancel_{suffix}"}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, own_redis_url: str, mongo_server: MongoTestServer, mongo: MongoClient, names: dict
) -> Iterator[Stack]:
    targets = {
        "shop": {"engine": "mongodb", "uri": mongo_server.uri(names["source"])},
        "busy": {"engine": "mongodb", "uri": mongo_server.uri(names["cancel"])},
    }
    settings = {
        "FLEXDB_MONGO_PARALLEL_COLLECTIONS": str(PARALLEL),
        "FLEXDB_MONGO_READ_BATCH_DOCS": str(READ_BATCH_DOCS),
        "FLEXDB_MONGO_BATCH_BYTES": str(BLOCK_BYTES),
    }
    try:
        with running_stack(tmp_path_factory.mktemp("parallel"), targets, own_redis_url, **settings) as running:
            yield running
    finally:
        for name in names.values():
            mongo.drop_database(name)


@pytest.fixture(scope="module")
def source(mongo: MongoClient, names: dict) -> Database:
    db = mongo[names["source"]]
    seed(db)
    return db


@pytest.fixture(scope="module")
def backup(stack: Stack, source: Database) -> dict:
    job = run_job(stack, "/backups", {"target": "shop"})
    assert job["status"] == "succeeded", job
    return job


# ----------------------------------------------------------------------------- round trip


def test_a_parallel_dump_interleaves_collections_in_one_archive_our_check_accepts(
    stack: Stack, source: Database, backup: dict
) -> None:
    manifest, data = archive_of(stack, backup["backup_id"])
    plain = plain_archive(data)

    reader = ArchiveReader(io.BytesIO(plain))
    summary = reader.verify()
    assert reader.header.concurrent_collections == PARALLEL  # mongorestore runs as many workers
    counts = {ns: s.documents for ns, s in summary.namespaces.items()}
    expected = {f"{source.name}.{name}": source[name].count_documents({}) for name in NAMES}
    expected[f"{source.name}.recent_big"] = 0  # a view holds no documents of its own
    assert counts == manifest["details"]["namespaces"] == expected

    headers = namespace_headers(plain)
    assert {f"{source.name}.big", f"{source.name}.medium"} & interleaved(headers)
    assert 1 < most_open_at_once(headers) <= PARALLEL
    assert backup["progress"]["items_done"] == backup["progress"]["items_total"] == sum(expected.values())


def test_a_parallel_restore_brings_every_collection_back_byte_for_byte(
    stack: Stack, mongo: MongoClient, source: Database, backup: dict
) -> None:
    before = snapshot(source, NAMES)
    capped_order = natural_order(source, CAPPED)
    copy = mongo["flexdb_par_copy_" + uuid.uuid4().hex[:8]]
    try:
        job = run_job(stack, "/restores", {"backup_id": backup["backup_id"], "database": copy.name})

        assert job["status"] == "succeeded", job
        assert job["result"]["documents"] == sum(SIZES.values()) + 300 + 30
        assert snapshot(copy, NAMES) == before  # documents, options, indexes and the view
        assert natural_order(copy, CAPPED) == capped_order
        assert [d["n"] for d in copy.recent_big.find().sort("n", 1)] == list(range(1990, 2000))
        assert job["progress"]["items_done"] == job["progress"]["items_total"] == job["result"]["documents"]
    finally:
        mongo.drop_database(copy.name)


# ----------------------------------------------------------------------------- failures


def test_a_server_refusal_in_the_middle_of_a_parallel_restore_fails_the_job_with_its_message(
    stack: Stack, mongo: MongoClient, backup: dict
) -> None:
    manifest, original = archive_of(stack, backup["backup_id"])
    server_version = ArchiveReader(io.BytesIO(plain_archive(original))).header.server_version
    db = manifest["database"]
    rows = {name: [bson.encode({"_id": n, "pad": "x" * 100}) for n in range(1500)] for name in ("a", "b", "c")}
    rows["b"][900] = bson.encode({"_id": 123, "pad": "the same _id again"})  # deep inside collection b
    out = io.BytesIO()
    writer = ArchiveWriter(out, server_version, "test", concurrent_collections=3, block_size=64 * 1024)
    writer.write_prelude([CollectionEntry(db, name, build_metadata(collection_name=name)) for name in rows])
    for start in range(0, 1500, 100):  # the three collections in turn, as a parallel dump writes them
        for name, docs in rows.items():
            writer.write_documents(db, name, [b"".join(docs[start : start + 100])])
    for name in rows:
        writer.finish_namespace(db, name)
    writer.finish()
    archive = encoded_like(original, out.getvalue())
    backup_id = "dup-key-" + uuid.uuid4().hex[:8]
    folder = stack.storage_dir / backup_id
    folder.mkdir()
    (folder / manifest["archive_name"]).write_bytes(archive)
    manifest.update(
        id=backup_id,
        sha256=hashlib.sha256(archive).hexdigest(),
        size_bytes=len(archive),
        details={**manifest["details"], "namespaces": {f"{db}.{name}": 1500 for name in rows}, "views": []},
    )
    (folder / "manifest.json").write_text(json.dumps(manifest))
    into = "flexdb_par_dup_" + uuid.uuid4().hex[:8]

    job = run_job(stack, "/restores", {"backup_id": backup_id, "database": into})

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "restore_failed"
    assert "duplicate key" in job["error"]["message"].lower() and "123" in job["error"]["message"]
    assert into not in mongo.list_database_names()  # the database the restore made is gone again


def test_cancelling_a_parallel_dump_stops_it_and_leaves_no_backup(
    stack: Stack, mongo: MongoClient, names: dict
) -> None:
    db = mongo[names["cancel"]]
    for name in ("one", "two", "three"):
        db[name].insert_many([{"_id": n, "text": "some words " * 10} for n in range(20_000)])
    location = submit(stack, "/backups", {"target": "busy"})

    wait_for(lambda: (stack.api.get(location).body["progress"] or {}).get("items_done"), 60, 0.05, what="dump under way")
    response = stack.api.post(f"{location}/cancel")
    assert response.status == 202, response.text
    job = stack.api.wait_job(location, timeout=60)

    assert job["status"] == "cancelled" and job["backup_id"] is None, job
    assert job["progress"]["items_done"] < 60_000  # it stopped before reading everything
    assert stack.api.get("/backups?target=busy").body["items"] == []
    leftovers = [p for p in stack.storage_dir.glob("*/*") if not (p.parent / "manifest.json").exists()]
    assert leftovers == []

