"""Compression in the stream, for every engine, on the real servers: each codec round trips,
a backup may choose its own, archives made before codecs existed still restore, the hand
restores the user manual shows work, and PostgreSQL's directory format runs parallel jobs
through a scratch folder that is always removed."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pymongo import MongoClient
from pymongo.uri_parser import parse_uri

from shared.core.errors import FlexDBError, JobCancelled
from shared.core.settings import Settings, Target
from shared.domain.backups import BackupManifest
from shared.domain.engine import BackupEngine, RestoreRequest
from shared.domain.progress import ProgressTracker
from shared.engines import engine_for
from shared.storage import BlobCatalog, LocalBlobStore, LocalStorage
from shared.storage.crypto import Keyring
from tests.conftest import Stack, drop_database, pg_admin
from tests.support.mongo import MongoTestServer

ZSTD_MAGIC, GZIP_MAGIC, PG_MAGIC = b"\x28\xb5\x2f\xfd", b"\x1f\x8b", b"PGDMP"
MONGO_MAGIC = b"\x6d\xe2\x99\x81"
SEED_SQL = """
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, tags text[], meta jsonb, blob bytea);
CREATE INDEX notes_body_idx ON notes (left(body, 20));
CREATE TABLE events (id bigserial PRIMARY KEY, note_id int REFERENCES notes (id), at timestamptz, amount numeric(10, 2));
CREATE VIEW big_events AS SELECT * FROM events WHERE amount > 50;
INSERT INTO notes (body, tags, meta, blob)
SELECT repeat('note ' || g || ' says something about the weather; ', 1 + g % 7), ARRAY['t' || g % 4],
       jsonb_build_object('n', g), decode(md5(g::text), 'hex')
