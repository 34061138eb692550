"""MongoDB backup and restore through the engine vs the plainest pymongo baselines, in one run.

    .venv/bin/python bench/mongodb_backup.py                  # starts its own SecantusDB, ~2 min
    .venv/bin/python bench/mongodb_backup.py --size-mb 400 --repeat 3
    .venv/bin/python bench/mongodb_backup.py --uri mongodb://user:pw@host:27017/   # a real server

The data set: --size-mb MB of real text from this machine (man pages, documentation, Python
sources) as documents with numbers, dates and nested arrays, in collections of different sizes
(the data set of bench/worker_memory.py), loaded into a fresh database.

Backup (MB/s of raw BSON, the bytes the server sends; ratio = the baseline's time / this one's):
  raw read       ``find_raw_batches`` over the same collections, one after the other and with
                 N threads (one collection each), the engine's read batch size; nothing written;
  engine dump    the engine's ``dump`` alone into a sink that drops the bytes, 1 and N at once;
  engine         the backup workflow (``BackupEngine.backup``: dump, codec, SHA-256, local
                 storage with fsync, manifest) with 1 and N collections at once, per codec;
  mongodump      ``mongodump --archive=FILE --gzip`` when mongodump is on PATH.
Restore (into a fresh database each time):
  raw insert     ``insert_many(ordered=False)`` of the same raw documents in batches of
                 FLEXDB_MONGO_BATCH_BYTES, one collection after the other and with N threads;
  engine load    ``load`` of the uncompressed archive, 1 and N collections at once;
  engine restore the restore workflow (verify the stored archive, then load) of the default codec;
  mongorestore   ``mongorestore --archive=FILE --gzip`` of mongodump's archive, when on PATH.
Memory: peak RSS (VmHWM) of a backup and of a restore with N collections, each in a fresh process.
N is FLEXDB_MONGO_PARALLEL_COLLECTIONS (or --parallel). Each timing is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bson  # noqa: E402
from bson.raw_bson import RawBSONDocument  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from shared.core.logs import configure_logging  # noqa: E402
from shared.core.settings import Settings, Target  # noqa: E402
from shared.domain.backups import BackupManifest  # noqa: E402
from shared.domain.engine import RestoreRequest  # noqa: E402
from shared.domain.progress import ProgressTracker  # noqa: E402
from shared.engines import engine_for  # noqa: E402
from shared.storage import BlobCatalog, LocalBlobStore  # noqa: E402
from shared.storage.crypto import Keyring  # noqa: E402
from worker_memory import load_mongo  # noqa: E402

MIB = 1024 * 1024
DATABASE = "flexdb_bench_backup"
RESTORED = "flexdb_bench_restored"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="a MongoDB server to use (default: start a private SecantusDB)")
    parser.add_argument("--size-mb", type=int, default=40, help="MB of text in the data set (default 40)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing, best kept (default 2)")
    parser.add_argument("--parallel", type=int, help="collections at once (default FLEXDB_MONGO_PARALLEL_COLLECTIONS)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)  # internal: one measured run, as JSON
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size_mb < 1 or (args.parallel is not None and args.parallel < 1):
        parser.error("--repeat, --size-mb and --parallel must be positive")
    return args


def uri_with_db(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def best_of(repeat: int, action: Callable[[], object], before: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def in_threads(work: Callable[[str], None], names: list[str], threads: int) -> None:
    """``work(name)`` for every name, on ``threads`` threads; the first error is raised."""
    todo, errors, lock = list(names), [], threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                name = todo.pop(0)
            try:
                work(name)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]


def quiet_progress() -> ProgressTracker:
    return ProgressTracker(lambda progress: None, interval_seconds=3600)


class Bench:
    def __init__(self, uri: str, repeat: int, parallel: int | None, workdir: Path) -> None:
        self.uri = uri
        self.repeat = repeat
        self.client = MongoClient(uri)
        self.workdir = workdir
        self.parallel = parallel or self.settings().mongo_parallel_collections
        self.storage_dir = workdir / "backups"

    def settings(self, parallel: int | None = None) -> Settings:
        env = {"FLEXDB_ENV_FILE": os.devnull, "FLEXDB_STORAGE_DIR": str(self.workdir / "backups")}
        if parallel is not None:
            env["FLEXDB_MONGO_PARALLEL_COLLECTIONS"] = str(parallel)
        return Settings.from_env(env)

    def storage(self, settings: Settings) -> BlobCatalog:
        return BlobCatalog(LocalBlobStore(self.storage_dir), Keyring.from_settings(settings), settings.encryption_chunk_bytes)

    def target(self, database: str) -> Target:
        return Target("bench", "mongodb", uri_with_db(self.uri, database))

    def collections(self) -> list[str]:
        db = self.client[DATABASE]
        names = db.list_collection_names()
        return sorted(names, key=lambda name: -db.command("collStats", name).get("size", 0))

    def raw_size(self) -> tuple[int, int]:
        db = self.client[DATABASE]
        stats = [db.command("collStats", name) for name in db.list_collection_names()]
        return sum(s.get("size", 0) for s in stats), sum(s.get("count", 0) for s in stats)

    # ------------------------------------------------------------------ backup

    def raw_read(self, threads: int) -> float:
        db, batch, names = self.client[DATABASE], self.settings().mongo_read_batch_docs, self.collections()

        def read(name: str) -> None:
            for _ in db[name].find_raw_batches(batch_size=batch):
                pass

        return best_of(self.repeat, lambda: in_threads(read, names, threads))

    def engine_backup(self, parallel: int, codec: str) -> tuple[float, BackupManifest]:
        settings = self.settings(parallel)
        engine, storage = engine_for("mongodb", settings), self.storage(settings)
        made: list[BackupManifest] = []

        def backup() -> None:
            backup_id = f"bench-{codec}-{parallel}-{len(made)}"
            made.append(engine.backup(self.target(DATABASE), storage, backup_id, "bench", quiet_progress(), {"compression": codec}))

        seconds = best_of(self.repeat, backup)
        for manifest in made[:-1]:
            storage.delete(manifest.id)
        return seconds, made[-1]

    def engine_dump_only(self, parallel: int) -> float:
        """The engine's ``dump`` into a sink that drops the bytes: no codec, hashing or storage."""
        engine, target = engine_for("mongodb", self.settings(parallel)), self.target(DATABASE)
        server = engine.probe(target)
        return best_of(self.repeat, lambda: engine.dump(target, _NullSink(), quiet_progress(), server, {}))

    def mongodump(self, path: Path) -> float:
        argv = ["mongodump", f"--uri={uri_with_db(self.uri, DATABASE)}", f"--archive={path}", "--gzip", "--quiet"]
        return best_of(self.repeat, lambda: subprocess.run(argv, check=True))

    # ------------------------------------------------------------------ restore

    def drop_restored(self) -> None:
        self.client.drop_database(RESTORED)

    def raw_insert(self, threads: int) -> float:
        limit = self.settings().mongo_batch_bytes
        batches: dict[str, list[list[RawBSONDocument]]] = {}
        options = bson.CodecOptions(document_class=RawBSONDocument)
        for name in self.collections():
            current, size = [], 0
            batches[name] = []
            for raw in self.client[DATABASE][name].find_raw_batches():
                for doc in bson.decode_iter(raw, codec_options=options):
                    current.append(doc)
                    size += len(doc.raw)
                    if size >= limit:
                        batches[name].append(current)
                        current, size = [], 0
            if current:
                batches[name].append(current)
        into = self.client[RESTORED]

        def insert(name: str) -> None:
            for docs in batches[name]:
                into[name].insert_many(docs, ordered=False, bypass_document_validation=True)

        return best_of(self.repeat, lambda: in_threads(insert, list(batches), threads), self.drop_restored)

    def engine_load(self, parallel: int, manifest: BackupManifest, plain: bytes) -> float:
        engine = engine_for("mongodb", self.settings(parallel))
        request = RestoreRequest(database=RESTORED, drop=True)
        target = self.target(RESTORED)
        return best_of(
            self.repeat,
            lambda: engine.load(target, io.BytesIO(plain), manifest, request, quiet_progress()),
            self.drop_restored,
        )

    def engine_restore(self, manifest: BackupManifest) -> float:
        settings = self.settings(self.parallel)
        engine, storage = engine_for("mongodb", settings), self.storage(settings)
        request = RestoreRequest(database=RESTORED, drop=True)
        return best_of(
            self.repeat,
            lambda: engine.restore(self.target(RESTORED), storage, manifest, request, quiet_progress()),
            self.drop_restored,
        )

    def mongorestore(self, path: Path) -> float:
        argv = ["mongorestore", f"--uri={self.uri}", f"--archive={path}", "--gzip", "--quiet", "--drop",
                f"--nsFrom={DATABASE}.*", f"--nsTo={RESTORED}.*"]  # fmt: skip
        return best_of(self.repeat, lambda: subprocess.run(argv, check=True), self.drop_restored)

    # ------------------------------------------------------------------ memory

    def peak_rss(self, mode: str, backup_id: str = "") -> dict[str, int]:
        request = {"mode": mode, "uri": self.uri, "workdir": str(self.workdir), "parallel": self.parallel, "backup_id": backup_id}
        argv = [sys.executable, __file__, "--rss-child", json.dumps(request)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)
        return json.loads(out.stdout.strip().splitlines()[-1])


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_child(request: dict) -> None:
    """In a fresh process: everything imported and connected, then one backup (default codec)
    or one restore of that backup; prints the peak RSS before and after."""
    bench = Bench(request["uri"], 1, request["parallel"], Path(request["workdir"]))
    settings = bench.settings(bench.parallel)
    engine, storage = engine_for("mongodb", settings), bench.storage(settings)
    bench.client.admin.command("ping")
    before = vm_kib("VmHWM")
    if request["mode"] == "backup":
        engine.backup(bench.target(DATABASE), storage, "bench-rss", "bench", quiet_progress())
    else:
        manifest = storage.read_manifest(request["backup_id"])
        request_ = RestoreRequest(database=RESTORED, drop=True)
        engine.restore(bench.target(RESTORED), storage, manifest, request_, quiet_progress())
    print(json.dumps({"before_kib": before, "peak_kib": vm_kib("VmHWM")}))


