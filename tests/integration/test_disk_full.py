"""Disk full, for real: the storage folder of a private API and worker lives on an 8 MiB
filesystem. A small backup fits; a backup of ~20 MiB of random (incompressible) rows does not.
The job ends `failed` with `storage_full` (not `internal_error`), nothing of it is left behind,
and the older backup is still listed and restores. Then the storage layer itself is driven into
ENOSPC at each step that can meet it (archive write, manifest write)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.core.errors import StorageFull
from shared.domain.backups import BackupManifest
from shared.storage.local import LocalStorage
from tests.conftest import Stack, drop_database, pg_admin, pg_uri, running_stack
from tests.support.small_fs import CannotMount, small_filesystem

SIZE_MB = 8
GOOD_ID = "20261126T000000000000Z-000001"
SINK_ID = "20261126T000000000000Z-000002"
MANIFEST_ID = "20261126T000000000000Z-000003"
NOISE_MB = 20  # more than the filesystem holds, even compressed: the bytes are random


@pytest.fixture(scope="module")
def small_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("disk-full")
    try:
        with small_filesystem(work / "mnt", SIZE_MB, work) as mount:
            yield mount
    except CannotMount as exc:
        pytest.skip(f"needs a small filesystem to fill: {exc}")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"flexdb_full_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(pg_uri(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO customers (name) SELECT 'customer ' || n FROM generate_series(1, 100) n")
    yield name
    drop_database(name)


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory, small_mount: Path, database: str, own_redis_url: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("disk-full-stack")
    targets = {"full-pg": {"engine": "postgresql", "uri": pg_uri(database)}}
    with running_stack(tmp, targets, own_redis_url, FLEXDB_STORAGE_DIR=str(small_mount / "backups")) as stack:
        yield stack


def backup(stack: Stack) -> dict:
    response = stack.api.post("/backups", {"target": "full-pg"})
    assert response.status == 202, response.text
    return stack.api.wait_job(response.headers["Location"], timeout=120)


def add_random_rows(database: str, megabytes: int) -> None:
    # 1 KiB of random bytes per row (md5 of random numbers, decoded from hex): pg_dump cannot compress it.
    with psycopg.connect(pg_uri(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE noise (id int PRIMARY KEY, payload bytea NOT NULL)")
        conn.execute(
            """INSERT INTO noise
               SELECT g, decode(string_agg(md5(random()::text || g || ':' || i), ''), 'hex')
               FROM generate_series(1, %s) g, generate_series(1, 64) i GROUP BY g""",
            (megabytes * 1024,),
        )


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".part"))


def test_a_backup_that_does_not_fit_fails_storage_full_and_older_backups_stay_good(full_stack: Stack, database: str) -> None:
    first = backup(full_stack)
    assert first["status"] == "succeeded", first
    add_random_rows(database, NOISE_MB)

    job = backup(full_stack)

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "storage_full", job["error"]
    assert "No space left" in job["error"]["message"]
    # nothing of the failed attempt is left: no .part file, no folder
    root = full_stack.storage_dir
    assert leftovers(root) == []
    assert sorted(p.name for p in root.iterdir()) == [first["backup_id"]]
    listed = full_stack.api.get("/backups?target=full-pg").body["items"]
    assert [b["id"] for b in listed] == [first["backup_id"]]

    # the older backup still verifies and restores (its checksum is checked before the restore)
    copy = f"{database}_copy"
    try:
        response = full_stack.api.post("/restores", {"backup_id": first["backup_id"], "database": copy})
        assert response.status == 202, response.text
        restored = full_stack.api.wait_job(response.headers["Location"], timeout=120)
        assert restored["status"] == "succeeded", restored
        with psycopg.connect(pg_uri(copy)) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 100
    finally:
        drop_database(copy)


# ------------------------------------------------------------------------------ the storage layer itself


def manifest_for(backup_id: str, size: int) -> BackupManifest:
    return BackupManifest(
        id=backup_id, target="t", engine="postgresql", format="pg_dump-custom", archive_name="archive.dump",
        created_at="2026-11-26T09:54:38Z", finished_at="2026-11-26T09:54:39Z", duration_seconds=1.0,
        size_bytes=size, sha256="0" * 64,
    )


@pytest.fixture()
def full_disk(small_mount: Path) -> Iterator[LocalStorage]:
    """Storage on the small filesystem, with one good backup, then every free byte taken."""
    storage = LocalStorage(small_mount / f"layer-{secrets.token_hex(3)}")
    with storage.open_sink(GOOD_ID, "archive.dump") as sink:
        sink.write(b"good" * 1000)
        sink.commit()
    storage.write_manifest(manifest_for(GOOD_ID, 4000))
    (storage.root / MANIFEST_ID).mkdir()  # its archive "was written"; only the manifest is left to write
    filler = small_mount / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    try:
        yield storage
    finally:
        filler.unlink()
        assert [m.id for m in storage.iter_manifests()] == [GOOD_ID]  # the good one survived every attempt
        with storage.open_archive(storage.read_manifest(GOOD_ID)) as archive:
            assert archive.read() == b"good" * 1000


def test_the_archive_write_on_a_full_disk_is_storage_full_and_removed(full_disk: LocalStorage) -> None:
    with pytest.raises(StorageFull), full_disk.open_sink(SINK_ID, "archive.dump") as sink:
        for _ in range(64):
            sink.write(b"x" * 65536)
        sink.commit()
    assert not (full_disk.root / SINK_ID).exists()


def test_the_manifest_write_on_a_full_disk_is_storage_full_and_leaves_no_temp_file(full_disk: LocalStorage) -> None:
    manifest = BackupManifest(**{**manifest_for(MANIFEST_ID, 1).to_dict(), "details": {"padding": "x" * 200_000}})
    with pytest.raises(StorageFull):
        full_disk.write_manifest(manifest)
    folder = full_disk.root / MANIFEST_ID
    assert not folder.exists() or list(folder.iterdir()) == [], "no temporary manifest left"
