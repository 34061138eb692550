"""Stream codecs and the options the backup workflow takes for every engine: pure parts, no
server. Round trips through real databases are in tests/integration/test_codecs.py."""

from __future__ import annotations

import gzip
import io
import random
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard

from shared.core.errors import ArchiveCorrupt, ConfigurationError, ValidationFailed
from shared.core.settings import Settings
from shared.domain.codecs import (
    CODEC_NAMES,
    codec_from_settings,
    detect_codec,
    open_decompressing_reader,
    stored_codec,
)
from shared.engines import engine_class, engine_for
from shared.engines.mongodb_archive import open_compressed_writer as archive_module_writer

SETTINGS = Settings.from_env({})
TEXT = b"".join(b"line %d of a dump that compresses well\n" % n for n in range(20000))


class ClosableSink(io.BytesIO):
    """Remembers whether anyone closed it (the workflow commits the sink after the codec)."""


def compress(name: str, data: bytes = TEXT, settings: Settings = SETTINGS) -> bytes:
    sink = ClosableSink()
    writer = codec_from_settings(name, settings).writer(sink)
    for start in range(0, len(data), 7000):
        writer.write(data[start : start + 7000])
    writer.close()
    assert not sink.closed, "closing the codec must leave the storage sink open"
    return sink.getvalue()


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_every_codec_round_trips_and_names_its_file(name: str) -> None:
    stored = compress(name)
    codec = codec_from_settings(name, SETTINGS)

    with codec.reader(io.BytesIO(stored)) as plain:
        assert plain.read() == TEXT
    assert codec.extension == {"zstd": ".zst", "gzip": ".gz", "none": ""}[name]
    assert detect_codec(stored) == name
    assert (len(stored) < len(TEXT) / 5) is (name != "none")


@pytest.mark.parametrize(("name", "tool"), [("zstd", "zstd"), ("gzip", "gzip")])
def test_what_a_codec_writes_is_what_its_command_line_tool_reads(name: str, tool: str) -> None:
    done = subprocess.run([tool, "-dc"], input=compress(name), capture_output=True, check=True)

    assert done.stdout == TEXT


def test_gzip_is_one_standard_member_as_mongorestore_gzip_expects() -> None:
    inflater = zlib.decompressobj(wbits=31)

    assert inflater.decompress(compress("gzip")) == TEXT
    assert inflater.eof and inflater.unused_data == b""
    assert gzip.decompress(compress("gzip")) == TEXT


def test_the_long_window_finds_repeats_far_apart_and_the_cli_reads_it() -> None:
    block = random.Random(7).randbytes(4 * 2**20)  # incompressible on its own
    data = block + block  # the repeat lies 4 MiB back: beyond level 3's own 2 MiB window
    short = compress("zstd", data, Settings.from_env({"FLEXDB_ZSTD_LONG": "0"}))
    long = compress("zstd", data)

    assert len(long) < len(data) * 0.6 < len(short)
    assert subprocess.run(["zstd", "-dc"], input=long, capture_output=True, check=True).stdout == data


def test_levels_and_threads_come_from_the_settings() -> None:
    settings = Settings.from_env({"FLEXDB_ZSTD_LEVEL": "1", "FLEXDB_ZSTD_THREADS": "2", "FLEXDB_GZIP_LEVEL": "1"})
    zstd, gzip_codec = codec_from_settings("zstd", settings), codec_from_settings("gzip", settings)

    assert (zstd.level, zstd.threads, gzip_codec.level) == (1, 2, 1)  # type: ignore[attr-defined]
    strong = Settings.from_env({"FLEXDB_ZSTD_LEVEL": "19"})
    assert len(compress("zstd", settings=settings)) > len(compress("zstd", settings=strong))
    assert codec_from_settings("zstd", SETTINGS).threads == -1  # type: ignore[attr-defined]  # 0: every CPU


def test_defaults_and_bad_values_of_the_codec_settings() -> None:
    assert (SETTINGS.compression, SETTINGS.zstd_level, SETTINGS.zstd_threads, SETTINGS.zstd_long) == ("zstd", 3, 0, 24)
    assert SETTINGS.gzip_level == 6
    for variable, value in [
        ("FLEXDB_COMPRESSION", "lz4"),
        ("FLEXDB_ZSTD_LEVEL", "30"),
        ("FLEXDB_GZIP_LEVEL", "0"),
        ("FLEXDB_ZSTD_LONG", "28"),  # more than `zstd -d` reads without --long
        ("FLEXDB_ZSTD_LONG", "5"),
    ]:
        with pytest.raises(ConfigurationError, match=variable):
            Settings.from_env({variable: value})