def start_secantus(workdir: Path):  # type: ignore[no-untyped-def]
    from tests.support.mongo import MongoTestServer

    return MongoTestServer(workdir / "secantusdb", "bench", "unused", auth=False).start()


# ------------------------------------------------------------------------------ the run


def run(bench: Bench, size_mb: int) -> None:
    started = time.perf_counter()
    load_mongo(bench.client, DATABASE, size_mb)
    raw_bytes, documents = bench.raw_size()
    mb = raw_bytes / MIB
    names = bench.collections()
    n = bench.parallel
    default_codec = engine_for("mongodb", bench.settings()).default_compression
    print(
        f"server {bench.client.admin.command('buildInfo').get('version')}; data: {documents:,} documents, "
        f"{mb:.1f} MiB of raw BSON in {len(names)} collections ({', '.join(names)}); loaded in "
        f"{time.perf_counter() - started:.1f} s; N = {n}; best of {bench.repeat}; {os.cpu_count()} cores"
    )

    def line(name: str, seconds: float, baseline: float, extra: str = "") -> None:
        print(f"  {name:<40} {seconds:7.2f} s {mb / seconds:8.1f} MiB/s   x{baseline / seconds:5.2f}  {extra}")

    print("\nbackup (ratio: the sequential raw read's time / this one's; above 1 is faster)")
    bench.raw_read(1)  # a first read warms the server's cache for every measurement alike
    read_1 = bench.raw_read(1)
    line("raw read, one collection at a time", read_1, read_1)
    line(f"raw read, {n} threads", bench.raw_read(n), read_1)
    for parallel in sorted({1, n}):
        line(f"engine dump alone (no codec, no storage), {parallel}", bench.engine_dump_only(parallel), read_1)
    backups: dict[tuple[str, int], BackupManifest] = {}
    for codec, parallel in (("none", 1), ("none", n), (default_codec, 1), (default_codec, n), ("gzip", n)):
        if (codec, parallel) in backups:
            continue
        seconds, backups[(codec, parallel)] = bench.engine_backup(parallel, codec)
        size = backups[(codec, parallel)].size_bytes
        line(f"engine, {codec}, {parallel} at once", seconds, read_1, f"archive {size / MIB:7.1f} MiB")
    dump_file = bench.workdir / "mongodump.archive.gz"
    if shutil.which("mongodump"):
        line("mongodump --archive --gzip", bench.mongodump(dump_file), read_1, f"archive {dump_file.stat().st_size / MIB:7.1f} MiB")
    else:
        print("  mongodump is not on PATH: its column is skipped (install the MongoDB Database Tools to compare)")

    print("\nrestore (ratio: the sequential raw insert's time / this one's)")
    insert_1 = bench.raw_insert(1)
    line("raw insert_many, one collection at a time", insert_1, insert_1)
    line(f"raw insert_many, {n} threads", bench.raw_insert(n), insert_1)
    plain_manifest = backups[("none", n)]
    plain = (bench.storage_dir / plain_manifest.id / plain_manifest.archive_name).read_bytes()
    for parallel in sorted({1, n}):
        line(f"engine load, {parallel} at once", bench.engine_load(parallel, plain_manifest, plain), insert_1)
    line(f"engine restore (verify + load), {default_codec}", bench.engine_restore(backups[(default_codec, n)]), insert_1)
    if shutil.which("mongorestore") and dump_file.exists():
        line("mongorestore --archive --gzip", bench.mongorestore(dump_file), insert_1)
    else:
        print("  mongorestore (or its archive) is missing: its column is skipped")

    print(f"\npeak RSS in a fresh process (VmHWM), {n} collections at once, {default_codec}")
    for mode in ("backup", "restore"):
        rss = bench.peak_rss(mode, backups[(default_codec, n)].id)
        grown = (rss["peak_kib"] - rss["before_kib"]) / 1024
        print(f"  {mode:<8} peak {rss['peak_kib'] / 1024:6.1f} MiB, added by the job {grown:5.1f} MiB")
    bench.drop_restored()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # the engine's per-collection events would drown the table
    configure_logging(Settings.from_env({"FLEXDB_LOG_LEVEL": "WARNING", "FLEXDB_ENV_FILE": os.devnull}))
    if args.rss_child:
        rss_child(json.loads(args.rss_child))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flexdb-bench-") as tmp:
        server = None if args.uri else start_secantus(Path(tmp))
        try:
            bench = Bench(args.uri or server.uri(), args.repeat, args.parallel, Path(tmp))
            try:
                run(bench, args.size_mb)
            finally:
                bench.client.drop_database(DATABASE)
                bench.client.drop_database(RESTORED)
        finally:
            if server is not None:
                server.stop()
    print(f"\ntotal bench time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
