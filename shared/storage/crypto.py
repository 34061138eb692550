"""Client-side encryption as stream stages: AES-256-GCM in authenticated chunks.

:class:`EncryptingSink` wraps the sink an archive is written to; :class:`DecryptingReader`
wraps the stream it is read from. Neither ever holds more than one chunk, whatever the archive
size. The format (documented in docs/encryption.md)::

    header  = magic "FLEXENC" | version (1 byte) | chunk size (4 bytes, big-endian)
              | key id length (1 byte) | key id (ASCII) | file nonce (12 random bytes)
    frame   = ciphertext length (4 bytes, big-endian) | ciphertext + 16-byte GCM tag
    archive = header, then one frame per chunk; the last frame is flagged, and present even
              when the plaintext is empty

Chunk ``i`` is sealed with nonce ``file nonce XOR i`` and associated data
``header | i (8 bytes, big-endian) | last flag (1 byte)``, so a changed byte anywhere, a
reordered, duplicated or dropped chunk, a cut-off tail or a header taken from another archive
fails authentication. Plaintext is released only after its chunk's tag has been checked.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.core.errors import ArchiveCorrupt, EncryptionKeyMissing
from shared.core.settings import (
    ENCRYPTION_CHUNK_BYTES_MAX,
    ENCRYPTION_KEY_BYTES,
    NAME_PATTERN,
    EncryptionKey,
    Settings,
)
from shared.domain.ports import ArchiveSink

ALGORITHM = "AES-256-GCM"
MAGIC = b"FLEXENC"
FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
_FIXED_HEADER = struct.Struct(">7sBIB")  # magic, version, chunk size, key id length
_FRAME_LENGTH = struct.Struct(">I")
_CHUNK_INDEX = struct.Struct(">Q")
_DAMAGED = "The encrypted archive is damaged"


def looks_encrypted(head: bytes) -> bool:
    """Whether the first bytes of an archive are this format's header."""
    return head.startswith(MAGIC)


class Keyring:
    """The keys of FLEXDB_ENCRYPTION_KEYS: the first encrypts, every one decrypts."""

    def __init__(self, keys: Iterable[EncryptionKey] = ()) -> None:
        self._keys = tuple(keys)
        self._by_id = {entry.key_id: entry.key for entry in self._keys}

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        return cls(settings.encryption_keys)

    @property
    def current(self) -> EncryptionKey | None:
        """The key new archives are encrypted with, or None when encryption is off."""
        return self._keys[0] if self._keys else None

    def get(self, key_id: str) -> bytes:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise EncryptionKeyMissing(
                f"The archive was encrypted with key {key_id!r}, which this service does not have; "
                "add that key (id:base64key) to FLEXDB_ENCRYPTION_KEYS to read it."
            ) from None

    def __repr__(self) -> str:
        return f"Keyring(key_ids={[entry.key_id for entry in self._keys]!r})"


def _header(key_id: str, chunk_bytes: int, file_nonce: bytes) -> bytes:
    encoded_id = key_id.encode("ascii")
    return _FIXED_HEADER.pack(MAGIC, FORMAT_VERSION, chunk_bytes, len(encoded_id)) + encoded_id + file_nonce


def _chunk_nonce(file_nonce: bytes, index: int) -> bytes:
    return (int.from_bytes(file_nonce, "big") ^ index).to_bytes(NONCE_BYTES, "big")


def _associated_data(header: bytes, index: int, last: bool) -> bytes:
    return header + _CHUNK_INDEX.pack(index) + (b"\x01" if last else b"\x00")


