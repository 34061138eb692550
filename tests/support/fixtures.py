"""Where the real ``mongodump --archive`` files are: the team's shared fixtures folder beside the
checkout (``../shared/fixtures/mongodump-archives``), or ``FLEXDB_FIXTURES_DIR``. Tests that
need them are skipped, with the reason, when neither is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MONGODUMP_FIXTURES = Path(
    os.environ.get("FLEXDB_FIXTURES_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "mongodump-archives"
)
needs_mongodump_fixtures = pytest.mark.skipif(
    not (MONGODUMP_FIXTURES / "test.bar.archive").is_file(),
    reason=f"real mongodump archives not found in {MONGODUMP_FIXTURES} (set FLEXDB_FIXTURES_DIR)",
)