FROM generate_series(1, 2000) g;
INSERT INTO events (note_id, at, amount)
SELECT 1 + g % 2000, timestamptz '2026-06-01 00:00+00' + g * interval '1 minute', (g % 10000) / 100.0
FROM generate_series(1, 6000) g;
"""


def pg_target(database: str) -> Target:
    return Target("codecs", "postgresql", f"postgresql://postgres@127.0.0.1:5432/{database}")


def pg_state(database: str) -> dict[str, Any]:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as conn:
        return {
            "notes": conn.execute("SELECT * FROM notes ORDER BY id").fetchall(),
            "events": conn.execute("SELECT * FROM events ORDER BY id").fetchall(),
            "view": conn.execute("SELECT count(*) FROM big_events").fetchone(),
            "indexes": conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall(),
        }


def tracker() -> ProgressTracker:
    return ProgressTracker(lambda progress: None, interval_seconds=0)


def new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "000000Z-" + secrets.token_hex(3)


def stored_bytes(storage: LocalStorage, manifest: BackupManifest) -> bytes:
    return (storage.root / manifest.id / manifest.archive_name).read_bytes()


def tool_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    return {**env, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}


def store_old_backup(storage: BlobCatalog, manifest: BackupManifest, archive: bytes) -> BackupManifest:
    """Put an archive into storage as the service stored it before codecs: its own name, its
    own compression in the manifest."""
    with storage.open_sink(manifest.id, manifest.archive_name) as sink:
        sink.write(archive)
        sink.commit()
    manifest = replace(manifest, sha256=hashlib.sha256(archive).hexdigest(), size_bytes=len(archive))
    storage.write_manifest(manifest)
    return manifest


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"FLEXDB_SCRATCH_DIR": str(tmp_path / "scratch"), "FLEXDB_PG_MAX_JOBS": "4"})


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "backups")


@pytest.fixture(scope="module")
def pg_source() -> Iterator[str]:
    name = "flexdb_codecs_src_" + secrets.token_hex(4)
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True) as conn:
        conn.execute(SEED_SQL)
    yield name
    drop_database(name)


@pytest.fixture
def pg_copy() -> Iterator[str]:
    name = "flexdb_codecs_copy_" + secrets.token_hex(4)
    yield name
    drop_database(name)


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize(("codec", "extension", "magic"), [("zstd", ".zst", ZSTD_MAGIC), ("gzip", ".gz", GZIP_MAGIC), ("none", "", PG_MAGIC)])
def test_postgresql_round_trip_with_each_codec(
    settings: Settings, storage: LocalStorage, pg_source: str, pg_copy: str, codec: str, extension: str, magic: bytes
) -> None:
    engine = engine_for("postgresql", settings)

    manifest = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker(), {"compression": codec})
    engine.restore(pg_target(pg_source), storage, manifest, RestoreRequest(database=pg_copy), tracker())

    assert pg_state(pg_copy) == pg_state(pg_source)
    assert (manifest.compression, manifest.archive_name, manifest.format) == (codec, "archive.dump" + extension, "pg_dump-custom")
    stored = stored_bytes(storage, manifest)
    assert stored.startswith(magic) and manifest.sha256 == hashlib.sha256(stored).hexdigest()
    assert storage.read_manifest(manifest.id).compression == codec


def test_postgresql_archive_is_compressed_once_by_the_codec_not_by_pg_dump(
    settings: Settings, storage: LocalStorage, pg_source: str
) -> None:
    engine = engine_for("postgresql", settings)
    plain = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker(), {"compression": "none"})
    packed = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker())  # the default: zstd

    listing = subprocess.run(
        ["pg_restore", "--list"], input=stored_bytes(storage, plain), capture_output=True, check=True
    ).stdout.decode()
    assert "Compression: 0" in listing  # pg_dump --compress=0: nothing for zstd to recompress
    assert packed.compression == "zstd" and packed.size_bytes * 3 < plain.size_bytes


def test_a_hand_restore_works_exactly_as_the_manual_shows(
    settings: Settings, storage: LocalStorage, pg_source: str, pg_copy: str
) -> None:
    manifest = engine_for("postgresql", settings).backup(pg_target(pg_source), storage, new_id(), "job", tracker())
    folder = storage.root / manifest.id

    subprocess.run(
        f"createdb {pg_copy} && zstd -dc archive.dump.zst | pg_restore --no-owner -d {pg_copy}",
        shell=True, cwd=folder, env=tool_env(), check=True, capture_output=True,
    )  # fmt: skip

    assert pg_state(pg_copy) == pg_state(pg_source)


def test_an_archive_made_before_codecs_restores(settings: Settings, storage: LocalStorage, pg_source: str, pg_copy: str) -> None:
    # The old way: pg_dump's own zlib, stored as archive.dump, "pg_dump-zlib" in the manifest.
    archive = subprocess.run(["pg_dump", "--format=custom", "-d", pg_source], env=tool_env(), capture_output=True, check=True).stdout
    engine = engine_for("postgresql", settings)
    manifest = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker())
    old = store_old_backup(
        storage, replace(manifest, id=new_id(), archive_name="archive.dump", compression="pg_dump-zlib"), archive
    )

    engine.restore(pg_target(pg_source), storage, old, RestoreRequest(database=pg_copy), tracker())

    assert pg_state(pg_copy) == pg_state(pg_source)


def test_an_encrypted_archive_is_compressed_before_it_is_encrypted(
    tmp_path: Path, settings: Settings, pg_source: str, pg_copy: str
) -> None:
    key = Settings.from_env({"FLEXDB_ENCRYPTION_KEYS": "k1:" + base64.b64encode(os.urandom(32)).decode()}).encryption_keys
    storage = BlobCatalog(LocalBlobStore(tmp_path / "encrypted"), Keyring(key))
    engine = engine_for("postgresql", settings)

    manifest = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker())
    engine.restore(pg_target(pg_source), storage, manifest, RestoreRequest(database=pg_copy), tracker())

    assert pg_state(pg_copy) == pg_state(pg_source)
    on_disk = (tmp_path / "encrypted" / manifest.id / manifest.archive_name).read_bytes()
    assert manifest.encryption and not on_disk.startswith(ZSTD_MAGIC)
    with storage.open_archive(manifest) as decrypted:
        assert decrypted.read(4) == ZSTD_MAGIC  # under the encryption: the codec's stream
    assert len(on_disk) < manifest.size_bytes * 1.05  # ciphertext of compressed data: does not shrink further


# ----------------------------------------------------------------------------- directory format


def test_directory_format_with_two_jobs_round_trips_and_leaves_no_scratch(
    settings: Settings, storage: LocalStorage, pg_source: str, pg_copy: str
) -> None:
    engine = engine_for("postgresql", settings)
    options = {"format": "directory", "jobs": 2}

    manifest = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker(), options)
    details = engine.restore(pg_target(pg_source), storage, manifest, RestoreRequest(database=pg_copy), tracker())

    assert pg_state(pg_copy) == pg_state(pg_source)
    assert (manifest.format, manifest.archive_name, manifest.compression) == ("pg_dump-directory-tar", "archive.tar.zst", "zstd")
    assert manifest.details["jobs"] == 2 and details["jobs"] == 2
    assert list(settings.scratch_dir.iterdir()) == []  # both the dump's and the restore's folders are gone


def test_a_directory_backup_restores_by_hand_as_the_manual_shows(
    tmp_path: Path, settings: Settings, storage: LocalStorage, pg_source: str, pg_copy: str
) -> None:
    engine = engine_for("postgresql", settings)
    manifest = engine.backup(pg_target(pg_source), storage, new_id(), "job", tracker(), {"format": "directory", "jobs": 2})
    archive = storage.root / manifest.id / "archive.tar.zst"

    subprocess.run(
        f"mkdir restore && zstd -dc {archive} | tar -x -C restore && createdb {pg_copy} && "
        f"pg_restore -j 2 --no-owner -d {pg_copy} restore/dump",
        shell=True, cwd=tmp_path, env=tool_env(), check=True, capture_output=True,
    )  # fmt: skip

    assert pg_state(pg_copy) == pg_state(pg_source)


def _tool_processes(marker: str) -> list[int]:
    """pg_dump/pg_restore processes (leader and parallel workers) working on ``marker``'s folder."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile
    return found


