"""Client-side encryption: archives are unreadable without the key, and any damage is refused.

Real AES-256-GCM (the ``cryptography`` library), no mocks: the sink writes into an in-memory
sink, the reader reads from bytes or a file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import runpy
import struct
import tracemalloc
from pathlib import Path

import pytest

from shared.core.errors import ArchiveCorrupt, ConfigurationError, EncryptionKeyMissing
from shared.core.redaction import redact
from shared.core.settings import EncryptionKey, Settings
from shared.domain.ports import ArchiveSink
from shared.storage.crypto import (
    ALGORITHM,
    NONCE_BYTES,
    TAG_BYTES,
    DecryptingReader,
    EncryptingSink,
    Keyring,
    looks_encrypted,
)

CHUNK = 4096
MARKER = b"CUSTOMER-CARD-4111-1111-1111-1111"
KEY_A = EncryptionKey("key-a", bytes(range(32)))
KEY_B = EncryptionKey("key-b", bytes(range(100, 132)))


class BytesSink(ArchiveSink):
    """Collects what is written; commit/abort are recorded."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.state = "open"

    def write(self, data: bytes) -> int:
        return self.buffer.write(data)

    def commit(self) -> None:
        self.state = "committed"

    def abort(self) -> None:
        self.state = "aborted"


class DiscardingSink(ArchiveSink):
    """Counts bytes into a file, keeping nothing in memory."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        self.file.close()

    def abort(self) -> None:
        self.file.close()


def encrypt(plaintext: bytes, key: EncryptionKey = KEY_A, write_sizes: tuple[int, ...] = (CHUNK,)) -> bytes:
    sink = BytesSink()
    encrypting = EncryptingSink(sink, key.key_id, key.key, CHUNK)
    position, turn = 0, 0
    while position < len(plaintext):
        size = write_sizes[turn % len(write_sizes)]
        encrypting.write(plaintext[position : position + size])
        position, turn = position + size, turn + 1
    encrypting.commit()
    assert sink.state == "committed"
    return sink.buffer.getvalue()


def decrypt(stored: bytes, keyring: Keyring | None = None, read_size: int = -1) -> bytes:
    reader = DecryptingReader(io.BytesIO(stored), keyring or Keyring([KEY_A]))
    with reader:
        if read_size < 0:
            return reader.read()
        parts = []
        while part := reader.read(read_size):
            parts.append(part)
        return b"".join(parts)


def header_length(key_id: str = KEY_A.key_id) -> int:
    return 7 + 1 + 4 + 1 + len(key_id) + NONCE_BYTES


def frames(stored: bytes) -> list[bytes]:
    """The archive's frames (length prefix included), after the header."""
    found, position = [], header_length()
    while position < len(stored):
        (length,) = struct.unpack(">I", stored[position : position + 4])
        found.append(stored[position : position + 4 + length])
        position += 4 + length
    return found


def flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, write_sizes",
    [
        (0, (CHUNK,)),
        (1, (1,)),
        (CHUNK, (CHUNK,)),
        (CHUNK, (1000, 3000, 96)),
        (CHUNK * 7 + 123, (1, 4097, 333, CHUNK * 3, 17)),
        (CHUNK * 5, (CHUNK * 5,)),
    ],
)
def test_what_is_written_reads_back_byte_for_byte(size: int, write_sizes: tuple[int, ...]) -> None:
    plaintext = os.urandom(size)
    stored = encrypt(plaintext, write_sizes=write_sizes)
    assert looks_encrypted(stored)
    assert decrypt(stored) == plaintext
    assert decrypt(stored, read_size=1000) == plaintext
    assert decrypt(stored, read_size=1) == plaintext


def test_chunks_are_full_but_the_last_and_an_empty_archive_still_has_its_sealed_last_chunk() -> None:
    assert [len(frame) for frame in frames(encrypt(b""))] == [4 + TAG_BYTES]
    exact = frames(encrypt(b"x" * CHUNK))
    assert [len(frame) for frame in exact] == [4 + CHUNK + TAG_BYTES]
    many = frames(encrypt(b"x" * (CHUNK * 2 + 1), write_sizes=(7,)))
    assert [len(frame) for frame in many] == [4 + CHUNK + TAG_BYTES] * 2 + [4 + 1 + TAG_BYTES]


