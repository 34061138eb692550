"""The MongoDB slice as a user lives it: back up a real MongoDB-protocol server (SecantusDB)
through the API, restore it in place, into another database or only in part, and see every
document come back byte for byte with its indexes, options and views; damaged archives, wrong
passwords and servers that are down end in a failed job with a stable code."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import uuid
from datetime import datetime, timezone
from typing import Any

import bson
import pytest
from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database
from pymongo.uri_parser import parse_uri

from shared.engines.mongodb_archive import MAGIC, ArchiveReader, open_decompressing_reader
from tests.conftest import CANARY_PASSWORD, Stack
from tests.support.mongo import MongoTestServer
from tests.support.fixtures import MONGODUMP_FIXTURES, needs_mongodump_fixtures

FIXTURES = MONGODUMP_FIXTURES
COLLECTIONS = ("everything", "orders", "capped_log", "clustered_events", "a.b.c", "empty")
VIEWS = ("big_orders",)
RESPONSES: list[str] = []  # every API answer of this module, checked for the password at the end


# ----------------------------------------------------------------------------- helpers


def every_bson_type(index: int) -> dict[str, Any]:
    """One document holding every BSON type the server keeps as is (see the report on
    SecantusDB: it rewrites the deprecated undefined and symbol types, as real mongod does not)."""
    return {
        "_id": ObjectId(),
        "n": index,
        "int32": -(2**31),
        "int64": Int64(2**62 + index),
        "double": 1 / 3,
        "neg_zero": -0.0,
        "nan": float("nan"),
        "inf": float("-inf"),
        "decimal": Decimal128("-1234567890.123456789012345678901234"),
        "decimal_nan": Decimal128("NaN"),
        "string": "héllo ✓ \u0000 inside",
        "bool": index % 2 == 0,
        "null": None,
        "date": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc),
        "before_epoch": datetime(1901, 12, 13, 20, 45, 52),
        "regex": Regex("^ab.*c$", "imsx"),
        "timestamp": Timestamp(1_700_000_000, index),
        "min": MinKey(),
        "max": MaxKey(),
        "bin_generic": Binary(b"\x00\x01\xfe\xff", 0),
        "bin_function": Binary(b"fn", 1),
        "bin_old_uuid": Binary(uuid.uuid4().bytes, 3),
        "uuid": Binary.from_uuid(uuid.uuid4()),
        "md5": Binary(hashlib.md5(str(index).encode()).digest(), 5),
        "user_defined": Binary(b"\x80custom", 0x80),
        "code": Code("function () { return 1; }"),
        "code_with_scope": Code("function () { return x; }", {"x": Int64(7)}),
        "dbref": DBRef("orders", index, "shop"),
        "nested": {"a": [1, [2, [3, {"b": [None, {"c": Int64(1)}]}]], {}], "empty_doc": {}, "empty_list": []},
    }


def raw_documents(db: Database, name: str) -> bytes:
    """The collection's documents exactly as the server stores them, in _id order."""
    return b"".join(db[name].find_raw_batches(sort=[("_id", ASCENDING)]))


def snapshot(db: Database, names: tuple[str, ...] = COLLECTIONS + VIEWS) -> dict[str, Any]:
    """What a user compares: raw document bytes, collection options and every index spec."""
    infos = {info["name"]: info for info in db.list_collections() if info["name"] in names}
    state: dict[str, Any] = {}
    for name in sorted(infos):
        info = infos[name]
        entry = {
            "type": info.get("type"),
            "options": bson.encode(info.get("options") or {}),  # bytes: key order and types count
            "data": raw_documents(db, name),
        }
        if info.get("type") != "view":
            entry["indexes"] = sorted(bson.encode(ix) for ix in db[name].list_indexes())
        state[name] = entry
    return state


