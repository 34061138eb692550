"""The worker's peak memory across database sizes: PostgreSQL and MongoDB, backup and restore.

    .venv/bin/python bench/worker_memory.py                        # 10, 100 and 1000 MB
    .venv/bin/python bench/worker_memory.py --sizes-mb 10,100,3000 --engines postgresql
    .venv/bin/python bench/worker_memory.py --mongo-uri mongodb://user:pw@host:27017/   # a real server

For each size the same text data set as bench/postgresql_backup.py (man pages, documentation,
Python sources) is loaded into PostgreSQL (database ``flexdb_bench_text_<size>mb``, kept and
reused) and into MongoDB (the same rows as documents; SecantusDB started for the run unless
--mongo-uri is given). The service runs as ``make run`` starts it (API + worker, private
Redis, temporary storage); each backup, then a restore of it into a fresh database, goes
through the HTTP API while the worker's processes are watched:

  main     peak RSS (VmHWM) of the Celery main process during the job;
  child    peak RSS of the pool process that ran the job (the largest of the pool);
  pss      peak of the sampled sum of the PSS of all the worker's Python processes (pages the
           forked pool shares counted once): the worker's whole footprint;
  tool     peak RSS of a tool the job ran (pg_dump, pg_restore), apart.

Each process's peak is reset (``/proc/<pid>/clear_refs``) before each job. Goal: flat across
sizes, under 150 MB per process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servicebench import (  # noqa: E402
    DEFAULT_PG_URI,
    MB,
    ServiceStack,
    TreeMemory,
    dataset_name,
    drop_database,
    ensure_pg_dataset,
    pg_uri_for,
    text_rows,
)

ENGINES = ("postgresql", "mongodb")
LINES_PER_DOCUMENT = 64  # source lines travel as one document per block, as a document store keeps them
INSERT_BATCH_BYTES = 4 * 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="10,100,1000", help="comma-separated data set sizes, MB of text")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: postgresql, mongodb")
    parser.add_argument("--uri", default=DEFAULT_PG_URI, help="PostgreSQL URI whose user may create databases")
    parser.add_argument("--mongo-uri", help="a MongoDB server to use instead of a SecantusDB started for the run")
    parser.add_argument("--rebuild", action="store_true", help="build the PostgreSQL data sets again")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(size) for size in args.sizes_mb.split(",")]
    except ValueError:
        parser.error("--sizes-mb takes numbers separated by commas")
    args.engine_list = [name.strip() for name in args.engines.split(",") if name.strip()]
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes-mb takes positive sizes")
    if unknown := set(args.engine_list) - set(ENGINES):
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    return args


# ---------------------------------------------------------------------------- MongoDB data


def mongo_documents(size_bytes: int) -> Any:
    """(collection, document) for the data set's rows; source lines grouped into blocks."""
    block: list[dict[str, Any]] = []
    block_file = None
    for table, row in text_rows(size_bytes):
        if table == "articles":
            source, title, section, published, words, rating, body = row
            yield table, {"source": source, "title": title, "section": section, "published_at": published,
                          "word_count": words, "rating": rating, "body": body}  # fmt: skip
        elif table == "events":
            at, level, host, message, attrs = row
            yield table, {"at": at, "level": level, "host": host, "message": message, "attrs": attrs}
        else:
            file, line_no, indent, line = row
            if block and (file != block_file or len(block) >= LINES_PER_DOCUMENT):
                yield "source_blocks", {"file": block_file, "first_line": block[0]["n"], "lines": block}
                block = []
            block_file = file
            block.append({"n": line_no, "indent": indent, "text": line})
    if block:
        yield "source_blocks", {"file": block_file, "first_line": block[0]["n"], "lines": block}


def load_mongo(client: Any, database: str, size_mb: int) -> None:
    """Fill ``database`` unless a complete copy is there (the ``bench_meta`` mark is written last)."""
    import json

    db = client[database]
    if db["bench_meta"].find_one({"_id": "complete"}):
        return
    client.drop_database(database)
    pending: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, int] = {}
    for collection, document in mongo_documents(size_mb * MB):
        if "attrs" in document:
            document["attrs"] = json.loads(document["attrs"])
        pending.setdefault(collection, []).append(document)
        sizes[collection] = sizes.get(collection, 0) + sum(len(str(v)) for v in document.values())
        if sizes[collection] >= INSERT_BATCH_BYTES:
            db[collection].insert_many(pending.pop(collection), ordered=False)
            sizes[collection] = 0
    for collection, documents in pending.items():
        db[collection].insert_many(documents, ordered=False)
    db["events"].create_index("at")
    db["bench_meta"].insert_one({"_id": "complete", "size_mb": size_mb, "at": datetime.now()})


def mongo_uri_for(base: str, database: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


# -------------------------------------------------------------------------------- the run


def measure(stack: ServiceStack, target: str, restore_into: str) -> list[tuple[str, float, TreeMemory]]:
    worker = stack.worker_pid()
    with TreeMemory(worker) as backup_memory:
        job, backup_seconds = stack.backup(target)
    with TreeMemory(worker) as restore_memory:
        _, restore_seconds = stack.restore(job["backup_id"], restore_into)
    size = stack.stored_bytes(job["backup_id"])
    stack.delete(job["backup_id"])
    return [(f"backup ({size / MB:.0f} MB archive)", backup_seconds, backup_memory), ("restore", restore_seconds, restore_memory)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    targets: dict[str, dict[str, Any]] = {}
    mongo_server = None
    mongo_client = None
    if "postgresql" in args.engine_list:
        for size in args.sizes:
            database = ensure_pg_dataset(args.uri, size, args.rebuild)
            targets[f"postgresql-{size}"] = {"engine": "postgresql", "uri": pg_uri_for(args.uri, database)}
    try:
        if "mongodb" in args.engine_list:
            from pymongo import MongoClient

            base = args.mongo_uri
            if base is None:
                import tempfile

                from tests.support.mongo import MongoTestServer

                mongo_server = MongoTestServer(Path(tempfile.mkdtemp(prefix="flexdb-bench-mongo-")), "bench", "", auth=False).start()
                base = mongo_server.uri()
            mongo_client = MongoClient(base)
            for size in args.sizes:
                print(f"loading {size} MB into MongoDB...", flush=True)
                load_mongo(mongo_client, dataset_name(size), size)
                targets[f"mongodb-{size}"] = {"engine": "mongodb", "uri": mongo_uri_for(base, dataset_name(size))}
        print(f"{'size':>7} {'engine':<11} {'job':<26} {'seconds':>8} {'main':>9} {'child':>9} {'pss':>9} {'tool':>9}   (peak RSS, MiB)")
        with ServiceStack(targets) as stack:
            for size in args.sizes:
                for engine in args.engine_list:
                    fresh = f"{dataset_name(size)}_restored"
                    rows = measure(stack, f"{engine}-{size}", fresh)
                    if engine == "postgresql":
                        drop_database(args.uri, fresh)
                    else:
                        mongo_client.drop_database(fresh)
                    for job, seconds, memory in rows:
                        print(
                            f"{size:>4} MB {engine:<11} {job:<26} {seconds:>8.1f} {memory.main_kib / 1024:>9.1f}"
                            f" {memory.child_kib / 1024:>9.1f} {memory.peak_python_pss_kib / 1024:>9.1f}"
                            f" {memory.peak_tool_kib / 1024:>9.1f}",
                            flush=True,
                        )
    finally:
        if mongo_client is not None:
            mongo_client.close()
        if mongo_server is not None:
            mongo_server.stop()
            shutil.rmtree(mongo_server.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
