"""Stream stages composed by the backup workflow (pure: no I/O of their own)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from shared.domain.progress import ProgressTracker


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...


class HashingWriter:
    """Passes bytes through while computing SHA-256 and counting them."""

    def __init__(self, sink: Writable, progress: ProgressTracker | None = None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._progress = progress
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self._hash.update(data)
        self.size += len(data)
        if self._progress is not None:
            self._progress.add_bytes(len(data))
        return len(data)

    def flush(self) -> None:
        """Part of the file protocol so that stream wrappers (gzip, zstd) can sit on top."""

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def iter_chunks(source: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    while chunk := source.read(chunk_size):
        yield chunk


def sha256_of(source: BinaryIO, chunk_size: int, progress: ProgressTracker | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter_chunks(source, chunk_size):
        digest.update(chunk)
        size += len(chunk)
        if progress is not None:
            progress.add_bytes(len(chunk))
    return digest.hexdigest(), size