def test_cancelling_a_directory_backup_stops_every_pg_dump_and_removes_the_scratch(
    settings: Settings, storage: LocalStorage
) -> None:
    big = "flexdb_codecs_big_" + secrets.token_hex(4)
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{big}"')
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{big}", autocommit=True) as conn:
            for table in ("a", "b"):  # two tables: pg_dump -j 2 runs a worker on each
                conn.execute(f"CREATE TABLE {table} AS SELECT g, repeat(md5(g::text), 8) AS t FROM generate_series(1, 250000) g")
        progress, outcome = tracker(), {}

        def run() -> None:
            try:
                engine_for("postgresql", settings).backup(
                    pg_target(big), storage, new_id(), "job", progress, {"format": "directory", "jobs": 2}
                )
            except (FlexDBError, JobCancelled) as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        marker = str(settings.scratch_dir.resolve())
        deadline = time.monotonic() + 60
        while len(_tool_processes(marker)) < 3 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)  # the leader and both workers are running
        assert len(_tool_processes(marker)) >= 3, "pg_dump -j 2 finished before it could be stopped"
        progress.stop(JobCancelled("The job was cancelled on request."))
        worker.join(60)

        assert "error" in outcome  # the backup did not complete
        assert _tool_processes(marker) == []
        assert list(settings.scratch_dir.iterdir()) == []
        assert list(storage.iter_manifests()) == []
    finally:
        drop_database(big)


# ----------------------------------------------------------------------------- MongoDB


@pytest.fixture(scope="module")
def mongo_source(mongo: MongoClient) -> Iterator[str]:
    name = "flexdb_codecs_" + secrets.token_hex(4)
    db = mongo[name]
    db.orders.insert_many([{"_id": n, "customer": f"c{n % 40}", "total": n * 1.5, "lines": list(range(n % 9))} for n in range(3000)])
    db.orders.create_index("customer", name="by_customer")
    db.notes.insert_many([{"text": "note " * (n % 30), "n": n} for n in range(500)])
    yield name
    mongo.drop_database(name)


def mongo_state(client: MongoClient, database: str) -> dict[str, Any]:
    db = client[database]
    return {
        name: list(db[name].find().sort("_id")) for name in sorted(db.list_collection_names())
    } | {"indexes": sorted(ix["name"] for ix in db.orders.list_indexes())}


def mongo_target(server: MongoTestServer, database: str) -> Target:
    return Target("codecs-mongo", "mongodb", server.uri(database))


def mongo_restore(engine: BackupEngine, server: MongoTestServer, storage: BlobCatalog, manifest: BackupManifest, into: str) -> None:
    engine.restore(mongo_target(server, manifest.database or ""), storage, manifest, RestoreRequest(database=into), tracker())


@pytest.mark.parametrize(("codec", "name", "magic"), [("zstd", "archive.zst", ZSTD_MAGIC), ("gzip", "archive.gz", GZIP_MAGIC), ("none", "archive", MONGO_MAGIC)])
def test_mongodb_round_trip_with_each_codec(
    settings: Settings, storage: LocalStorage, mongo_server: MongoTestServer, mongo: MongoClient, mongo_source: str,
    codec: str, name: str, magic: bytes,
) -> None:  # fmt: skip
    engine = engine_for("mongodb", settings)
    into = f"{mongo_source}_{codec}"

    manifest = engine.backup(mongo_target(mongo_server, mongo_source), storage, new_id(), "job", tracker(), {"compression": codec})
    mongo_restore(engine, mongo_server, storage, manifest, into)

    assert mongo_state(mongo, into) == mongo_state(mongo, mongo_source)
    assert (manifest.compression, manifest.archive_name) == (codec, name)
    assert stored_bytes(storage, manifest).startswith(magic)
    mongo.drop_database(into)


def test_mongodb_gzip_archive_is_what_mongorestore_gzip_reads(
    settings: Settings, storage: LocalStorage, mongo_server: MongoTestServer, mongo_source: str
) -> None:
    manifest = engine_for("mongodb", settings).backup(
        mongo_target(mongo_server, mongo_source), storage, new_id(), "job", tracker(), {"compression": "gzip"}
    )

    # one gzip member around the plain archive: `mongorestore --archive=archive.gz --gzip`
    assert gzip.decompress(stored_bytes(storage, manifest)).startswith(MONGO_MAGIC)


