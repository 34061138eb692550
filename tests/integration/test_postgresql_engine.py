"""Engine-level cases that need a tool we cannot install here."""

from __future__ import annotations

import stat

import pytest

from shared.core.errors import ToolVersionMismatch
from shared.core.settings import Settings, Target
from shared.domain.progress import ProgressTracker
from shared.engines.postgresql import PostgreSQLEngine
from shared.storage import LocalStorage


def test_a_pg_dump_older_than_the_server_fails_with_both_versions(tmp_path) -> None:
    # A stand-in for an old pg_dump (no PostgreSQL 9.6 client is packaged for this machine);
    # the server is the machine's real PostgreSQL.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    engine = PostgreSQLEngine(Settings.from_env({"FLEXDB_PG_BIN_DIR": str(bin_dir)}))
    target = Target("pg", "postgresql", "postgresql://postgres@127.0.0.1:5432/postgres")
    storage = LocalStorage(tmp_path / "backups")

    with pytest.raises(ToolVersionMismatch) as caught:
        engine.backup(target, storage, "b1", "job1", ProgressTracker(lambda p: None))

    assert "pg_dump 9.6.24 is older than the server (PostgreSQL 15" in caught.value.message
    assert "postgresql-client-15" in caught.value.message
    assert list(storage.iter_manifests()) == []
