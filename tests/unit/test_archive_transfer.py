"""Download ranges, delete rules and import refusals of the backup catalog, over an in-memory
blob store (the real-stack round trips are in tests/integration/test_archive_transfer.py)."""

from __future__ import annotations

import hashlib
import io
from types import SimpleNamespace

import pytest

from shared.core.errors import ArchiveCorrupt, ArchiveTooLarge, BackupInUse, BackupPinned, RangeNotSatisfiable
from shared.core.settings import EncryptionKey, Settings, Target
from shared.domain.backups import BackupManifest
from shared.domain.codecs import PlainCodec
from shared.domain.jobs import Job, JobKind, JobStatus, Page
from shared.domain.ranges import ByteRange
from shared.services.catalog import BackupCatalog
from shared.storage import BlobCatalog, MemoryBlobStore
from shared.storage.crypto import Keyring

ARCHIVE = bytes(range(256)) * 40  # 10240 bytes


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 100)),
        ("bytes=990-", 1000, (990, 10)),
        ("bytes=-10", 1000, (990, 10)),
        ("bytes=-5000", 1000, (0, 1000)),
        ("bytes=500-99999", 1000, (500, 500)),
        ("BYTES = 1 - 1", 1000, (1, 1)),
    ],
)
def test_a_single_range_resolves_against_the_size(header: str, size: int, expected: tuple[int, int]) -> None:
    assert ByteRange.parse(header).resolve(size) == expected


