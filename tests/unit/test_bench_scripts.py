"""The benchmark scripts' data generator and flags (the benchmarks themselves are run by hand)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import postgresql_backup  # noqa: E402
import servicebench  # noqa: E402
import worker_memory  # noqa: E402


def test_text_rows_fill_every_table_with_real_text_up_to_the_size() -> None:
    rows = list(servicebench.text_rows(300_000))
    tables = {table for table, _ in rows}
    assert tables == set(servicebench.TABLES)
    size = sum(len(str(v)) for _, row in rows for v in row if v is not None)
    assert 300_000 <= size < 400_000
    for table, row in rows:
        # One value per column but the id, and nothing PostgreSQL's text type refuses.
        assert len(row) == len(servicebench.COLUMNS[table]) - 1
        assert not any("\x00" in v for v in row if isinstance(v, str))
    bodies = [row[-1] for table, row in rows if table == "articles"]
    assert len(set(bodies)) == len(bodies)  # not one block repeated


def test_text_rows_are_the_same_on_every_run() -> None:
    assert list(servicebench.text_rows(50_000)) == list(servicebench.text_rows(50_000))


def test_mongo_documents_group_source_lines() -> None:
    documents = list(worker_memory.mongo_documents(200_000))
    blocks = [doc for name, doc in documents if name == "source_blocks"]
    assert blocks and all(1 <= len(doc["lines"]) <= worker_memory.LINES_PER_DOCUMENT for doc in blocks)
    assert {name for name, _ in documents} == {"articles", "events", "source_blocks"}


def test_backup_flags() -> None:
    args = postgresql_backup.parse_args(
        ["--size-mb", "50", "--options", '{"compression": "gzip"}', "--env", "FLEXDB_COMPRESSION=zstd", "--restore"]
    )
    assert (args.size_mb, args.options, args.env, args.restore) == (50, {"compression": "gzip"}, ["FLEXDB_COMPRESSION=zstd"], True)
    for bad in (["--env", "PGHOST=x"], ["--options", "[1]"], ["--repeat", "0"]):
        with pytest.raises(SystemExit):
            postgresql_backup.parse_args(bad)


def test_memory_flags() -> None:
    args = worker_memory.parse_args(["--sizes-mb", "10,100", "--engines", "postgresql"])
    assert (args.sizes, args.engine_list) == ([10, 100], ["postgresql"])
    for bad in (["--sizes-mb", "ten"], ["--engines", "mysql"], ["--sizes-mb", "0"]):
        with pytest.raises(SystemExit):
            worker_memory.parse_args(bad)


def test_database_names_say_benchmark_and_size() -> None:
    assert servicebench.dataset_name(600) == "flexdb_bench_text_600mb"
    uri = servicebench.pg_uri_for("postgresql://u:p@h:5432/postgres?sslmode=disable", "x")
    assert uri == "postgresql://u:p@h:5432/x?sslmode=disable"
