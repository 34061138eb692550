"""Stream stages composed by the backup workflow (pure: no I/O of their own)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO, Protocol, Self

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


class HashingReader:
    """Passes reads through while computing SHA-256 and counting bytes: one read of an archive
    serves both its checksum and an engine's structural check."""

    def __init__(self, source: BinaryIO, progress: ProgressTracker | None = None) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self._progress = progress
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.size += len(data)
        if self._progress is not None and data:
            self._progress.add_bytes(len(data))
        return data

    def readable(self) -> bool:
        return True

    def drain(self, chunk_size: int) -> None:
        """Read what the check left unread, so the checksum covers every byte."""
        while self.read(chunk_size):
            pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class CountingReader:
    """Passes reads through and reports the bytes read as progress (no checksum)."""

    def __init__(self, source: BinaryIO, progress: ProgressTracker) -> None:
        self._source = source
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            self._progress.add_bytes(len(data))
        return data

    def readable(self) -> bool:
        return True


def iter_chunks(source: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    while chunk := source.read(chunk_size):
        yield chunk


class Window:
    """``length`` bytes of ``source`` from ``start``, for a stream that cannot be opened at an
    offset (a decrypting one): skipped by seeking when the stream can, else by reading."""

    def __init__(self, source: BinaryIO, start: int, length: int | None, chunk_size: int) -> None:
        self._source = source
        if start:
            if getattr(source, "seekable", lambda: False)():
                source.seek(start)
            else:
                left = start
                while left > 0 and (skipped := source.read(min(chunk_size, left))):
                    left -= len(skipped)
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left is None:
            return self._source.read(size)
        if self._left <= 0:
            return b""
        data = self._source.read(self._left if size is None or size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
