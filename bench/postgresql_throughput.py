"""PostgreSQL engine vs a hand-run pg_dump, in the same run, on the same database.

    .venv/bin/python bench/postgresql_throughput.py [--uri postgresql://postgres@127.0.0.1:5432/postgres] [--rows 2000000]

Creates a scratch database (dropped at the end), then for each size times, best of --repeat:
  baseline: ``pg_dump -Fc > file`` (what an operator would run by hand);
  engine:   the service's backup workflow (pg_dump streamed, SHA-256, fsync, manifest) into a
            local storage folder, in a fresh child process whose peak RSS is measured.
Prints MB/s of archive written and the engine/baseline ratio (goal: close to 1.0, memory flat).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from shared.core.settings import Settings, Target
from shared.domain.progress import ProgressTracker
from shared.engines.postgresql import PostgreSQLEngine
from shared.storage import LocalStorage
engine = PostgreSQLEngine(Settings.from_env({}))
started = time.perf_counter()
manifest = engine.backup(Target("bench", "postgresql", sys.argv[2]), LocalStorage(sys.argv[3]), "bench", "bench", ProgressTracker(lambda p: None))
print(json.dumps({"seconds": time.perf_counter() - started, "bytes": manifest.size_bytes,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def scratch_uri(admin_uri: str, name: str) -> str:
    base, _, _ = admin_uri.rpartition("/")
    return f"{base}/{name}"


def fill(uri: str, rows: int) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS events")
        conn.execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, kind text NOT NULL,"
            " payload jsonb NOT NULL, note text)"
        )
        conn.execute(
            "INSERT INTO events (at, kind, payload, note) SELECT now() - g * interval '1 second', 'k' || (g %% 17),"
            " jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b', g %% 7)), md5(g::text) || md5((g * 7)::text)"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE events")


def baseline(uri: str, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with out.open("wb") as handle:
        subprocess.run(["pg_dump", "--format=custom", f"--dbname={uri}"], stdout=handle, check=True)
    return time.perf_counter() - started, out.stat().st_size


def engine(uri: str, storage: Path) -> dict:
    shutil.rmtree(storage, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), uri, str(storage)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=os.environ.get("FLEXDB_BENCH_PG_URI", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows at 10x (1x is a tenth)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    name = f"flexdb_bench_{os.getpid()}"
    with psycopg.connect(args.uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    uri = scratch_uri(args.uri, name)
    work = Path(tempfile.mkdtemp(prefix="flexdb-bench-"))
    print(f"{'data':>5} {'archive':>10} {'pg_dump MB/s':>13} {'engine MB/s':>12} {'ratio':>6} {'engine peak RSS':>16}")
    try:
        for scale in (1, 10):
            fill(uri, args.rows * scale // 10)
            base = min(baseline(uri, work / "baseline.dump") for _ in range(args.repeat))
            runs = [engine(uri, work / "storage") for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            size_mb = base[1] / 1e6
            print(
                f"{scale:>4}x {size_mb:>8.1f} MB {size_mb / base[0]:>13.1f} {best['bytes'] / 1e6 / best['seconds']:>12.1f}"
                f" {base[0] / best['seconds']:>6.2f} {max(r['peak_rss_kib'] for r in runs) / 1024:>12.1f} MiB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(args.uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