class EncryptingSink(ArchiveSink):
    """Encrypts what is written into ``inner``; ``commit`` seals the last chunk, then commits
    ``inner``. The manifest records :attr:`algorithm` and :attr:`key_id`."""

    algorithm = ALGORITHM

    @property
    def encryption(self) -> dict[str, str]:  # type: ignore[override]
        return {"algorithm": self.algorithm, "key_id": self.key_id}

    def __init__(self, inner: ArchiveSink, key_id: str, key: bytes, chunk_bytes: int) -> None:
        if not NAME_PATTERN.fullmatch(key_id):
            raise ValueError("a key id uses 1-64 letters, digits, '_' or '-'")
        if len(key) != ENCRYPTION_KEY_BYTES:
            raise ValueError(f"an AES-256 key is {ENCRYPTION_KEY_BYTES} bytes")
        if not 1 <= chunk_bytes <= ENCRYPTION_CHUNK_BYTES_MAX:
            raise ValueError(f"chunk_bytes must be within 1..{ENCRYPTION_CHUNK_BYTES_MAX}")
        self.inner = inner
        self.key_id = key_id
        self._aead = AESGCM(key)
        self._chunk_bytes = chunk_bytes
        self._file_nonce = os.urandom(NONCE_BYTES)
        self._header = _header(key_id, chunk_bytes, self._file_nonce)
        self._pending = bytearray()
        self._index = 0
        self._finished = False
        inner.write(self._header)

    def write(self, data: bytes) -> int:
        if self._finished:
            raise ValueError("write to an encrypting sink after commit or abort")
        view = memoryview(data).cast("B")
        size, position, chunk = len(view), 0, self._chunk_bytes
        while position < size:
            # A full chunk is sealed only once more data follows: until then it may be the last.
            if len(self._pending) == chunk:
                self._seal(self._pending, last=False)
                self._pending.clear()
            if not self._pending and size - position > chunk:
                # Whole chunks straight from the caller's buffer, without copying them first.
                self._seal(view[position : position + chunk], last=False)
                position += chunk
                continue
            take = min(chunk - len(self._pending), size - position)
            self._pending += view[position : position + take]
            position += take
        return size

    def commit(self) -> None:
        if self._finished:
            raise ValueError("an encrypting sink commits once")
        self._seal(self._pending, last=True)
        self._pending = bytearray()
        self._finished = True
        self.inner.commit()

    def abort(self) -> None:
        self._pending = bytearray()
        self._finished = True
        self.inner.abort()

    def _seal(self, plaintext: bytes | bytearray | memoryview, last: bool) -> None:
        sealed = self._aead.encrypt(
            _chunk_nonce(self._file_nonce, self._index), plaintext, _associated_data(self._header, self._index, last)
        )
        self.inner.write(_FRAME_LENGTH.pack(len(sealed)))
        self.inner.write(sealed)
        self._index += 1


