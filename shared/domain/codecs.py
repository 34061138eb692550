"""Compression codecs for archive streams (Strategies, registered by name).

The backup workflow puts a codec between the engine and storage: the engine writes plain bytes,
the codec's writer compresses them into the stored archive, and a restore reads them back through
the codec's reader. Each codec writes what its own command-line tool reads (``zstd -dc``,
``gzip -dc``, ``mongorestore --gzip``), so an archive can always be restored by hand.

A codec's writer never closes the stream under it: ``close()`` writes the codec's trailer and the
workflow then commits the storage sink. A reader turns every decoder failure into ArchiveCorrupt.
"""

from __future__ import annotations

import gzip
import io
import zlib
from abc import ABC, abstractmethod
from typing import Any, BinaryIO, ClassVar, Protocol, cast

import zstandard

from shared.core.errors import ArchiveCorrupt
from shared.core.settings import Settings

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zstandard counts threads this way: -1 is "one per logical CPU", 0 compresses in the caller.
_ZSTD_ALL_CPUS = -1


class WritableStream(Protocol):
    def write(self, data: bytes, /) -> object: ...


class ReadableStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class StreamCodec(ABC):
    name: ClassVar[str]
    extension: ClassVar[str]  # appended to the engine's archive name
    magic: ClassVar[bytes] = b""  # how a stream written by this codec starts (b"": anything)

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> StreamCodec:
        """This codec with the levels and threads the settings choose."""

    @abstractmethod
    def writer(self, sink: WritableStream) -> BinaryIO:
        """A stream that compresses into ``sink``; its close() ends the stream, not ``sink``."""

    @abstractmethod
    def _decoder(self, source: BinaryIO) -> ReadableStream:
        """The decompressed view of ``source`` (errors are translated by :meth:`reader`)."""

    def reader(self, source: ReadableStream, *, owns_source: bool = False) -> BinaryIO:
        """The plain bytes of a stream this codec wrote; a damaged stream raises ArchiveCorrupt.
        Closing the reader closes ``source`` too only when it ``owns_source``."""
        decoder = self._decoder(cast(BinaryIO, source))
        return cast(BinaryIO, _DecompressingReader(decoder, self.name, source if owns_source else None))


_CODECS: dict[str, type[StreamCodec]] = {}


def _register(codec: type[StreamCodec]) -> type[StreamCodec]:
    _CODECS[codec.name] = codec
    return codec


@_register
class ZstdCodec(StreamCodec):
    """Multi-threaded zstd: compresses faster than a dump tool writes, on every core given."""

    name, extension, magic = "zstd", ".zst", ZSTD_MAGIC

    def __init__(self, level: int = 3, threads: int = 0, long_window_log: int = 0) -> None:
        self.level = level
        self.threads = threads
        self.long_window_log = long_window_log  # as `zstd --long=N`; 0: off

    @classmethod
    def from_settings(cls, settings: Settings) -> ZstdCodec:
        return cls(settings.zstd_level, settings.zstd_threads or _ZSTD_ALL_CPUS, settings.zstd_long)

    def writer(self, sink: WritableStream) -> BinaryIO:
        # Long-distance matching finds repeats megabytes apart (rows of one table, the same text
        # in many rows) for little CPU; `zstd -dc` reads windows up to 2^27 without flags.
        window = {"enable_ldm": True, "window_log": self.long_window_log} if self.long_window_log else {}
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level, threads=self.threads, write_checksum=True, **window
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
        return cast(BinaryIO, compressor.stream_writer(cast(BinaryIO, sink), closefd=False))

    def _decoder(self, source: BinaryIO) -> ReadableStream:
        # Several frames may follow each other (zstd -dc reads them all): so do we.
        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True, closefd=False)


@_register
class GzipCodec(StreamCodec):
    """One standard gzip member: what ``gzip -dc`` and ``mongorestore --archive --gzip`` read."""

    name, extension, magic = "gzip", ".gz", GZIP_MAGIC

    def __init__(self, level: int = 6) -> None:
        self.level = level

    @classmethod
    def from_settings(cls, settings: Settings) -> GzipCodec:
        return cls(settings.gzip_level)

    def writer(self, sink: WritableStream) -> BinaryIO:
        # filename="" keeps the sink's name out of the header; mtime=0 keeps output reproducible
        return cast(
            BinaryIO,
            gzip.GzipFile(filename="", mode="wb", fileobj=cast(BinaryIO, sink), compresslevel=self.level, mtime=0),
        )

    def _decoder(self, source: BinaryIO) -> ReadableStream:
        return gzip.GzipFile(filename="", mode="rb", fileobj=source)  # also reads concatenated members


