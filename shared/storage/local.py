"""Local folder storage: ``<root>/<backup_id>/<archive>`` plus ``manifest.json``.

Archives are written as ``<name>.part``, fsynced and renamed into place; the manifest is
written last (itself via a temporary file and rename), so a listed backup is always complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.core.errors import BackupNotFound, StorageError
from shared.domain.backups import BackupManifest, validate_backup_id
from shared.domain.ports import ArchiveSink, Storage

MANIFEST = "manifest.json"
PART_SUFFIX = ".part"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalSink(ArchiveSink):
    def __init__(self, final: Path) -> None:
        self._final = final
        self._part = final.with_name(final.name + PART_SUFFIX)
        self._file = self._part.open("wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._part, self._final)
        _fsync_dir(self._final.parent)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._part.unlink(missing_ok=True)
        try:
            self._final.parent.rmdir()  # only if nothing else is in it
        except OSError:
            pass


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _dir(self, backup_id: str) -> Path:
        path = (self.root / validate_backup_id(backup_id)).resolve()
        if path.parent != self.root:
            raise BackupNotFound(f"No backup with id {backup_id!r}.")
        return path

    def open_sink(self, backup_id: str, name: str) -> ArchiveSink:
        directory = self._dir(backup_id)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return _LocalSink(directory / name)
        except OSError as exc:
            raise StorageError(f"Cannot write to the storage folder {self.root}: {exc.strerror}.") from None

    def open_archive(self, manifest: BackupManifest) -> BinaryIO:
        path = self._dir(manifest.id) / manifest.archive_name
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise BackupNotFound(f"Backup {manifest.id} has a manifest but its archive is missing.") from None

    def write_manifest(self, manifest: BackupManifest) -> None:
        directory = self._dir(manifest.id)
        tmp = directory / (MANIFEST + PART_SUFFIX)
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(manifest.to_dict(), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / MANIFEST)
        _fsync_dir(directory)

    def read_manifest(self, backup_id: str) -> BackupManifest:
        path = self._dir(backup_id) / MANIFEST
        try:
            return BackupManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise BackupNotFound(f"No backup with id {backup_id!r}.") from None
        except (ValueError, TypeError) as exc:
            raise StorageError(f"The manifest of backup {backup_id} is unreadable: {exc}") from None

    def iter_manifests(self, before_id: str | None = None) -> Iterator[BackupManifest]:
        if not self.root.is_dir():
            return
        names = sorted((entry.name for entry in os.scandir(self.root) if entry.is_dir()), reverse=True)
        for name in names:
            if before_id is not None and name >= before_id:
                continue
            try:
                yield self.read_manifest(name)
            except (BackupNotFound, StorageError):
                continue  # incomplete or foreign folder: not a backup

    def delete(self, backup_id: str) -> None:
        directory = self._dir(backup_id)
        (directory / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)

    def remove_incomplete(self, older_than_seconds: float) -> list[str]:
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_seconds
        removed = []
        for entry in os.scandir(self.root):
            if not entry.is_dir() or (Path(entry.path) / MANIFEST).exists():
                continue
            newest = max([entry.stat().st_mtime, *(f.stat().st_mtime for f in os.scandir(entry.path))])
            if newest < cutoff:  # nothing written for that long: no attempt is still running
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        return sorted(removed)

    def describe(self) -> str:
        return str(self.root)

    def problem(self) -> str | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the storage folder: {exc.strerror}"
        if not os.access(self.root, os.W_OK):
            return "the storage folder is not writable by this process"
        return None