class DecryptingReader(io.RawIOBase):
    """Reads the plaintext of an encrypted archive from ``source`` (closed with the reader).

    The header is read on construction, so a missing key shows before anything else is read:
    :class:`EncryptionKeyMissing`. Altered, reordered, duplicated or truncated chunks raise
    :class:`ArchiveCorrupt`; plaintext is released only after its chunk authenticates, and the
    end of the stream is reported only after the flagged last chunk.
    """

    algorithm = ALGORITHM

    @property
    def encryption(self) -> dict[str, str]:  # type: ignore[override]
        return {"algorithm": self.algorithm, "key_id": self.key_id}

    def __init__(self, source: BinaryIO, keyring: Keyring) -> None:
        super().__init__()
        self._source = source
        self._plain = memoryview(b"")
        try:
            self._read_header(keyring)
        except BaseException:
            source.close()  # the reader owns its source, even when it cannot be made
            raise

    def _read_header(self, keyring: Keyring) -> None:
        fixed = self._read_exactly(_FIXED_HEADER.size, "its header is cut short")
        magic, version, chunk_bytes, id_length = _FIXED_HEADER.unpack(fixed)
        if magic != MAGIC:
            raise ArchiveCorrupt(f"{_DAMAGED}: it does not start with the encryption header.")
        if version != FORMAT_VERSION:
            raise ArchiveCorrupt(f"{_DAMAGED}: encryption format version {version} is unknown to this service.")
        if not 1 <= chunk_bytes <= ENCRYPTION_CHUNK_BYTES_MAX:
            raise ArchiveCorrupt(f"{_DAMAGED}: its header names an impossible chunk size.")
        raw_id = self._read_exactly(id_length, "its header is cut short")
        key_id = raw_id.decode("ascii", errors="replace")
        if not NAME_PATTERN.fullmatch(key_id):
            raise ArchiveCorrupt(f"{_DAMAGED}: its header names no valid key id.")
        self._file_nonce = self._read_exactly(NONCE_BYTES, "its header is cut short")
        self.key_id = key_id
        self._aead = AESGCM(keyring.get(key_id))
        self._header = fixed + raw_id + self._file_nonce
        self._max_frame = chunk_bytes + TAG_BYTES
        self._index = 0
        self._next_length: int | None = self._read_frame_length()
        if self._next_length is None:
            raise ArchiveCorrupt(f"{_DAMAGED}: it ends after its header (truncated).")

    # -- io.RawIOBase

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end); everything left when ``size`` < 0."""
        self._checkClosed()
        parts: list[bytes] = []
        wanted = -1 if size is None or size < 0 else size
        while wanted != 0:
            if not self._plain and not self._open_next_chunk():
                break
            take = len(self._plain) if wanted < 0 else min(wanted, len(self._plain))
            whole_chunk = take == len(self._plain) == len(self._plain.obj)
            # A whole chunk is handed over as is: no copy of a megabyte per read.
            parts.append(self._plain.obj if whole_chunk else bytes(self._plain[:take]))
            self._plain = self._plain[take:]
            if wanted > 0:
                wanted -= take
        return b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        target = memoryview(buffer).cast("B")
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._plain = memoryview(b"")
            try:
                self._source.close()
            finally:
                super().close()

    # -- frames

    def _open_next_chunk(self) -> bool:
        """Authenticate the next chunk into ``_plain``; False once the last chunk was read."""
        length = self._next_length
        if length is None:
            return False
        if not TAG_BYTES <= length <= self._max_frame:
            raise ArchiveCorrupt(f"{_DAMAGED}: chunk {self._index} has an impossible length.")
        sealed = self._read_exactly(length, f"chunk {self._index} is cut short (truncated)")
        # The chunk is the last one exactly when nothing follows it; its flag must agree.
        self._next_length = self._read_frame_length()
        last = self._next_length is None
        try:
            plain = self._aead.decrypt(
                _chunk_nonce(self._file_nonce, self._index), sealed, _associated_data(self._header, self._index, last)
            )
        except InvalidTag:
            raise ArchiveCorrupt(
                f"{_DAMAGED}: chunk {self._index} fails authentication (altered, reordered, duplicated or truncated)."
            ) from None
        self._index += 1
        self._plain = memoryview(plain)
        return True

    def _read_frame_length(self) -> int | None:
        """The next frame's length, or None at a clean end of the stream."""
        raw = self._read_up_to(_FRAME_LENGTH.size)
        if not raw:
            return None
        if len(raw) < _FRAME_LENGTH.size:
            raise ArchiveCorrupt(f"{_DAMAGED}: it ends inside a chunk's length (truncated).")
        return _FRAME_LENGTH.unpack(raw)[0]

    def _read_exactly(self, size: int, problem: str) -> bytes:
        data = self._read_up_to(size)
        if len(data) < size:
            raise ArchiveCorrupt(f"{_DAMAGED}: {problem}.")
        return data

    def _read_up_to(self, size: int) -> bytes:
        """``size`` bytes, or fewer only at the end: a source may return short reads."""
        first = self._source.read(size)
        if len(first) == size or not first:
            return first
        parts, got = [first], len(first)
        while got < size:
            more = self._source.read(size - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)