@_register
class PlainCodec(StreamCodec):
    """No compression: the bytes pass through."""

    name, extension = "none", ""

    @classmethod
    def from_settings(cls, settings: Settings) -> PlainCodec:
        return cls()

    def writer(self, sink: WritableStream) -> BinaryIO:
        return cast(BinaryIO, _NonClosingWriter(sink))

    def _decoder(self, source: BinaryIO) -> ReadableStream:
        return source


CODEC_NAMES: tuple[str, ...] = tuple(_CODECS)
# Levels and threads as shipped, for callers that have no settings of their own.
_DEFAULTS = Settings()


def codec_from_settings(name: str, settings: Settings) -> StreamCodec:
    """The codec called ``name``, tuned by the settings; ValueError for an unknown name."""
    try:
        codec = _CODECS[name]
    except KeyError:
        raise ValueError(f"unknown compression codec {name!r}; expected one of {', '.join(CODEC_NAMES)}") from None
    return codec.from_settings(settings)


def stored_codec(compression: str | None, settings: Settings) -> StreamCodec:
    """How to read an archive whose manifest says ``compression``. Values that name no stream
    codec (None, or "pg_dump-zlib" of archives compressed inside the dump tool) are read as
    they are stored."""
    return codec_from_settings(compression if compression in _CODECS else PlainCodec.name, settings)  # type: ignore[arg-type]


def detect_codec(prefix: bytes) -> str:
    """The codec a stream was written with, from its first bytes ("none" when no codec's magic)."""
    for codec in _CODECS.values():
        if codec.magic and prefix.startswith(codec.magic):
            return codec.name
    return PlainCodec.name


def open_compressed_writer(raw_stream: WritableStream, codec: str, *, level: int | None = None) -> BinaryIO:
    """A writer that compresses into ``raw_stream`` with ``codec`` at ``level`` (its default when
    None), without settings: for callers outside the workflow. Close it to write the trailer;
    ``raw_stream`` stays open."""
    chosen = codec_from_settings(codec, _DEFAULTS)
    if level is not None:
        chosen.level = level  # type: ignore[attr-defined]  # only the codecs that compress take one
    return chosen.writer(raw_stream)


def open_decompressing_reader(raw_stream: ReadableStream) -> BinaryIO:
    """The plain bytes of a stream whatever codec wrote it, told by its first bytes (an archive
    made elsewhere). Needs no seeking: the sniffed bytes are served again. The result's ``codec``
    attribute names the codec found."""
    prefix = b""
    while len(prefix) < len(ZSTD_MAGIC):  # a pipe may return short reads
        more = raw_stream.read(len(ZSTD_MAGIC) - len(prefix))
        if not more:
            break
        prefix += more
    return codec_from_settings(detect_codec(prefix), _DEFAULTS).reader(_PrefixedReader(prefix, raw_stream))


class _NonClosingWriter(io.RawIOBase):
    """Pass-through writer whose close() leaves the underlying stream open, like the others."""

    def __init__(self, raw: WritableStream) -> None:
        super().__init__()
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self._raw, "flush", None)
        if flush is not None and not self.closed:
            flush()


class _PrefixedReader(io.RawIOBase):
    """Re-serves the bytes already read for detection, then the rest of the raw stream."""

    def __init__(self, prefix: bytes, raw: ReadableStream) -> None:
        super().__init__()
        self._prefix = prefix
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if not self._prefix:
            return self._raw.read(size) or b""
        if size is not None and 0 <= size < len(self._prefix):
            head, self._prefix = self._prefix[:size], self._prefix[size:]
            return head
        head, self._prefix = self._prefix, b""
        if size is None or size < 0:
            rest = self._raw.read()
        else:
            rest = self._raw.read(size - len(head)) if size > len(head) else b""
        return head + (rest or b"")

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _DecompressingReader(io.RawIOBase):
    """Readable view of the decompressed stream; decoder failures become ArchiveCorrupt."""

    def __init__(self, inner: ReadableStream, codec: str, owned_source: ReadableStream | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._owned_source = owned_source
        self.codec = codec
        self.bytes_out = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        try:
            data = self._inner.read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as exc:
            raise ArchiveCorrupt(
                f"the {self.codec} stream is corrupt or truncated after {self.bytes_out} decompressed bytes: {exc}"
            ) from exc
        self.bytes_out += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            # the decoders do not close the stream under them; a plain "decoder" is that stream
            streams = [self._inner] if self.codec != PlainCodec.name else []
            for stream in [*streams, self._owned_source]:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
