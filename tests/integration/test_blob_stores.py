"""One contract for every blob store, and the catalog's rules over each: what the backup
workflow relies on must hold for the local folder, memory and S3 alike."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.errors import BackupNotFound
from shared.domain.backups import BackupManifest
from shared.domain.ports import BlobMissing, BlobStore
from shared.storage import BlobCatalog, LocalBlobStore, MemoryBlobStore
from tests.support.s3 import moto_s3, s3_blob_store

BACKUP_ID = "20261202T000000000000Z-aaaaaa"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on 127.0.0.1 (moto in server mode: no S3 service can be had here)."""
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "memory", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
    elif request.param == "memory":
        yield MemoryBlobStore()
    else:
        with s3_blob_store(request.getfixturevalue("s3_endpoint")) as store:
            yield store


def put(store: BlobStore, key: str, data: bytes, chunk: int = 1000) -> None:
    with store.writer(key) as sink:
        for start in range(0, len(data), chunk):
            sink.write(data[start : start + chunk])
        sink.commit()


def test_a_blob_reads_back_whole_and_by_range(blobs: BlobStore) -> None:
    data = os.urandom(50_000)
    put(blobs, "b1/archive.dump", data)
    with blobs.open("b1/archive.dump") as handle:
        assert hashlib.sha256(handle.read()).digest() == hashlib.sha256(data).digest()
    with blobs.open("b1/archive.dump", start=1000, length=500) as handle:
        assert handle.read() == data[1000:1500]
    info = blobs.stat("b1/archive.dump")
    assert info is not None and info.size == len(data) and info.modified <= time.time() + 5


def test_a_blob_is_invisible_until_committed_and_gone_after_an_abort(blobs: BlobStore) -> None:
    sink = blobs.writer("b2/archive.dump")
    sink.write(b"half of it")
    assert blobs.stat("b2/archive.dump") is None
    with pytest.raises(BlobMissing):
        blobs.open("b2/archive.dump")
    sink.abort()
    assert blobs.stat("b2/archive.dump") is None
    assert [i.key for i in blobs.list("b2/") if not i.key.endswith(".part")] == []


def test_list_by_prefix_and_delete(blobs: BlobStore) -> None:
    put(blobs, "b3/one", b"1")
    put(blobs, "b3/two", b"22")
    put(blobs, "b33/three", b"333")
    assert sorted(i.key for i in blobs.list("b3/")) == ["b3/one", "b3/two"]
    assert {i.key for i in blobs.list("")} >= {"b3/one", "b3/two", "b33/three"}
    blobs.delete("b3/one")
    blobs.delete("b3/missing")  # no error
    assert sorted(i.key for i in blobs.list("b3/")) == ["b3/two"]
    with pytest.raises(BlobMissing):
        blobs.open("b3/one")
    assert blobs.problem() is None and blobs.describe()


def manifest(backup_id: str, size: int, sha256: str) -> BackupManifest:
    return BackupManifest(
        id=backup_id, target="orders", engine="postgresql", format="pg_dump-custom", archive_name="archive.dump",
        created_at="2026-12-02T00:00:00Z", finished_at="2026-12-02T00:00:01Z", duration_seconds=1.0,
        size_bytes=size, sha256=sha256,
    )  # fmt: skip


def test_the_catalog_lists_a_backup_only_once_its_manifest_is_written(blobs: BlobStore) -> None:
    catalog = BlobCatalog(blobs)
    data = b"dump" * 1000
    with catalog.open_sink(BACKUP_ID, "archive.dump") as sink:
        sink.write(data)
        sink.commit()
    assert list(catalog.iter_manifests()) == []
    with pytest.raises(BackupNotFound):
        catalog.read_manifest(BACKUP_ID)
    catalog.write_manifest(manifest(BACKUP_ID, len(data), hashlib.sha256(data).hexdigest()))
    assert [m.id for m in catalog.iter_manifests()] == [BACKUP_ID]
    with catalog.open_archive(catalog.read_manifest(BACKUP_ID)) as handle:
        assert handle.read() == data
    catalog.delete(BACKUP_ID)
    assert list(catalog.iter_manifests()) == [] and list(blobs.list(BACKUP_ID + "/")) == []


def test_the_catalog_sweeps_what_dead_attempts_left_and_nothing_else(blobs: BlobStore) -> None:
    catalog = BlobCatalog(blobs)
    put(blobs, "20261201T000000000000Z-dead00/archive.dump", b"a dead attempt's archive")
    put(blobs, f"{BACKUP_ID}/archive.dump", b"x")
    catalog.write_manifest(manifest(BACKUP_ID, 1, hashlib.sha256(b"x").hexdigest()))
    assert catalog.remove_incomplete(older_than_seconds=3600) == []  # too recent: it may be running
    assert catalog.remove_incomplete(older_than_seconds=-1) == ["20261201T000000000000Z-dead00"]
    assert [m.id for m in catalog.iter_manifests()] == [BACKUP_ID]


def test_listing_again_reads_only_new_or_changed_manifests() -> None:
    """What keeps GET /backups and every /metrics scrape from reading every manifest each time."""
    reads: list[str] = []

    class Counting(MemoryBlobStore):
        def open(self, key: str, start: int = 0, length: int | None = None):
            reads.append(key)
            return super().open(key, start, length)

    catalog = BlobCatalog(Counting())
    for n in range(5):
        backup_id = f"20261202T00000{n}000000Z-aaaaaa"
        put(catalog.blobs, f"{backup_id}/archive.dump", b"x")
        catalog.write_manifest(manifest(backup_id, 1, hashlib.sha256(b"x").hexdigest()))
    assert len(list(catalog.iter_manifests())) == 5 and len(reads) == 5
    reads.clear()
    assert len(list(catalog.iter_manifests())) == 5 and reads == []
    pinned = catalog.read_manifest("20261202T000002000000Z-aaaaaa")
    reads.clear()
    catalog.write_manifest(BackupManifest(**{**pinned.to_dict(), "pinned": True}))
    assert [m.pinned for m in catalog.iter_manifests() if m.id == pinned.id] == [True]
    assert reads == [f"{pinned.id}/manifest.json"]
