"""Blobs in memory, for service-level tests that need no disk and no server. Same contract as
the other stores (``tests/integration/test_blob_stores.py`` holds all of them to it)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from shared.domain.ports import ArchiveSink, BlobInfo, BlobMissing, BlobStore


class _MemoryWriter(ArchiveSink):
    def __init__(self, store: MemoryBlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._buffer = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self._buffer.write(data)

    def commit(self) -> None:
        self._store._put(self._key, self._buffer.getvalue())

    def abort(self) -> None:
        self._buffer = io.BytesIO()


class MemoryBlobStore(BlobStore):
    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self._blobs: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def _put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._blobs[key] = (data, time.time())

    def writer(self, key: str) -> ArchiveSink:
        return _MemoryWriter(self, key)

    def open(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        with self._lock:
            if key not in self._blobs:
                raise BlobMissing(key)
            data = self._blobs[key][0]
        end = len(data) if length is None else start + length
        return io.BytesIO(data[start:end])

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._lock:
            items = [(key, len(data), at) for key, (data, at) in self._blobs.items() if key.startswith(prefix)]
        return iter([BlobInfo(key, size, at) for key, size, at in items])

    def stat(self, key: str) -> BlobInfo | None:
        with self._lock:
            if key not in self._blobs:
                return None
            data, at = self._blobs[key]
        return BlobInfo(key, len(data), at)

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)

    def describe(self) -> str:
        return f"memory://{self._name}"

    def problem(self) -> str | None:
        return None
