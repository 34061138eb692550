"""MongoDB engine throughput and memory, measured against the plainest pymongo baseline.

    .venv/bin/python bench/mongodb_throughput.py               # starts its own SecantusDB
    .venv/bin/python bench/mongodb_throughput.py --uri mongodb://user:pw@host:27017/

For data sets of 1x and 10x ``--base-mb`` of raw BSON it measures, in the same run:
(a) the engine's dump (no compression, gzip) against reading the same collections with
``find_raw_batches`` alone; (b) the engine's restore (``load``) against ``insert_many`` of the
same raw documents; (c) the peak RSS of a dump in a fresh child process per size (flat is the
goal), plus a 20x size for memory only; (d) the archive pipeline alone (writer + compressor,
then verify), without a server, to show what limits the dump when the server is not the
bottleneck. Each timing is the best of ``--repeat`` runs. Throughput counts raw document bytes
(what the server sends), not archive bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bson  # noqa: E402
from bson.raw_bson import RawBSONDocument  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from shared.core.logs import configure_logging  # noqa: E402
from shared.core.settings import Settings, Target  # noqa: E402
from shared.domain.backups import BackupManifest  # noqa: E402
from shared.domain.engine import RestoreRequest  # noqa: E402
from shared.domain.progress import ProgressTracker  # noqa: E402
from shared.domain.streams import HashingWriter  # noqa: E402
from shared.engines import engine_for  # noqa: E402
from shared.engines.mongodb_archive import (  # noqa: E402
    ArchiveWriter,
    CollectionEntry,
    build_metadata,
    open_compressed_writer,
    open_decompressing_reader,
    verify,
)

MB = 1024 * 1024
COLLECTIONS = 2  # each data set is spread over a few collections, as real databases are
INSERT_BATCH_BYTES = 8 * MB
RSS_ONLY_FACTOR = 20


class NullSink:
    """Discards bytes: the dump is measured, not the disk."""

    def write(self, data: bytes) -> int:
        return len(data)


@dataclass
class DataSet:
    database: str
    documents: int
    raw_bytes: int


def sample_document(index: int) -> bytes:
    """About 1 KiB of mixed types, like an order with its lines."""
    return bson.encode(
        {
            "_id": index,
            "customer": f"customer-{index % 997}",
            "total": index * 1.25,
            "lines": [{"sku": f"sku-{(index + k) % 5000}", "qty": k, "price": k * 3.5} for k in range(8)],
            "note": "x" * (300 + index % 200),
            "blob": bson.Binary(index.to_bytes(8, "little") * 16),
            "flags": {"paid": index % 2 == 0, "shipped": index % 3 == 0},
        }
    )


def best_of(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


class Bench:
    def __init__(self, uri: str, repeat: int, base_mb: float) -> None:
        self.uri = uri
        self.repeat = repeat
        self.base_bytes = int(base_mb * MB)
        self.client = MongoClient(uri)

    def target(self, database: str) -> Target:
        return Target("bench", "mongodb", self._uri_with_db(database))

    def _uri_with_db(self, database: str) -> str:
        return urlunsplit(urlsplit(self.uri)._replace(path=f"/{database}"))

    def engine(self, compression: str):
        settings = Settings.from_env({"FLEXDB_MONGO_COMPRESSION": compression, "FLEXDB_ENV_FILE": os.devnull})
        return engine_for("mongodb", settings)

    # ------------------------------------------------------------------ data

    def load(self, factor: int) -> DataSet:
        database = f"bench_{factor}x"
        self.client.drop_database(database)
        target_bytes, index, total = self.base_bytes * factor, 0, 0
        per_collection = target_bytes // COLLECTIONS
        for c in range(COLLECTIONS):
            written = 0
            while written < per_collection:
                batch, size = [], 0
                while size < INSERT_BATCH_BYTES and written + size < per_collection:
                    raw = sample_document(index)
                    batch.append(RawBSONDocument(raw))
                    size += len(raw)
                    index += 1
                self.client[database][f"orders_{c}"].insert_many(batch, ordered=False)
                written += size
            total += written
        return DataSet(database, index, total)

    # ------------------------------------------------------------------ (a) dump

    def raw_read(self, data: DataSet) -> float:
        def read() -> None:
            for c in range(COLLECTIONS):
                for _ in self.client[data.database][f"orders_{c}"].find_raw_batches():
                    pass

        return best_of(self.repeat, read)

    def engine_dump(self, data: DataSet, compression: str) -> tuple[float, int]:
        engine, target = self.engine(compression), self.target(data.database)
        sizes = []

        def dump() -> None:
            sink = HashingWriter(NullSink())
            engine.dump(target, sink, ProgressTracker(lambda p: None), engine.probe(target))
            sizes.append(sink.size)

        return best_of(self.repeat, dump), sizes[-1]

    # ------------------------------------------------------------------ (b) restore

    def archive_of(self, data: DataSet) -> bytes:
        engine, target = self.engine("none"), self.target(data.database)
        buffer = io.BytesIO()
        engine.dump(target, HashingWriter(buffer), ProgressTracker(lambda p: None), engine.probe(target))
        return buffer.getvalue()

    def engine_restore(self, data: DataSet, archive: bytes) -> float:
        engine, into = self.engine("none"), data.database + "_restored"
        manifest = BackupManifest(
            id="bench", target="bench", engine="mongodb", format="mongodump-archive", archive_name="archive",
            created_at="", finished_at="", duration_seconds=0, size_bytes=len(archive), sha256="",
        )

        def restore() -> None:
            self.client.drop_database(into)
            request = RestoreRequest(database=into, drop=True)
            engine.load(self.target(into), io.BytesIO(archive), manifest, request, ProgressTracker(lambda p: None))

        return best_of(self.repeat, restore)

    def plain_insert(self, data: DataSet) -> float:
        into = data.database + "_plain"
        batches: list[tuple[str, list[RawBSONDocument]]] = []
        for c in range(COLLECTIONS):
            batch, size = [], 0
            for raw in self.client[data.database][f"orders_{c}"].find_raw_batches():
                for doc in bson.decode_iter(raw, codec_options=bson.CodecOptions(document_class=RawBSONDocument)):
                    batch.append(doc)
                    size += len(doc.raw)
                    if size >= INSERT_BATCH_BYTES:
                        batches.append((f"orders_{c}", batch))
                        batch, size = [], 0
            if batch:
                batches.append((f"orders_{c}", batch))

        def insert() -> None:
            self.client.drop_database(into)
            for name, docs in batches:
                self.client[into][name].insert_many(docs, ordered=False, bypass_document_validation=True)

        seconds = best_of(self.repeat, insert)
        self.client.drop_database(into)
        return seconds

    def count_scan(self, data: DataSet) -> float:
        """What the dump's estimated_document_count calls cost on this server (for percent)."""
        db = self.client[data.database]
        return best_of(self.repeat, lambda: [db[f"orders_{c}"].estimated_document_count() for c in range(COLLECTIONS)])

    # ------------------------------------------------------------------ (c) memory

    def peak_rss(self, data: DataSet, mode: str) -> dict[str, int]:
        argv = [sys.executable, __file__, "--rss-child", mode, "--uri", self._uri_with_db(data.database)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)
        return json.loads(out.stdout.strip().splitlines()[-1])


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_child(mode: str, uri: str) -> None:
    """Runs in a fresh process: everything imported, then one gzip dump (or a plain read of the
    same collections, for reference); reports the peak RSS before and after."""
    settings = Settings.from_env({"FLEXDB_MONGO_COMPRESSION": "gzip", "FLEXDB_ENV_FILE": os.devnull})
    engine, target = engine_for("mongodb", settings), Target("bench", "mongodb", uri)
    server = engine.probe(target)
    with MongoClient(uri) as client:
        client.admin.command("ping")
        before = vm_kib("VmHWM")
        if mode == "dump":
            engine.dump(target, HashingWriter(NullSink()), ProgressTracker(lambda p: None), server)
        else:
            for name in client.get_default_database().list_collection_names():
                for _ in client.get_default_database()[name].find_raw_batches():
                    pass
    print(json.dumps({"before_kib": before, "peak_kib": vm_kib("VmHWM")}))