def seed(db: Database) -> None:
    db.client.drop_database(db.name)
    db.everything.insert_many([RawBSONDocument(bson.encode(every_bson_type(i))) for i in range(40)])
    db.create_collection(
        "orders",
        validator={"$jsonSchema": {"bsonType": "object", "required": ["total"]}},
        validationLevel="moderate",
        validationAction="error",
        collation={"locale": "fr", "strength": 2},
    )
    db.orders.insert_many(
        [
            {"_id": i, "total": i * 3, "customer": f"c{i % 50}", "placed": datetime(2026, 1, 1 + i % 28)}
            for i in range(1500)
        ]
    )
    db.orders.create_index([("customer", ASCENDING), ("total", DESCENDING)], name="by_customer")
    db.orders.create_index("placed", expireAfterSeconds=86_400 * 3650, name="ttl_placed")
    db.orders.create_index("code", unique=True, partialFilterExpression={"code": {"$exists": True}}, name="code_unique")
    db.orders.create_index("note", sparse=True, collation={"locale": "en", "strength": 1}, name="note_sparse")
    db.create_collection("capped_log", capped=True, size=65_536, max=1000)
    db.capped_log.insert_many([{"_id": i, "line": f"log {i}"} for i in range(50)])
    db.create_collection(
        "clustered_events", clusteredIndex={"key": {"_id": 1}, "unique": True}, expireAfterSeconds=3600
    )
    db.clustered_events.insert_many([{"_id": i, "kind": "evt"} for i in range(20)])
    db["a.b.c"].insert_many([{"_id": "dotted", "x": 1}, {"_id": "names", "x": 2}])
    db.create_collection("empty")
    pipeline = [{"$match": {"total": {"$gt": 4000}}}, {"$project": {"customer": 1}}]
    db.create_collection("big_orders", viewOn="orders", pipeline=pipeline)


def database_of(stack: Stack, target: str) -> str:
    return parse_uri(json.loads(stack.env["FLEXDB_TARGETS"])[target]["uri"])["database"]


def record(response: Any) -> Any:
    RESPONSES.append(response.text)
    return response


def backup_now(stack: Stack, target: str = "mongo", **body: Any) -> dict:
    response = record(stack.api.post("/backups", {"target": target, **body}))
    assert response.status == 202, response.text
    job = stack.api.wait_job(response.headers["Location"])
    RESPONSES.append(json.dumps(job))
    return job


def restore_now(stack: Stack, **body: Any) -> dict:
    response = record(stack.api.post("/restores", body))
    assert response.status == 202, response.text
    job = stack.api.wait_job(response.headers["Location"])
    RESPONSES.append(json.dumps(job))
    return job


def add_backup(stack: Stack, source_id: str, new_id: str, archive: bytes, **manifest_changes: Any) -> str:
    """Put an archive into storage as a backup whose manifest matches it (a user bringing a file,
    or a corrupt upload that still matches its own checksum)."""
    folder = stack.storage_dir / new_id
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    manifest = json.loads((stack.storage_dir / source_id / "manifest.json").read_text())
    manifest.update(id=new_id, sha256=hashlib.sha256(archive).hexdigest(), size_bytes=len(archive))
    manifest.update(manifest_changes)
    (folder / manifest["archive_name"]).write_bytes(archive)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return new_id


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def source(stack: Stack, mongo: MongoClient) -> Database:
    return mongo[database_of(stack, "mongo")]


@pytest.fixture(scope="module")
def seeded(source: Database) -> dict[str, Any]:
    seed(source)
    return snapshot(source)


@pytest.fixture(scope="module")
def backup_job(stack: Stack, seeded: dict) -> dict:
    # gzip asked for (the default is zstd): what `mongorestore --archive --gzip` reads
    job = backup_now(stack, options={"compression": "gzip"})
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def backup(stack: Stack, backup_job: dict) -> dict:
    return record(stack.api.get(f"/backups/{backup_job['backup_id']}")).body


# ----------------------------------------------------------------------------- backup


def test_backup_is_a_gzip_mongodump_archive_listed_with_its_counts(
    stack: Stack, source: Database, backup_job: dict, backup: dict
) -> None:
    archive = stack.storage_dir / backup["id"] / "archive.gz"
    data = archive.read_bytes()
    assert backup["sha256"] == hashlib.sha256(data).hexdigest() and backup["size_bytes"] == len(data)
    assert gzip.decompress(data).startswith(MAGIC)
    assert backup["engine"] == "mongodb" and backup["format"] == "mongodump-archive"
    assert backup["compression"] == "gzip" and backup["database"] == source.name
    assert backup["tool_version"].startswith("pymongo ")
    assert len(backup["server_version"].split(".")) == 3
    expected = {f"{source.name}.{name}": source[name].count_documents({}) for name in COLLECTIONS + VIEWS}
    expected[f"{source.name}.big_orders"] = 0  # a view holds no documents of its own
    assert backup["details"]["namespaces"] == expected
    assert backup["details"]["views"] == [f"{source.name}.big_orders"]

    progress = backup_job["progress"]
    assert progress["items_total"] == progress["items_done"] == sum(expected.values())
    assert progress["percent"] == 100.0 and progress["current"].startswith(source.name + ".")

    with open_decompressing_reader(io.BytesIO(data)) as stream:
        reader = ArchiveReader(stream)
        entries = {entry.collection: entry for entry in reader.entries}
        summary = reader.verify()
    assert reader.header.server_version == backup["server_version"]
    assert entries["big_orders"].type == "view" and entries["big_orders"].options["viewOn"] == "orders"
    assert entries["capped_log"].options["capped"] is True
    index_names = {ix["name"] for ix in entries["orders"].indexes}
    assert index_names == {"_id_", "by_customer", "ttl_placed", "code_unique", "note_sparse"}
    assert summary.total_documents == sum(expected.values())