def test_reads_return_exactly_what_was_asked_across_chunk_boundaries() -> None:
    plaintext = os.urandom(CHUNK * 3)
    with DecryptingReader(io.BytesIO(encrypt(plaintext)), Keyring([KEY_A])) as reader:
        assert reader.read(CHUNK + 10) == plaintext[: CHUNK + 10]
        buffer = bytearray(CHUNK)
        assert reader.readinto(buffer) == CHUNK
        assert bytes(buffer) == plaintext[CHUNK + 10 : 2 * CHUNK + 10]
        assert reader.read() == plaintext[2 * CHUNK + 10 :]
        assert reader.read(5) == b""


def test_stored_bytes_never_contain_the_plaintext() -> None:
    plaintext = MARKER * 2000
    stored = encrypt(plaintext, write_sizes=(len(MARKER) * 3 + 1,))
    assert MARKER not in stored
    assert MARKER[:12] not in stored
    assert KEY_A.key not in stored
    assert decrypt(stored) == plaintext


def test_the_same_plaintext_encrypts_differently_each_time() -> None:
    assert encrypt(MARKER) != encrypt(MARKER)


def test_the_sink_reports_algorithm_and_key_id_and_abort_aborts_the_inner_sink() -> None:
    inner = BytesSink()
    sink = EncryptingSink(inner, KEY_A.key_id, KEY_A.key, CHUNK)
    assert (sink.algorithm, sink.key_id) == (ALGORITHM, "key-a") == ("AES-256-GCM", "key-a")
    with pytest.raises(RuntimeError), sink:
        sink.write(b"partial")
        raise RuntimeError("dump failed")
    assert inner.state == "aborted"
    with pytest.raises(ValueError):
        sink.write(b"more")


# --- damage is refused ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive() -> bytes:
    return encrypt(os.urandom(CHUNK * 4 + 100), write_sizes=(999,))


def assert_refused_as_damaged(stored: bytes) -> None:
    with pytest.raises(ArchiveCorrupt) as caught:
        decrypt(stored, read_size=CHUNK)
    assert caught.value.code == "archive_corrupt"
    assert "damaged" in caught.value.message
    assert base64.b64encode(KEY_A.key).decode() not in caught.value.message


def assert_refused_as_damaged_with(stored: bytes, keyring: Keyring) -> None:
    with pytest.raises(ArchiveCorrupt, match="damaged"):
        decrypt(stored, keyring)


def test_a_flipped_byte_anywhere_is_refused(archive: bytes) -> None:
    header = header_length()
    chunk_frames = frames(archive)
    middle_frame_start = header + len(chunk_frames[0]) + len(chunk_frames[1])
    places = {
        "magic": 0,
        "version": 7,
        "chunk size": 11,
        "file nonce": header - 1,
        "frame length": middle_frame_start + 3,
        "middle chunk": middle_frame_start + 4 + CHUNK // 2,
        "first chunk's tag": header + len(chunk_frames[0]) - 1,
        "last chunk's tag": len(archive) - 1,
    }
    for index in places.values():
        assert_refused_as_damaged(flipped(archive, index))


def test_a_changed_key_id_is_refused_too(archive: bytes) -> None:
    # The header is authenticated with every chunk: even a key id that names the very same key fails.
    renamed = archive.replace(b"key-a", b"key-b", 1)
    assert_refused_as_damaged_with(renamed, Keyring([KEY_A, EncryptionKey("key-b", KEY_A.key)]))