def pipeline_only(raw_batches: list[bytes], raw_bytes: int, compression: str) -> tuple[float, float]:
    """Writer + compressor with documents already in memory, then verify of the result (MB/s each)."""
    buffer = io.BytesIO()
    entry = CollectionEntry("bench", "orders", build_metadata(collection_name="orders"))

    def write() -> None:
        buffer.seek(0)
        buffer.truncate()
        compressed = open_compressed_writer(buffer, compression)
        writer = ArchiveWriter(compressed, "8.0.0", "bench")
        writer.write_prelude([entry])
        writer.write_documents("bench", "orders", raw_batches)
        writer.finish_namespace("bench", "orders")
        writer.finish()
        compressed.close()

    write_s = best_of(2, write)
    archive = buffer.getvalue()
    verify_s = best_of(2, lambda: verify(open_decompressing_reader(io.BytesIO(archive))))
    return raw_bytes / MB / write_s, raw_bytes / MB / verify_s


def start_secantus(workdir: Path) -> tuple[subprocess.Popen, str]:
    from tests.support.processes import free_port, wait_for

    port = free_port()
    binary = Path(sys.executable).with_name("secantusd-py")
    log = (workdir / "secantusdb.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "--standalone", "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", str(workdir / "data"), "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"mongodb://127.0.0.1:{port}/"

    def answers() -> bool:
        with MongoClient(uri, serverSelectionTimeoutMS=500) as client:
            return bool(client.admin.command("ping"))

    wait_for(answers, 30, what="SecantusDB up")
    return proc, uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="a MongoDB server to use (default: start a private SecantusDB)")
    parser.add_argument("--base-mb", type=float, default=4.0, help="raw BSON size of the 1x data set (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing, best kept (default 2)")
    parser.add_argument("--rss-child", choices=("dump", "read"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    # the engine's per-collection events would drown the table
    configure_logging(Settings.from_env({"FLEXDB_LOG_LEVEL": "WARNING", "FLEXDB_ENV_FILE": os.devnull}))
    if args.rss_child:
        rss_child(args.rss_child, args.uri)
        return

    started = time.perf_counter()
    proc = None
    with tempfile.TemporaryDirectory(prefix="flexdb-bench-") as tmp:
        uri = args.uri
        if not uri:
            proc, uri = start_secantus(Path(tmp))
        try:
            run(Bench(uri, args.repeat, args.base_mb))
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(4)  # SecantusDB flushes its store before it exits
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(f"\ntotal bench time: {time.perf_counter() - started:.1f} s on {os.cpu_count()} cores")


def run(bench: Bench) -> None:
    print(f"server: {bench.client.admin.command('buildInfo').get('version')}  repeat: best of {bench.repeat}")
    header = (
        f"{'data':>5} {'docs':>7} {'MB':>6} | {'raw read':>9} | {'dump none':>9} {'ratio':>5} | "
        f"{'dump gzip':>9} {'ratio':>5} {'gz MB':>6} | {'insert':>7} | {'restore':>7} {'ratio':>5} | "
        f"{'count s':>7} {'ratio-':>6}"
    )
    print("\nthroughput in MB/s of raw BSON (docs/s in brackets for raw read and dump none)")
    print(header)
    print("-" * len(header))
    rss_rows = []
    for factor in (1, 10):
        data = bench.load(factor)
        mb = data.raw_bytes / MB
        raw_s = bench.raw_read(data)
        none_s, _ = bench.engine_dump(data, "none")
        gzip_s, gzip_size = bench.engine_dump(data, "gzip")
        archive = bench.archive_of(data)
        plain_s = bench.plain_insert(data)
        restore_s = bench.engine_restore(data, archive)
        count_s = bench.count_scan(data)
        bench.client.drop_database(data.database + "_restored")
        print(
            f"{factor:>4}x {data.documents:>7} {mb:>6.1f} | {mb / raw_s:>9.1f} | {mb / none_s:>9.1f} "
            f"{raw_s / none_s:>5.2f} | {mb / gzip_s:>9.1f} {raw_s / gzip_s:>5.2f} {gzip_size / MB:>6.1f} | "
            f"{mb / plain_s:>7.1f} | {mb / restore_s:>7.1f} {plain_s / restore_s:>5.2f} | "
            f"{count_s:>7.3f} {raw_s / (none_s - count_s):>6.2f}"
        )
        print(f"{'':>20} ({data.documents / raw_s:,.0f} docs/s raw, {data.documents / none_s:,.0f} docs/s dump none)")
        rss_rows += [(factor, mb, mode, bench.peak_rss(data, mode)) for mode in ("read", "dump")]
        if factor == 10:
            db = bench.client[data.database]
            batches = [b for c in range(COLLECTIONS) for b in db[f"orders_{c}"].find_raw_batches()]
            pipeline = {codec: pipeline_only(batches, data.raw_bytes, codec) for codec in ("none", "gzip")}
        bench.client.drop_database(data.database)
    # one more size for memory only: past 16 MiB per collection the server's batches stop growing
    data = bench.load(RSS_ONLY_FACTOR)
    rss_rows += [(RSS_ONLY_FACTOR, data.raw_bytes / MB, mode, bench.peak_rss(data, mode)) for mode in ("read", "dump")]
    bench.client.drop_database(data.database)

    print(
        "\npeak RSS in a fresh child process (VmHWM): a gzip dump with the default settings, and for reference a bare"
        "\nfind_raw_batches read of the same collections with the server's default batches (up to 16 MiB)"
    )
    for factor, mb, mode, rss in sorted(rss_rows, key=lambda row: (row[2], row[0])):
        grown = (rss["peak_kib"] - rss["before_kib"]) / 1024
        per_collection = mb / COLLECTIONS
        print(
            f"{factor:>4}x {mb:>6.1f} MB ({per_collection:4.0f} MB/collection)  {mode:>4}: "
            f"peak {rss['peak_kib'] / 1024:6.1f} MiB, added {grown:5.1f} MiB"
        )

    print("\narchive pipeline alone, documents already in memory (MB/s of raw BSON)")
    for codec, (write_mbs, verify_mbs) in pipeline.items():
        print(f"  {codec:>4}: write {write_mbs:7.1f}   verify {verify_mbs:7.1f}")


if __name__ == "__main__":
    main()
