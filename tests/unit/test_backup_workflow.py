"""The template method's promises, checked with a small in-test engine over real local storage:
a backup is listed only when complete, and a damaged archive is refused before restoring."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, BinaryIO

import pytest

from shared.core.errors import BackupNotFound, ChecksumMismatch, DumpFailed
from shared.core.settings import Settings, Target
from shared.domain.engine import BackupEngine, DumpResult, RestoreRequest, ServerInfo
from shared.domain.progress import ProgressTracker
from shared.storage import LocalStorage

TARGET = Target("demo", "demo", "demo://localhost/db")


class ChunkEngine(BackupEngine):
    """Writes the given chunks, then optionally fails, as a dump tool dying midway would."""

    name, archive_format, archive_name = "demo", "demo-chunks", "archive.bin"

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        # No codec: the checks below compare the stored bytes with the chunks written.
        super().__init__(Settings.from_env({"FLEXDB_COMPRESSION": "none"}))
        self.chunks, self.fail_after, self.loaded = chunks, fail_after, b""

    def probe(self, target: Target) -> ServerInfo:
        return ServerInfo(version="1.0", latency_ms=0.1)

    def tool_version(self) -> str:
        return "demo 1"

    def dump(self, target, sink, progress, server, options) -> DumpResult:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_after:
                raise DumpFailed("the dump tool died")
            sink.write(chunk)
        return DumpResult(database="db")

    def prepare_restore(self, target, manifest, request) -> None:
        pass

    def load(self, target, archive: BinaryIO, manifest, request, progress) -> dict[str, Any]:
        self.loaded = archive.read()
        return {}


def tracker() -> ProgressTracker:
    return ProgressTracker(lambda progress: None, interval_seconds=0)


def test_a_complete_backup_has_a_manifest_with_the_file_checksum(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    manifest = ChunkEngine([b"abc", b"def"]).backup(TARGET, storage, "b1", "job1", tracker())
    assert manifest.sha256 == hashlib.sha256(b"abcdef").hexdigest() and manifest.size_bytes == 6
    assert storage.read_manifest("b1") == manifest
    assert [m.id for m in storage.iter_manifests()] == ["b1"]
    assert sorted(p.name for p in (tmp_path / "b1").iterdir()) == ["archive.bin", "manifest.json"]


def test_a_dump_that_fails_midway_leaves_no_backup_and_no_partial_file(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(DumpFailed):
        ChunkEngine([b"abc", b"def"], fail_after=1).backup(TARGET, storage, "b2", "job2", tracker())
    assert list(storage.iter_manifests()) == []
    assert not (tmp_path / "b2").exists()


def test_a_folder_without_manifest_is_not_a_backup(tmp_path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "archive.bin.part").write_bytes(b"x")
    storage = LocalStorage(tmp_path)
    assert list(storage.iter_manifests()) == []
    with pytest.raises(BackupNotFound):
        storage.read_manifest("half")


def test_restore_refuses_an_archive_that_no_longer_matches_its_manifest(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    engine = ChunkEngine([b"payload"])
    manifest = engine.backup(TARGET, storage, "b3", "job3", tracker())
    (tmp_path / "b3" / "archive.bin").write_bytes(b"paYload")
    with pytest.raises(ChecksumMismatch):
        engine.restore(TARGET, storage, manifest, RestoreRequest(), tracker())
    assert engine.loaded == b""


@pytest.mark.parametrize("backup_id", ["..", "../etc", "a/b", "", "x" * 65])
def test_ids_cannot_escape_the_storage_folder(tmp_path, backup_id: str) -> None:
    with pytest.raises(BackupNotFound):
        LocalStorage(tmp_path / "root").read_manifest(backup_id)


def test_leftovers_of_dead_attempts_are_swept_but_running_ones_and_backups_kept(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    ChunkEngine([b"kept"]).backup(TARGET, storage, "complete", "job", tracker())
    for name in ("dead", "running"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "archive.bin.part").write_bytes(b"x")
    old = time.time() - 7200
    for path in (tmp_path / "dead", tmp_path / "dead" / "archive.bin.part", tmp_path / "complete"):
        os.utime(path, (old, old))

    assert storage.remove_incomplete(older_than_seconds=3600) == ["dead"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complete", "running"]
    assert [m.id for m in storage.iter_manifests()] == ["complete"]