@pytest.mark.parametrize("compression", [None, "pg_dump-zlib", "none"])
def test_archives_without_a_stream_codec_are_read_as_stored(compression: str | None) -> None:
    stored = b"PGDMP\x01\x0e\x00 an old pg_dump -Fc archive"

    with stored_codec(compression, SETTINGS).reader(io.BytesIO(stored)) as plain:
        assert plain.read() == stored


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_a_damaged_stream_is_reported_as_a_corrupt_archive(name: str) -> None:
    stored = bytearray(compress(name))
    stored[len(stored) // 2] ^= 0xFF

    with pytest.raises(ArchiveCorrupt, match=name):
        codec_from_settings(name, SETTINGS).reader(io.BytesIO(bytes(stored))).read()


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_detection_reads_an_archive_made_elsewhere_with_short_reads(name: str) -> None:
    class Trickle(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            return super().read(min(size, 3) if size and size > 0 else 3)

    reader = open_decompressing_reader(Trickle(compress(name)))

    assert reader.codec == name  # type: ignore[attr-defined]
    assert b"".join(iter(lambda: reader.read(65536), b"")) == TEXT


def test_the_mongodb_archive_module_uses_the_same_codecs() -> None:
    sink = io.BytesIO()
    with archive_module_writer(sink, "zstd") as writer:
        writer.write(TEXT)
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(sink.getvalue())).read() == TEXT


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("engine", ["postgresql", "mongodb"])
@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_engine_takes_compression_per_backup(engine: str, codec: str) -> None:
    assert engine_class(engine).validate_options("backup", {"compression": codec}, SETTINGS) == {"compression": codec}


@pytest.mark.parametrize("engine", ["postgresql", "mongodb"])
def test_an_unknown_codec_is_refused_with_its_pointer(engine: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        engine_class(engine).validate_options("backup", {"compression": "lz4"}, SETTINGS)
    assert exc.value.errors == [{"pointer": "/options/compression", "detail": "must be one of zstd, gzip, none"}]


def test_a_bad_codec_and_a_bad_engine_option_are_reported_together() -> None:
    with pytest.raises(ValidationFailed) as exc:
        engine_class("mongodb").validate_options("backup", {"compression": 5, "collections": "orders"}, SETTINGS)
    assert sorted(e["pointer"] for e in exc.value.errors) == ["/options/collections", "/options/compression"]


def test_a_restore_takes_no_compression_it_reads_the_manifest() -> None:
    with pytest.raises(ValidationFailed) as exc:
        engine_class("postgresql").validate_options("restore", {"compression": "zstd"}, SETTINGS)
    assert [e["pointer"] for e in exc.value.errors] == ["/options/compression"]


def test_postgresql_directory_format_takes_jobs_up_to_the_setting() -> None:
    settings = Settings.from_env({"FLEXDB_PG_MAX_JOBS": "3"})
    pg = engine_class("postgresql")

    assert pg.validate_options("backup", {"format": "directory", "jobs": 3, "compression": "gzip"}, settings) == {
        "format": "directory",
        "jobs": 3,
        "compression": "gzip",
    }
    for options, pointer in [
        ({"format": "directory", "jobs": 4}, "/options/jobs"),
        ({"format": "directory", "jobs": True}, "/options/jobs"),
        ({"jobs": 2}, "/options/jobs"),  # parallel jobs need the directory format
        ({"format": "tar"}, "/options/format"),
        ({"tables": ["x"]}, "/options/tables"),
    ]:
        with pytest.raises(ValidationFailed) as exc:
            pg.validate_options("backup", options, settings)
        assert [e["pointer"] for e in exc.value.errors] == [pointer], options


def test_the_archive_name_is_the_engines_plus_the_codecs_extension() -> None:
    pg = engine_for("postgresql", SETTINGS)

    assert pg.archive_kind({}) == ("pg_dump-custom", "archive.dump")
    assert pg.archive_kind({"format": "directory", "jobs": 2}) == ("pg_dump-directory-tar", "archive.tar")
    assert engine_for("mongodb", SETTINGS).import_archive_name(compress("gzip")[:8]) == "archive.gz"


# ----------------------------------------------------------------------------- directory archives


def tar_with(members: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    out.seek(0)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "hostile",
    [
        member("dump/../../escaped"),
        member("/etc/escaped"),
        member("elsewhere/toc.dat"),
        member("dump/link", tarfile.SYMTYPE, "/etc/passwd"),
        member("dump/hard", tarfile.LNKTYPE, "/etc/passwd"),
        member("dump/fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "outside-dump", "symlink", "hardlink", "fifo"],
)
def test_a_directory_archive_never_writes_outside_its_scratch_folder(tmp_path: Path, hostile: tarfile.TarInfo) -> None:
    scratch = tmp_path / "scratch" / "job"
    scratch.mkdir(parents=True)
    archive = tar_with([(member("dump/toc.dat"), b"toc"), (hostile, b"evil")])

    with pytest.raises(ArchiveCorrupt):
        engine_for("postgresql", SETTINGS)._extract_tar(archive, scratch)  # noqa: SLF001
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dump", "job", "scratch", "toc.dat"]


def test_a_directory_archive_unpacks_its_dump_folder(tmp_path: Path) -> None:
    archive = tar_with([(member("dump", tarfile.DIRTYPE), b""), (member("dump/toc.dat"), b"toc"), (member("dump/3.dat"), b"rows")])

    folder = engine_for("postgresql", SETTINGS)._extract_tar(archive, tmp_path)  # noqa: SLF001

    assert folder == tmp_path / "dump" and (folder / "3.dat").read_bytes() == b"rows"