def test_a_truncated_archive_is_refused(archive: bytes) -> None:
    chunk_frames = frames(archive)
    assert_refused_as_damaged(archive[: len(archive) - len(chunk_frames[-1])])  # last frame dropped
    assert_refused_as_damaged(archive[:-1])  # cut inside the last frame
    assert_refused_as_damaged(archive[: header_length() + 4 + CHUNK // 2])  # cut inside a middle frame
    assert_refused_as_damaged(archive[: header_length() + 2])  # cut inside a frame length
    assert_refused_as_damaged(archive[: header_length()])  # header only
    assert_refused_as_damaged(archive[:10])  # cut inside the header
    assert_refused_as_damaged(b"")


def test_reordered_duplicated_or_extra_chunks_are_refused(archive: bytes) -> None:
    header = archive[: header_length()]
    f = frames(archive)
    assert_refused_as_damaged(header + f[1] + f[0] + b"".join(f[2:]))  # two chunks swapped
    assert_refused_as_damaged(header + f[0] + f[0] + b"".join(f[1:]))  # a chunk duplicated
    assert_refused_as_damaged(header + f[0] + b"".join(f[2:]))  # a middle chunk dropped
    assert_refused_as_damaged(archive + f[-1])  # the last chunk repeated at the end
    assert_refused_as_damaged(archive + b"\x00")  # trailing bytes


def test_chunks_of_another_archive_are_refused(archive: bytes) -> None:
    other = encrypt(os.urandom(CHUNK * 4 + 100))
    assert_refused_as_damaged(archive[: header_length()] + b"".join(frames(other)))


def test_a_refused_header_still_closes_the_source(archive: bytes) -> None:
    for stored, keyring in ((archive[:10], Keyring([KEY_A])), (archive, Keyring())):
        source = io.BytesIO(stored)
        with pytest.raises((ArchiveCorrupt, EncryptionKeyMissing)):
            DecryptingReader(source, keyring)
        assert source.closed


def test_nothing_of_a_damaged_chunk_is_released_before_the_error(archive: bytes) -> None:
    damaged = flipped(archive, header_length() + 4 + 10)  # inside the first chunk
    with DecryptingReader(io.BytesIO(damaged), Keyring([KEY_A])) as reader, pytest.raises(ArchiveCorrupt):
        reader.read(1)


# --- keys -----------------------------------------------------------------------------------


def test_an_archive_whose_key_is_not_configured_names_the_missing_key_id(archive: bytes) -> None:
    for keyring in (Keyring([KEY_B]), Keyring()):
        with pytest.raises(EncryptionKeyMissing) as caught:
            DecryptingReader(io.BytesIO(archive), keyring)
        error = caught.value
        assert (error.code, error.status) == ("encryption_key_missing", 422)
        assert "'key-a'" in error.message and "FLEXDB_ENCRYPTION_KEYS" in error.message


def test_a_key_of_the_same_id_but_other_bytes_is_refused_as_damage(archive: bytes) -> None:
    assert_refused_as_damaged_with(archive, Keyring([EncryptionKey("key-a", KEY_B.key)]))


def test_keys_rotate_the_first_encrypts_and_all_decrypt() -> None:
    old = encrypt(MARKER, KEY_A)
    keyring = Keyring([KEY_B, KEY_A])
    assert keyring.current == KEY_B
    assert decrypt(old, keyring) == MARKER
    current = keyring.current
    assert current is not None
    new = encrypt(MARKER, current)
    assert DecryptingReader(io.BytesIO(new), keyring).key_id == "key-b"
    assert decrypt(new, keyring) == MARKER
    with pytest.raises(EncryptionKeyMissing):
        decrypt(new, Keyring([KEY_A]))


def test_the_keyring_comes_from_settings_and_is_empty_by_default() -> None:
    assert Keyring.from_settings(Settings.from_env({})).current is None
    key_a, key_b = base64.b64encode(KEY_A.key).decode(), base64.b64encode(KEY_B.key).decode()
    settings = Settings.from_env({"FLEXDB_ENCRYPTION_KEYS": f"key-b:{key_b}, key-a:{key_a},"})
    keyring = Keyring.from_settings(settings)
    assert keyring.current == KEY_B
    assert keyring.get("key-a") == KEY_A.key
    assert settings.encryption_chunk_bytes == 1024 * 1024
    for shown in (repr(settings), repr(keyring), repr(keyring.current), str(KEY_A.key)):
        assert key_a not in shown and key_b not in shown
    assert "key-b" in repr(keyring) and "key-b" in repr(keyring.current)
    assert redact(f"oops {key_a}") == "oops ***"


# --- settings -------------------------------------------------------------------------------


def settings_error(value: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"FLEXDB_ENCRYPTION_KEYS": value})
    return caught.value.message


GOOD_KEY_TEXT = base64.b64encode(KEY_A.key).decode()
SHORT_KEY_TEXT = base64.b64encode(KEY_A.key[:16]).decode()


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("k1:not*base64/Zm9vYmFy", "key 'k1' is not valid base64"),
        (f"k1:{SHORT_KEY_TEXT}", "key 'k1' is 16 bytes, AES-256 needs 32"),
        (f":{GOOD_KEY_TEXT}", "entry 1 has an empty key id"),
        (GOOD_KEY_TEXT, "entry 1 is not id:base64key"),
        (f"bad id!:{GOOD_KEY_TEXT}", "entry 1: a key id uses"),
    ],
    ids=["bad base64", "wrong length", "empty id", "no id", "unusable id"],
)
def test_a_bad_key_entry_is_named_without_its_key(entry: str, expected: str) -> None:
    message = settings_error(entry)
    assert "FLEXDB_ENCRYPTION_KEYS" in message and expected in message
    key_text = entry.rpartition(":")[2]
    assert key_text not in message
    assert redact(f"entry was {key_text}") == "entry was ***", "even a bad key is masked in logs"
    assert "os.urandom(32)" in message, "says how to make a good key"