def test_restore_in_place_with_drop_brings_every_byte_back(
    stack: Stack, source: Database, seeded: dict, backup_job: dict
) -> None:
    source.orders.delete_many({"_id": {"$lt": 700}})
    source.orders.drop_index("by_customer")
    source.everything.update_many({}, {"$set": {"string": "changed"}})
    source.drop_collection("big_orders")
    source.drop_collection("a.b.c")
    assert snapshot(source) != seeded

    job = restore_now(stack, backup_id=backup_job["backup_id"], drop=True)

    assert job["status"] == "succeeded", job
    assert job["result"]["documents"] == 40 + 1500 + 50 + 20 + 2
    assert snapshot(source) == seeded
    assert [doc["_id"] for doc in source.big_orders.find({}, {"_id": 1}).sort("_id", 1).limit(2)] == [1334, 1335]
    assert job["progress"]["percent"] == 100.0


def test_restore_into_another_database_recreates_options_indexes_and_views(
    stack: Stack, mongo: MongoClient, seeded: dict, backup_job: dict
) -> None:
    copy = mongo["flexdb_it_copy_" + uuid.uuid4().hex[:8]]

    job = restore_now(stack, backup_id=backup_job["backup_id"], database=copy.name)

    assert job["status"] == "succeeded", job
    assert job["result"]["databases"] == [copy.name]
    assert snapshot(copy) == seeded
    assert copy.big_orders.count_documents({}) == len([i for i in range(1500) if i * 3 > 4000])
    mongo.drop_database(copy.name)


def test_restore_of_only_some_collections_leaves_the_rest_out(
    stack: Stack, mongo: MongoClient, seeded: dict, backup_job: dict
) -> None:
    part = mongo["flexdb_it_part_" + uuid.uuid4().hex[:8]]

    job = restore_now(
        stack, backup_id=backup_job["backup_id"], database=part.name, options={"collections": ["orders", "a.b.c"]}
    )

    assert job["status"] == "succeeded", job
    assert sorted(part.list_collection_names()) == ["a.b.c", "orders"]
    assert snapshot(part) == {name: seeded[name] for name in ("a.b.c", "orders")}
    assert job["result"]["namespaces"] == {f"{part.name}.orders": 1500, f"{part.name}.a.b.c": 2}
    mongo.drop_database(part.name)