@pytest.mark.parametrize(("old_codec", "old_name"), [("gzip", "archive.gz"), ("zstd", "archive.zst"), (None, "archive")])
def test_mongodb_archives_made_before_codecs_restore(
    settings: Settings, storage: LocalStorage, mongo_server: MongoTestServer, mongo: MongoClient, mongo_source: str,
    old_codec: str | None, old_name: str,
) -> None:  # fmt: skip
    engine = engine_for("mongodb", settings)
    # The old engine compressed the archive itself (FLEXDB_MONGO_COMPRESSION, gzip by default),
    # named it after its codec and wrote None for an uncompressed one.
    plain = engine.backup(mongo_target(mongo_server, mongo_source), storage, new_id(), "job", tracker(), {"compression": "none"})
    archive = stored_bytes(storage, plain)
    if old_codec == "gzip":
        archive = gzip.compress(archive, mtime=0)
    elif old_codec == "zstd":
        archive = subprocess.run(["zstd", "-c", "-q"], input=archive, capture_output=True, check=True).stdout
    old = store_old_backup(storage, replace(plain, id=new_id(), archive_name=old_name, compression=old_codec), archive)
    into = f"{mongo_source}_old_{old_codec}"

    mongo_restore(engine, mongo_server, storage, old, into)

    assert mongo_state(mongo, into) == mongo_state(mongo, mongo_source)
    mongo.drop_database(into)


# ----------------------------------------------------------------------------- through the API


def test_a_backup_chooses_its_codec_per_request_through_the_api(stack: Stack) -> None:
    response = stack.api.post("/backups", {"target": "pg", "options": {"compression": "gzip"}})
    assert response.status == 202, response.text
    job = stack.api.wait_job(response.headers["Location"])
    assert job["status"] == "succeeded", job

    backup = stack.api.get(f"/backups/{job['backup_id']}").body
    assert backup["compression"] == "gzip"
    assert (stack.storage_dir / backup["id"] / "archive.dump.gz").read_bytes().startswith(GZIP_MAGIC)
    assert job["params"]["options"] == {"compression": "gzip"}


@pytest.mark.parametrize("route", ["/backups", "/schedules"])
def test_an_unknown_codec_is_refused_at_submit_for_backups_and_schedules(stack: Stack, route: str) -> None:
    body = {"target": "mongo", "options": {"compression": "lz4"}}
    if route == "/schedules":
        body["interval_seconds"] = 3600

    response = stack.api.post(route, body)

    assert response.status == 422, response.text
    assert response.body["code"] == "validation_failed"
    assert [e["pointer"] for e in response.body["errors"]] == ["/options/compression"]


def test_a_schedule_takes_the_codec_option_like_a_backup(stack: Stack) -> None:
    response = stack.api.post(
        "/schedules", {"target": "mongo", "interval_seconds": 86400, "enabled": False, "options": {"compression": "none"}}
    )

    assert response.status == 201, response.text
    assert response.body["options"] == {"compression": "none"}
    assert stack.api.request("DELETE", f"/schedules/{response.body['id']}").status == 204


def test_a_downloaded_backup_comes_back_through_import_and_restores(stack: Stack, mongo: MongoClient) -> None:
    own = parse_uri(json.loads(stack.env["FLEXDB_TARGETS"])["mongo"]["uri"])["database"]
    into = "flexdb_codecs_imported_" + secrets.token_hex(3)
    mongo[own].codec_round_trip.insert_many([{"n": n} for n in range(250)])
    try:
        response = stack.api.post("/backups", {"target": "mongo", "options": {"collections": ["codec_round_trip"]}})
        made = stack.api.wait_job(response.headers["Location"])  # the default codec: zstd
        assert made["status"] == "succeeded", made
        downloaded = urllib.request.urlopen(stack.api.url(f"/backups/{made['backup_id']}/archive")).read()
        assert downloaded.startswith(ZSTD_MAGIC)

        request = urllib.request.Request(
            stack.api.url("/backups/import?target=mongo"), data=downloaded, method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        with urllib.request.urlopen(request) as answer:
            imported = json.loads(answer.read())
        restored = stack.api.wait_job(
            stack.api.post("/restores", {"backup_id": imported["id"], "database": into}).headers["Location"]
        )

        assert (imported["compression"], imported["source"]) == ("zstd", "import")
        assert restored["status"] == "succeeded", restored
        assert mongo[into].codec_round_trip.count_documents({}) == 250
    finally:
        mongo.drop_database(into)
        mongo[own].drop_collection("codec_round_trip")
