"""A manifest is believed only when it names its own folder and an archive inside it: with real
files in a temporary storage folder, a manifest edited, copied or planted to reach another
backup's archive (or any file) is neither listed, nor found by id, nor opened. Pins live in the
manifest and survive a fresh start of the storage."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from shared.core.errors import BackupNotFound
from shared.domain.backups import BackupManifest
from shared.services.catalog import BackupCatalog
from shared.storage.local import MANIFEST, LocalStorage

GOOD_ID = "20261126T095438571158Z-aaaaaa"
OTHER_ID = "20261126T095500000000Z-bbbbbb"


def make_backup(storage: LocalStorage, backup_id: str, payload: bytes = b"archive bytes") -> BackupManifest:
    with storage.open_sink(backup_id, "archive.dump") as sink:
        sink.write(payload)
        sink.commit()
    manifest = BackupManifest(
        id=backup_id,
        target="orders",
        engine="postgresql",
        format="pg_dump-custom",
        archive_name="archive.dump",
        created_at="2026-11-26T09:54:38.571158Z",
        finished_at="2026-11-26T09:54:39.000000Z",
        duration_seconds=0.4,
        size_bytes=len(payload),
        sha256="0" * 64,
    )
    storage.write_manifest(manifest)
    return manifest


def edit_manifest(storage: LocalStorage, folder: str, **changes) -> None:
    path = storage.root / folder / MANIFEST
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def listed(storage: LocalStorage) -> list[str]:
    return [m.id for m in storage.iter_manifests()]


@pytest.fixture()
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "backups")
    make_backup(storage, GOOD_ID, b"the good backup")
    return storage


def assert_refused(storage: LocalStorage, folder: str) -> None:
    assert folder not in listed(storage)
    with pytest.raises(BackupNotFound):
        storage.read_manifest(folder)
    with pytest.raises(BackupNotFound):
        BackupCatalog(storage).get(folder)


def test_a_genuine_backup_is_listed_and_opens(storage: LocalStorage) -> None:
    assert listed(storage) == [GOOD_ID]
    with storage.open_archive(storage.read_manifest(GOOD_ID)) as archive:
        assert archive.read() == b"the good backup"


@pytest.mark.parametrize(
    "archive_name",
    [f"../{GOOD_ID}/archive.dump", "/etc/passwd", "..", "sub/archive.dump", ""],
    ids=["parent-dir", "absolute", "dotdot", "subfolder", "empty"],
)
def test_an_archive_name_that_leaves_the_folder_is_refused(storage: LocalStorage, archive_name: str) -> None:
    make_backup(storage, OTHER_ID)
    edit_manifest(storage, OTHER_ID, archive_name=archive_name)
    assert_refused(storage, OTHER_ID)
    assert listed(storage) == [GOOD_ID]  # the good one is untouched
    planted = replace(storage.read_manifest(GOOD_ID), id=OTHER_ID, archive_name=archive_name)
    with pytest.raises(BackupNotFound):
        storage.open_archive(planted)


def test_an_archive_that_is_a_symlink_out_of_the_folder_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not a backup")
    make_backup(storage, OTHER_ID)
    archive = storage.root / OTHER_ID / "archive.dump"
    archive.unlink()
    archive.symlink_to(secret)
    assert_refused(storage, OTHER_ID)
    # to another backup's archive: refused just the same
    archive.unlink()
    archive.symlink_to(storage.root / GOOD_ID / "archive.dump")
    assert_refused(storage, OTHER_ID)


def test_a_backup_folder_that_is_a_symlink_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    elsewhere = LocalStorage(tmp_path / "elsewhere")
    make_backup(elsewhere, OTHER_ID)
    os.symlink(elsewhere.root / OTHER_ID, storage.root / OTHER_ID)
    assert_refused(storage, OTHER_ID)


def test_a_manifest_whose_id_is_not_its_folder_name_is_refused(storage: LocalStorage) -> None:
    copy = storage.root / OTHER_ID
    copy.mkdir()
    for name in (MANIFEST, "archive.dump"):
        (copy / name).write_bytes((storage.root / GOOD_ID / name).read_bytes())
    assert_refused(storage, OTHER_ID)
    assert listed(storage) == [GOOD_ID]
    assert storage.read_manifest(GOOD_ID).id == GOOD_ID


@pytest.mark.parametrize("content", ["[1, 2]", "not json", '{"id": "x"}'])
def test_a_manifest_that_is_not_one_is_skipped(storage: LocalStorage, content: str) -> None:
    (storage.root / OTHER_ID).mkdir()
    (storage.root / OTHER_ID / MANIFEST).write_text(content)
    assert listed(storage) == [GOOD_ID]


def test_a_pin_is_written_in_the_manifest_and_survives_a_restart(storage: LocalStorage) -> None:
    catalog = BackupCatalog(storage)
    assert catalog.set_pinned(GOOD_ID, True).pinned is True
    fresh = BackupCatalog(LocalStorage(storage.root))
    assert fresh.get(GOOD_ID).pinned is True
    assert json.loads((storage.root / GOOD_ID / MANIFEST).read_text())["pinned"] is True
    assert fresh.set_pinned(GOOD_ID, False).pinned is False
    assert BackupCatalog(LocalStorage(storage.root)).get(GOOD_ID).pinned is False
    # the rewrite went through a temporary file that is gone
    assert sorted(p.name for p in (storage.root / GOOD_ID).iterdir()) == ["archive.dump", MANIFEST]


def test_pinning_an_unknown_backup_says_not_found(storage: LocalStorage) -> None:
    with pytest.raises(BackupNotFound):
        BackupCatalog(storage).set_pinned(OTHER_ID, True)
    assert not (storage.root / OTHER_ID).exists()