def test_restore_without_drop_refuses_collections_that_hold_documents(
    stack: Stack, source: Database, seeded: dict, backup_job: dict
) -> None:
    source.orders.delete_one({"_id": 1499})
    before = snapshot(source)

    job = restore_now(stack, backup_id=backup_job["backup_id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "target_not_empty"
    assert '"drop": true' in job["error"]["message"]
    assert f"already holds data in {source.name}." in job["error"]["message"]
    assert snapshot(source) == before


def test_restore_of_a_collection_the_backup_lacks_is_refused(stack: Stack, backup_job: dict) -> None:
    job = restore_now(
        stack, backup_id=backup_job["backup_id"], database="flexdb_it_never", options={"collections": ["nope"]}
    )

    assert job["status"] == "failed" and job["error"]["code"] == "validation_failed"
    assert "nope" in job["error"]["message"]


# ----------------------------------------------------------------------------- damaged archives


def test_a_flipped_byte_fails_the_checksum_before_the_database_is_touched(
    stack: Stack, source: Database, backup: dict
) -> None:
    damaged = bytearray((stack.storage_dir / backup["id"] / "archive.gz").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    # the manifest keeps the sum of the sound archive, as after bit rot in storage
    backup_id = add_backup(stack, backup["id"], backup["id"] + "-flipped", bytes(damaged), sha256=backup["sha256"])
    source["a.b.c"].insert_one({"_id": "added-before-flip"})
    before = snapshot(source)

    job = restore_now(stack, backup_id=backup_id, drop=True)

    assert job["status"] == "failed" and job["error"]["code"] == "checksum_mismatch"
    assert snapshot(source) == before


@pytest.mark.parametrize("damage", ["truncated", "document_byte", "gzip_tail"])
def test_a_damaged_archive_that_matches_its_manifest_is_refused_by_the_structural_check(
    stack: Stack, source: Database, backup: dict, damage: str
) -> None:
    plain = gzip.decompress((stack.storage_dir / backup["id"] / "archive.gz").read_bytes())
    if damage == "truncated":
        archive = gzip.compress(plain[: len(plain) * 2 // 3])
    elif damage == "document_byte":  # inside a document's string: only the archive's CRC notices
        at = plain.index(b"log 7")
        archive = gzip.compress(plain[:at] + b"LOG 7" + plain[at + 5 :])
    else:
        compressed = gzip.compress(plain)
        archive = compressed[:-12]
    backup_id = add_backup(stack, backup["id"], f"{backup['id']}-{damage.replace('_', '-')}", archive)
    for name in COLLECTIONS:  # a restore that started would replace every one of these
        source[name].insert_one({"_id": f"added-before-{damage}", "total": 1})
    before = snapshot(source)

    job = restore_now(stack, backup_id=backup_id, drop=True)

    assert job["status"] == "failed", job
    assert job["error"]["code"] in {"archive_corrupt", "checksum_mismatch"}
    assert snapshot(source) == before


# ----------------------------------------------------------------------------- archives users bring


@pytest.mark.parametrize(
    ("fixture", "compress", "collection", "documents"),
    [
        ("test.bar.archive", False, "bar", 1),
        ("test.bar.archive", True, "bar", 1),
        ("dump-w-oplog.archive", True, "foo", 25),
        ("timeseries.archive", False, "foo_ts", 10),
    ],
)
@needs_mongodump_fixtures
def test_an_archive_written_by_the_real_mongodump_restores(
    stack: Stack, mongo: MongoClient, backup: dict, fixture: str, compress: bool, collection: str, documents: int
) -> None:
    data = (FIXTURES / fixture).read_bytes()
    archive = gzip.compress(data) if compress else data
    name = "archive.gz" if compress else "archive"
    backup_id = add_backup(
        stack,
        backup["id"],
        f"brought-{fixture.split('.')[0]}-{int(compress)}-{uuid.uuid4().hex[:6]}",
        archive,
        archive_name=name,
        compression="gzip" if compress else None,
        details={},  # no counts: a brought archive is planned from its own prelude
    )
    into = mongo["flexdb_it_brought_" + uuid.uuid4().hex[:8]]

    job = restore_now(stack, backup_id=backup_id, target="mongo", database=into.name)

    assert job["status"] == "succeeded", job
    restored = next(iter(job["result"]["namespaces"].values()))
    assert restored == documents
    if fixture == "timeseries.archive":  # the collection is recreated as timeseries, data as raw buckets
        assert "timeseries" in next(into.list_collections(filter={"name": collection}))["options"]
        assert into[f"system.buckets.{collection}"].count_documents({}) == documents
    else:
        assert into[collection].count_documents({}) == documents
    assert "admin" not in {ns.split(".")[0] for ns in job["result"]["namespaces"]}
    mongo.drop_database(into.name)


# ----------------------------------------------------------------------------- scope and options


def test_target_options_leave_excluded_collections_out_of_the_backup(stack: Stack, mongo: MongoClient) -> None:
    db = mongo[database_of(stack, "mongo-some")]
    db.keep.insert_many([{"_id": i} for i in range(5)])
    db.scratch.insert_many([{"_id": i} for i in range(5)])

    job = backup_now(stack, target="mongo-some")

    assert job["status"] == "succeeded", job
    details = record(stack.api.get(f"/backups/{job['backup_id']}")).body["details"]
    assert details["namespaces"] == {f"{db.name}.keep": 5}


def test_backup_options_of_a_job_select_collections(stack: Stack, source: Database, backup_job: dict) -> None:
    job = backup_now(stack, options={"collections": ["orders"], "exclude_collections": ["a.b.c"]})

    assert job["status"] == "succeeded", job
    details = record(stack.api.get(f"/backups/{job['backup_id']}")).body["details"]
    assert list(details["namespaces"]) == [f"{source.name}.orders"]


def test_backup_of_a_uri_without_database_covers_every_user_database(
    stack: Stack, source: Database, seeded: dict
) -> None:
    job = backup_now(stack, target="mongo-all")

    assert job["status"] == "succeeded", job
    backup = record(stack.api.get(f"/backups/{job['backup_id']}")).body
    assert source.name in backup["details"]["databases"]
    assert not {"admin", "config", "local"} & set(backup["details"]["databases"])
    assert backup["database"] is None or len(backup["details"]["databases"]) == 1
    assert backup["details"]["namespaces"][f"{source.name}.orders"] == source.orders.count_documents({})


@pytest.mark.parametrize(
    ("path", "body", "pointers"),
    [
        ("/backups", {"target": "mongo", "options": {"colour": "red"}}, ["/options/colour"]),
        ("/backups", {"target": "mongo", "options": {"collections": "orders"}}, ["/options/collections"]),
        (
            "/backups",
            {"target": "mongo", "options": {"exclude_collections": ["ok", 3]}},
            ["/options/exclude_collections/1"],
        ),
        ("/backups", {"target": "mongo", "options": {"collections": []}}, ["/options/collections"]),
    ],
)
def test_bad_options_are_refused_at_submit(stack: Stack, path: str, body: dict, pointers: list[str]) -> None:
    response = record(stack.api.post(path, body))

    assert response.status == 422 and response.body["code"] == "validation_failed"
    assert sorted(e["pointer"] for e in response.body["errors"]) == pointers


def test_restore_takes_no_exclude_option(stack: Stack, backup_job: dict) -> None:
    response = record(
        stack.api.post("/restores", {"backup_id": backup_job["backup_id"], "options": {"exclude_collections": ["x"]}})
    )

    assert response.status == 422
    assert [e["pointer"] for e in response.body["errors"]] == ["/options/exclude_collections"]


# ----------------------------------------------------------------------------- connections


def test_unreachable_server_fails_the_job_with_target_unreachable(stack: Stack) -> None:
    job = backup_now(stack, target="mongo-down")

    assert job["status"] == "failed" and job["error"]["code"] == "target_unreachable"
    assert "mongo-down" in job["error"]["message"] and job["backup_id"] is None


def test_wrong_password_fails_with_authentication_failed(stack: Stack) -> None:
    job = backup_now(stack, target="mongo-badauth")
    check = record(stack.api.post("/targets/mongo-badauth/check"))

    assert job["status"] == "failed" and job["error"]["code"] == "authentication_failed"
    assert "credentials" in job["error"]["message"]
    assert check.status == 502 and check.body["code"] == "authentication_failed"


def test_target_check_reports_version_latency_and_database(stack: Stack, source: Database) -> None:
    response = record(stack.api.post("/targets/mongo/check"))

    assert response.status == 200, response.text
    assert len(response.body["server_version"].split(".")) == 3 and response.body["latency_ms"] >= 0
    assert response.body["details"]["databases"] == [source.name]
    everything = record(stack.api.post("/targets/mongo-all/check")).body["details"]["databases"]
    assert source.name in everything and "admin" not in everything


def test_ad_hoc_mongodb_check_never_echoes_the_password(stack: Stack, mongo_server: MongoTestServer) -> None:
    secret = "AdHoc-" + CANARY_PASSWORD
    body = {"engine": "mongodb", "uri": mongo_server.uri("x", password=secret)}
    response = record(stack.api.post("/connections/check", body))

    assert response.status == 502 and response.body["code"] == "authentication_failed"
    assert secret not in response.text


def test_no_response_of_this_module_carries_the_password(stack: Stack) -> None:
    """Runs last in this module: every answer above was recorded."""
    RESPONSES.append(record(stack.api.get("/targets")).text)
    RESPONSES.append(record(stack.api.get("/jobs?limit=100")).text)
    RESPONSES.append(record(stack.api.get("/backups?limit=100")).text)
    assert len(RESPONSES) > 20
    assert not [text for text in RESPONSES if CANARY_PASSWORD in text]
    uris = {item["name"]: item["uri"] for item in stack.api.get("/targets").body["items"]}
    assert uris["mongo"].startswith("mongodb://flexdb:***@127.0.0.1:")
    assert CANARY_PASSWORD not in stack.logs()
