"""Blobs in a local folder: key ``<folder>/<name>`` is the file ``<root>/<folder>/<name>``.

A blob is written as ``<name>.part``, fsynced and renamed into place, so a reader never sees
half of it. A key maps only to the real path under the root: no ``..``, no absolute path, no
symlink on the way (a planted link cannot make the service read or list a foreign file). A full
disk (or quota) is reported as :class:`StorageFull` wherever it shows (write, fsync, rename),
and what the failed write left is removed.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.core.errors import StorageError, StorageFull
from shared.domain.ports import ArchiveSink, BlobInfo, BlobMissing, BlobStore
from shared.domain.streams import Window
from shared.storage.catalog import MANIFEST, BlobCatalog

__all__ = ["MANIFEST", "LocalBlobStore", "LocalStorage"]

PART_SUFFIX = ".part"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _storage_failure(exc: OSError, root: Path, doing: str) -> StorageError:
    """The storage error a user can act on: a full disk is its own code."""
    if exc.errno in _NO_SPACE:
        return StorageFull(
            f"No space left in the storage folder {root} while {doing} ({exc.strerror}). The partial "
            "archive was removed and older backups are intact; free space or delete old backups, then retry."
        )
    return StorageError(f"Cannot write to the storage folder {root} while {doing}: {exc.strerror}.")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalWriter(ArchiveSink):
    def __init__(self, final: Path, root: Path, doing: str) -> None:
        self._final = final
        self._root = root
        self._doing = doing
        # A name of its own per write: two writers of one key (a pin and an unpin) never share it.
        self._part = final.with_name(f"{final.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        self._file = self._part.open("wb")

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            raise _storage_failure(exc, self._root, f"writing the {self._doing}") from None

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())  # a filesystem that allocates late says ENOSPC only here
            self._file.close()
            os.replace(self._part, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            raise _storage_failure(exc, self._root, f"saving the {self._doing}") from None

    def abort(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass  # closing flushes the buffer, which fails again on a full disk; the fd is closed
        self._part.unlink(missing_ok=True)
        try:
            self._final.parent.rmdir()  # only if nothing else is in it
        except OSError:
            pass


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not all(part and part not in {".", ".."} and "\\" not in part for part in parts):
            raise BlobMissing(key)
        return self.root.joinpath(*parts)

    def _real(self, key: str) -> Path:
        """The path of ``key``, which must exist and be the path itself (no link on the way)."""
        path = self._path(key)
        try:
            if path.resolve(strict=True) != path or not path.is_file():
                raise BlobMissing(key)
        except OSError:
            raise BlobMissing(key) from None
        return path

    def writer(self, key: str) -> ArchiveSink:
        path = self._path(key)
        doing = "manifest" if path.name == "manifest.json" else "archive"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent.resolve() != path.parent:
                raise StorageError(f"The storage folder for {key!r} is a link; refusing to write through it.")
            return _LocalWriter(path, self.root, doing)
        except OSError as exc:
            raise _storage_failure(exc, self.root, f"starting the {doing}") from None

    def open(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        handle = self._real(key).open("rb")
        if start == 0 and length is None:
            return handle
        return Window(handle, start, length, 0)  # type: ignore[return-value]  # a file seeks to start

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        if not self.root.is_dir():
            return
        for folder in os.scandir(self.root):
            # A symlinked folder is not ours to list (it may lead anywhere).
            if not folder.is_dir(follow_symlinks=False):
                continue
            if not (folder.name + "/").startswith(prefix) and not prefix.startswith(folder.name + "/"):
                continue
            try:
                entries = list(os.scandir(folder.path))
            except OSError:
                continue
            for entry in entries:
                key = f"{folder.name}/{entry.name}"
                if key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    yield BlobInfo(key, stat.st_size, stat.st_mtime)

    def stat(self, key: str) -> BlobInfo | None:
        try:
            stat = self._real(key).stat()
        except (BlobMissing, OSError):
            return None
        return BlobInfo(key, stat.st_size, stat.st_mtime)

    def delete(self, key: str) -> None:
        try:
            path = self._path(key)
        except BlobMissing:
            return
        for candidate in (path, *path.parent.glob(glob.escape(path.name) + ".*" + PART_SUFFIX)):
            candidate.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # the backup's folder, once it is empty
        except OSError:
            pass

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


class LocalStorage(BlobCatalog):
    """The catalog over a local folder: what ``file://`` storage URLs give."""

    def __init__(self, root: Path) -> None:
        super().__init__(LocalBlobStore(root))
        self.root = self.blobs.root