@pytest.mark.parametrize("header", [None, "", "items=0-1", "bytes=0-1,4-5", "bytes=5-1", "bytes=-", "bytes=a-b"])
def test_ranges_this_server_does_not_take_mean_the_whole_archive(header: str | None) -> None:
    assert ByteRange.parse(header) is None


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=-0"])
def test_a_range_outside_the_archive_is_unsatisfiable_with_the_size(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        ByteRange.parse(header).resolve(1000)
    assert caught.value.status == 416 and caught.value.headers() == {"Content-Range": "bytes */1000"}


class FakeJobs:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def find(self, filters, limit, cursor):
        matching = [job for job in self.jobs if filters.matches(job)]
        start = int(cursor or 0)
        page = matching[start : start + limit]
        return Page(page, str(start + limit) if start + limit < len(matching) else None)


def stored(catalog: BlobCatalog, backup_id: str = "b1", pinned: bool = False) -> BackupManifest:
    with catalog.open_sink(backup_id, "archive.bin") as sink:
        sink.write(ARCHIVE)
        sink.commit()
    manifest = BackupManifest(
        id=backup_id, target="t", engine="demo", format="demo", archive_name="archive.bin", created_at="x",
        finished_at="x", duration_seconds=0.0, size_bytes=len(ARCHIVE), sha256=hashlib.sha256(ARCHIVE).hexdigest(),
        pinned=pinned,
    )  # fmt: skip
    catalog.write_manifest(manifest)
    return manifest


def restore_job(backup_id: str, status: JobStatus) -> Job:
    return Job(kind=JobKind.RESTORE, target="t", engine="demo", params={"backup_id": backup_id}, status=status)


def test_a_download_reads_only_the_range_asked_for() -> None:
    storage = BlobCatalog(MemoryBlobStore())
    stored(storage)
    catalog = BackupCatalog(storage)

    whole = catalog.download("b1")
    part = catalog.download("b1", ByteRange.parse("bytes=-100"))

    assert (whole.partial, whole.length, whole.stream.read()) == (False, len(ARCHIVE), ARCHIVE)
    assert (part.partial, part.start, part.length, part.stream.read()) == (True, len(ARCHIVE) - 100, 100, ARCHIVE[-100:])


def test_a_range_of_an_encrypted_archive_is_served_decrypted() -> None:
    """An encrypted archive cannot be opened at an offset: the catalog decrypts and skips."""
    key = EncryptionKey("k1", bytes(range(32)))
    storage = BlobCatalog(MemoryBlobStore(), Keyring([key]), chunk_bytes=4096)
    with storage.open_sink("b1", "archive.bin") as sink:
        sink.write(ARCHIVE)
        sink.commit()
        encryption = sink.encryption
    manifest = BackupManifest(
        id="b1", target="t", engine="demo", format="demo", archive_name="archive.bin", created_at="x",
        finished_at="x", duration_seconds=0.0, size_bytes=len(ARCHIVE), sha256=hashlib.sha256(ARCHIVE).hexdigest(),
        encryption=encryption,
    )  # fmt: skip
    storage.write_manifest(manifest)
    catalog = BackupCatalog(storage)

    assert ARCHIVE[5000:5010] not in storage.blobs.open("b1/archive.bin").read()
    assert catalog.open_content(manifest, 5000, 10).read() == ARCHIVE[5000:5010]
    assert catalog.open_content(manifest, 10230).read() == ARCHIVE[10230:]


def test_delete_refuses_a_pinned_backup_and_one_an_unfinished_restore_reads() -> None:
    storage = BlobCatalog(MemoryBlobStore())
    stored(storage, "pinned", pinned=True)
    stored(storage, "read")
    stored(storage, "free")
    jobs = [restore_job("read", JobStatus.QUEUED), restore_job("free", JobStatus.SUCCEEDED)]
    jobs += [restore_job("other", JobStatus.RUNNING) for _ in range(250)]  # more than one page
    catalog = BackupCatalog(storage, FakeJobs(jobs))  # type: ignore[arg-type]

    with pytest.raises(BackupPinned, match="PATCH"):
        catalog.delete("pinned")
    with pytest.raises(BackupInUse, match=jobs[0].id):
        catalog.delete("read")
    catalog.delete("free")

    assert [m.id for m in storage.iter_manifests()] == ["read", "pinned"]
    assert list(storage.blobs.list("free/")) == []


class RefusingEngine:
    name, archive_format, archive_name = "demo", "demo", "archive.bin"

    def import_codec(self, head: bytes) -> PlainCodec:
        return PlainCodec()

    def import_archive_name(self, head: bytes) -> str:
        return self.archive_name

    def inspect_import(self, open_archive):
        with open_archive() as archive:
            raise ArchiveCorrupt(f"not a demo archive ({archive.read(4)!r})")


def importing_catalog(monkeypatch, limit: int = 1 << 20) -> tuple[BackupCatalog, MemoryBlobStore]:
    blobs = MemoryBlobStore()
    settings = Settings.from_env({"FLEXDB_IMPORT_MAX_BYTES": str(limit), "FLEXDB_STREAM_CHUNK_BYTES": "4096"})
    targets = SimpleNamespace(get=lambda name: Target(name, "demo", "demo://x"))
    monkeypatch.setattr("shared.services.catalog.engine_for", lambda name, settings: RefusingEngine())
    return BackupCatalog(BlobCatalog(blobs), None, targets, settings), blobs  # type: ignore[arg-type]


def test_an_import_the_engine_refuses_leaves_nothing_in_storage(monkeypatch) -> None:
    catalog, blobs = importing_catalog(monkeypatch)

    with pytest.raises(ArchiveCorrupt, match="not a demo archive"):
        catalog.import_archive("t", io.BytesIO(ARCHIVE), len(ARCHIVE))

    assert list(blobs.list()) == []


def test_an_import_over_the_limit_is_refused_while_streaming(monkeypatch) -> None:
    catalog, blobs = importing_catalog(monkeypatch, limit=5000)

    with pytest.raises(ArchiveTooLarge, match="FLEXDB_IMPORT_MAX_BYTES"):
        catalog.import_archive("t", io.BytesIO(ARCHIVE), len(ARCHIVE))  # announced: before a byte is read
    with pytest.raises(ArchiveTooLarge, match="FLEXDB_IMPORT_MAX_BYTES"):
        catalog.import_archive("t", io.BytesIO(ARCHIVE), None)  # chunked: counted

    assert list(blobs.list()) == []