def test_a_duplicate_key_id_is_named_without_either_key() -> None:
    first, second = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    message = settings_error(f"k1:{first},k1:{second}")
    assert "key id 'k1' appears more than once" in message
    assert first not in message and second not in message


def test_the_chunk_size_is_a_bounded_setting() -> None:
    assert Settings.from_env({"FLEXDB_ENCRYPTION_CHUNK_BYTES": "65536"}).encryption_chunk_bytes == 65536
    with pytest.raises(ConfigurationError, match="FLEXDB_ENCRYPTION_CHUNK_BYTES"):
        Settings.from_env({"FLEXDB_ENCRYPTION_CHUNK_BYTES": "12"})


# --- memory ---------------------------------------------------------------------------------


def test_memory_stays_bounded_both_ways_for_a_64_mib_archive(tmp_path: Path) -> None:
    mib, total_mib = 1024 * 1024, 64
    path = tmp_path / "archive.enc"
    written, read = hashlib.sha256(), hashlib.sha256()
    block = os.urandom(mib)

    tracemalloc.start()
    try:
        sink = EncryptingSink(DiscardingSink(path), KEY_A.key_id, KEY_A.key, mib)
        for number in range(total_mib):
            data = number.to_bytes(4, "big") + block[4:]
            written.update(data)
            sink.write(data)
            del data
        sink.commit()
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        with DecryptingReader(path.open("rb"), Keyring([KEY_A])) as reader:
            while chunk := reader.read(mib):
                read.update(chunk)
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert path.stat().st_size > total_mib * mib
    assert read.hexdigest() == written.hexdigest()
    assert encrypt_peak < 8 * mib, f"encrypting held {encrypt_peak / mib:.1f} MiB"
    assert decrypt_peak < 8 * mib, f"decrypting held {decrypt_peak / mib:.1f} MiB"


# --- the documented format ------------------------------------------------------------------


def test_the_decrypt_by_hand_recipe_of_the_docs_reads_an_archive(tmp_path: Path, monkeypatch) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "encryption.md").read_text()
    recipe = docs.split("```python\n", 1)[1].split("```", 1)[0]
    key = EncryptionKey("k1", KEY_B.key)
    recipe = recipe.replace("...the base64 key of FLEXDB_ENCRYPTION_KEYS...", base64.b64encode(key.key).decode())
    plaintext = os.urandom(CHUNK * 3 + 5)
    archive, decrypted, script = tmp_path / "archive.dump", tmp_path / "decrypted.dump", tmp_path / "decrypt.py"
    script.write_text(recipe)
    archive.write_bytes(encrypt(plaintext, key, write_sizes=(1000,)))
    monkeypatch.setattr("sys.argv", ["decrypt.py", str(archive), str(decrypted)])
    runpy.run_path(str(script), run_name="__main__")
    assert decrypted.read_bytes() == plaintext
