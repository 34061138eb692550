"""PostgreSQL backup (and restore) through the service vs pg_dump/pg_restore run by hand.

    .venv/bin/python bench/postgresql_backup.py                      # 600 MB of text, 3 runs of each
    .venv/bin/python bench/postgresql_backup.py --restore            # also restores
    .venv/bin/python bench/postgresql_backup.py --options '{"compression": "gzip"}' --env FLEXDB_COMPRESSION=zstd

The data set: --size-mb MB of real text from this machine (man pages, documentation, Python
sources) in three tables with numeric, timestamp and jsonb columns and a few indexes, built
once into the database ``flexdb_bench_text_<size>mb`` and reused (``--rebuild`` builds it again).

Backup, each run in turn, --repeat times:
  ``pg_dump -Fc -f FILE``      what an operator runs by hand (zlib at its default level);
  ``pg_dump -Fc -Z0 -f FILE``  the same without compression (the speed of reading the data);
  the service: ``POST /api/v1/backups`` to a running API and worker (started as ``make run``
  does, with a private Redis and a temporary storage folder) until the job is ``succeeded``.
Restore (--restore), each into a fresh database: ``createdb`` + ``pg_restore --no-owner`` of
the ``pg_dump -Fc`` file by hand, against ``POST /api/v1/restores`` of the service's backup.

Prints each timing (median and best of the runs), the ratios of the medians, the archive sizes
and the codec the service's manifest recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servicebench import (  # noqa: E402
    DEFAULT_PG_URI,
    MB,
    ServiceStack,
    drop_database,
    ensure_pg_dataset,
    median,
    pg_database_bytes,
    pg_uri_for,
    tool_env,
)

TARGET = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=DEFAULT_PG_URI, help="a PostgreSQL URI whose user may create databases (env FLEXDB_BENCH_PG_URI)")
    parser.add_argument("--size-mb", type=int, default=600, help="MB of row text in the data set (default 600)")
    parser.add_argument("--rebuild", action="store_true", help="build the data set again even if it exists")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--restore", action="store_true", help="also measure restores")
    parser.add_argument("--no-backup-baselines", action="store_true", help="time only the service's backups")
    parser.add_argument("--options", type=json.loads, default={}, help="backup options, as JSON")
    parser.add_argument(
        "--env", action="append", default=[], metavar="FLEXDB_NAME=VALUE", help="a setting for the service (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size_mb < 1:
        parser.error("--repeat and --size-mb must be positive")
    for item in args.env:
        if "=" not in item or not item.startswith("FLEXDB_"):
            parser.error(f"--env takes FLEXDB_NAME=VALUE, not {item!r}")
    if not isinstance(args.options, dict):
        parser.error("--options takes a JSON object")
    return args


def timed(argv: list[str], uri: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=tool_env(uri), stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def report(name: str, seconds: list[float]) -> None:
    print(f"  {name:<34} median {median(seconds):7.2f} s   best {min(seconds):7.2f} s   runs {' '.join(f'{s:.2f}' for s in seconds)}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    database = ensure_pg_dataset(args.uri, args.size_mb, args.rebuild)
    uri = pg_uri_for(args.uri, database)
    work = Path(tempfile.mkdtemp(prefix="flexdb-bench-pg-"))
    settings = dict(item.split("=", 1) for item in args.env)
    print(f"data set {database}: {pg_database_bytes(args.uri, database) / MB:.0f} MB on disk; repeat {args.repeat}")
    print(f"service settings {settings or '(defaults)'}; backup options {args.options or '(none)'}")
    try:
        run(args, database, uri, work, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, database: str, uri: str, work: Path, settings: dict[str, str]) -> None:
    fc_file, z0_file = work / "fc.dump", work / "z0.dump"
    times: dict[str, list[float]] = {"fc": [], "z0": [], "service": [], "pg_restore": [], "service restore": []}
    with ServiceStack({TARGET: {"engine": "postgresql", "uri": uri}}, settings, work / "stack") as stack:
        backup_id = None
        for _ in range(args.repeat):
            # One of each in turn, so drift on a shared machine hits all three alike.
            if not args.no_backup_baselines:
                times["fc"].append(timed(["pg_dump", "-Fc", f"--file={fc_file}"], uri))
                times["z0"].append(timed(["pg_dump", "-Fc", "-Z0", f"--file={z0_file}"], uri))
            if backup_id:
                stack.delete(backup_id)
            job, seconds = stack.backup(TARGET, args.options)
            times["service"].append(seconds)
            backup_id = job["backup_id"]
        manifest = stack.manifest(backup_id)
        stored = stack.stored_bytes(backup_id)
        print("backup")
        if times["fc"]:
            report("pg_dump -Fc (by hand)", times["fc"])
            report("pg_dump -Fc -Z0 (by hand)", times["z0"])
        report("service backup", times["service"])
        print(
            f"  service archive: {stored / MB:.1f} MB stored, format {manifest.get('format')}, "
            f"codec {manifest.get('compression')}, details {json.dumps(manifest.get('details'))}"
        )
        if times["fc"]:
            fc_bytes, z0_bytes = fc_file.stat().st_size, z0_file.stat().st_size
            print(f"  pg_dump -Fc file {fc_bytes / MB:.1f} MB, -Z0 file {z0_bytes / MB:.1f} MB")
            service = median(times["service"])
            print(
                f"  RATIOS service/pg_dump -Fc time {service / median(times['fc']):.2f} (goal <= 0.3), "
                f"service/-Z0 time {service / median(times['z0']):.2f} (goal <= 1.3), "
                f"size service/-Fc {stored / fc_bytes:.2f} (goal <= 0.95)"
            )
        if args.restore:
            if not fc_file.exists():
                timed(["pg_dump", "-Fc", f"--file={fc_file}"], uri)
            fresh = f"{database}_restored"
            for _ in range(args.repeat):
                drop_database(args.uri, fresh)
                fresh_uri = pg_uri_for(args.uri, fresh)
                times["pg_restore"].append(
                    timed(["createdb", fresh], args.uri) + timed(["pg_restore", "--no-owner", f"--dbname={fresh}", str(fc_file)], fresh_uri)
                )
                drop_database(args.uri, fresh)
                times["service restore"].append(stack.restore(backup_id, fresh)[1])
            drop_database(args.uri, fresh)
            print("restore (into a fresh database)")
            report("createdb + pg_restore -Fc file", times["pg_restore"])
            report("service restore", times["service restore"])
            print(f"  RATIO service/pg_restore time {median(times['service restore']) / median(times['pg_restore']):.2f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
