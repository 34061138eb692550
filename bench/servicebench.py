"""What the service benchmarks share: a data set of real text, the running service, the
worker's memory.

- :func:`text_rows` turns text found on the machine (man pages, documentation, Python
  sources) into rows of three tables with numeric, timestamp and jsonb columns; pgbench's
  blank filler compresses 100:1 and says nothing about real data.
- :func:`ensure_pg_dataset` loads those rows once into a database named after the benchmark
  and its size, and reuses it on later runs.
- :class:`ServiceStack` starts the service the way ``make run`` does (``scripts/run_stack.py``:
  API under gunicorn and a Celery worker) against a private Redis and a temporary storage
  folder, and submits jobs over the HTTP API.
- :class:`TreeMemory` follows the worker's processes (Celery main process, pool children,
  the tools they run) while a job runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.processes import ApiClient, free_port, wait_for  # noqa: E402

MB = 1_000_000
DEFAULT_PG_URI = os.environ.get("FLEXDB_BENCH_PG_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
DATASET_PREFIX = "flexdb_bench_text_"

# ------------------------------------------------------------------------------ the text


def _man_files() -> Iterator[Path]:
    yield from sorted(Path("/usr/share/man").rglob("*.gz"))


def _doc_files() -> Iterator[Path]:
    yield from sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file() and not p.is_symlink())


def _python_roots() -> list[Path]:
    """The interpreter's library and its site-packages."""
    return sorted({Path(p) for p in sys.path if "site-packages" in p or re.search(r"/python3(\.\d+)?$", p)})


def _python_files() -> Iterator[Path]:
    for root in _python_roots():
        if root.is_dir():
            yield from sorted(root.rglob("*.py"))


def _read_text(path: Path) -> str | None:
    """The file as text, or None for binaries (and anything unreadable)."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if not data or b"\x00" in data[:8192]:
        return None
    text = data.decode("utf-8", errors="replace")
    # PDFs, images and the like without NUL bytes: mostly non-printable.
    sample = text[:4096]
    if sum(ch.isprintable() or ch in "\n\t\r" for ch in sample) < 0.95 * len(sample):
        return None
    return text.replace("\x00", "")


# The three sources, the table each one fills.
SOURCES = {"articles": _man_files, "events": _doc_files, "source_lines": _python_files}
TABLES = {
    "articles": (
        "id bigint PRIMARY KEY, source text NOT NULL, title text NOT NULL, section text, "
        "published_at timestamptz NOT NULL, word_count integer NOT NULL, rating numeric(4,2), body text NOT NULL"
    ),
    "events": (
        "id bigint PRIMARY KEY, at timestamptz NOT NULL, level text NOT NULL, host text NOT NULL, "
        "message text NOT NULL, attrs jsonb NOT NULL"
    ),
    "source_lines": (
        "id bigint PRIMARY KEY, file text NOT NULL, line_no integer NOT NULL, indent smallint NOT NULL, "
        "line text NOT NULL"
    ),
}
INDEXES = ("CREATE INDEX ON events (at)", "CREATE INDEX ON source_lines (file, line_no)", "CREATE INDEX ON articles (title)")
COLUMNS = {name: [part.split()[0] for part in spec.split(", ")] for name, spec in TABLES.items()}
LEVELS = ("debug", "info", "info", "info", "notice", "warning", "error")
EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)


def _texts(source: str) -> Iterator[tuple[int, Path, str]]:
    """(pass, path, text) for every distinct text file of a source, over and over: a data set
    larger than the machine's text repeats it, each pass cut and dated differently."""
    for round_ in range(1_000_000):
        found = False
        seen: set[bytes] = set()
        for path in SOURCES[source]():
            text = _read_text(path)
            if text is None:
                continue
            digest = hashlib.sha1(text.encode()).digest()
            if digest in seen:  # the same licence text in a hundred packages counts once
                continue
            seen.add(digest)
            found = True
            yield round_, path, text
        if not found:
            raise RuntimeError(f"no text found for {source}")


def _paragraphs(text: str, limit: int) -> Iterator[str]:
    """Blank-line separated blocks, merged up to about ``limit`` characters."""
    block: list[str] = []
    size = 0
    for part in re.split(r"\n\s*\n", text):
        part = part.strip("\n")
        if not part.strip():
            continue
        block.append(part)
        size += len(part)
        if size >= limit:
            yield "\n\n".join(block)
            block, size = [], 0
    if block:
        yield "\n\n".join(block)


def _article_rows(round_: int, path: Path, text: str, rng: random.Random) -> Iterator[tuple]:
    name = path.name.removesuffix(".gz")
    section = path.parent.name.removeprefix("man") or None
    for number, body in enumerate(_paragraphs(text, rng.choice((2000, 4000, 8000)) + round_ * 512)):
        title = f"{name} ({number + 1})" if round_ == 0 else f"{name} ({number + 1}, rev {round_})"
        published = EPOCH + timedelta(seconds=rng.randrange(0, 5 * 365 * 86400))
        yield (str(path), title, section, published, len(body.split()), round(rng.uniform(0, 5), 2), body)


def _event_rows(round_: int, path: Path, text: str, rng: random.Random) -> Iterator[tuple]:
    host = f"host-{rng.randrange(64):02d}"
    at = EPOCH + timedelta(seconds=rng.randrange(0, 5 * 365 * 86400))
    for message in _paragraphs(text, rng.choice((200, 400, 800))):
        at += timedelta(milliseconds=rng.randrange(1, 600_000))
        words = message.split()
        attrs = {
            "file": path.name,
            "package": path.parent.name,
            "words": len(words),
            "lines": message.count("\n") + 1,
            "score": round(rng.random(), 4),
            "tags": sorted({w.lower().strip(".,:;()") for w in words[:6] if w.isalpha()}),
            "pass": round_,
        }
        yield (at, rng.choice(LEVELS), host, message, json.dumps(attrs))


def _line_rows(round_: int, path: Path, text: str, rng: random.Random) -> Iterator[tuple]:
    # A module's name as imported (json/decoder.py), not where this machine keeps it.
    relative = next((str(path.relative_to(root)) for root in _python_roots() if path.is_relative_to(root)), path.name)
    name = relative if round_ == 0 else f"{relative}@{round_}"
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield (name, number, len(line) - len(line.lstrip()), line.rstrip())


ROW_MAKERS = {"articles": _article_rows, "events": _event_rows, "source_lines": _line_rows}


def text_rows(size_bytes: int, seed: int = 1) -> Iterator[tuple[str, tuple]]:
    """(table, row without id) until about ``size_bytes`` of row data: each source's next
    file goes to the table that has the fewest bytes so far, so every size holds all three."""
    rng = random.Random(seed)
    sources = {table: _texts(table) for table in ROW_MAKERS}
    written = dict.fromkeys(ROW_MAKERS, 0)
    total = 0
    while total < size_bytes:
        table = min(written, key=written.__getitem__)
        round_, path, text = next(sources[table])
        for row in ROW_MAKERS[table](round_, path, text, rng):
            size = sum(len(str(value)) for value in row if value is not None)
            written[table] += size
            total += size
            yield table, row
            if total >= size_bytes:
                return


# ------------------------------------------------------------------------- PostgreSQL


def pg_uri_for(admin_uri: str, database: str) -> str:
    parts = urlsplit(admin_uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def dataset_name(size_mb: int) -> str:
    return f"{DATASET_PREFIX}{size_mb}mb"


def _database_exists(admin_uri: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop_database(admin_uri: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def ensure_pg_dataset(admin_uri: str, size_mb: int, rebuild: bool = False) -> str:
    """The benchmark database of ``size_mb`` MB of row text, built once and kept. It is loaded
    under a temporary name and renamed when complete, so an interrupted build is never reused."""
    import psycopg
    from psycopg import sql

    name = dataset_name(size_mb)
    if rebuild:
        drop_database(admin_uri, name)
    elif _database_exists(admin_uri, name):
        return name
    building = f"{name}_building"
    drop_database(admin_uri, building)
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
    started = time.perf_counter()
    print(f"building {name} ({size_mb} MB of text from man pages, documentation, Python sources)...", flush=True)
    with psycopg.connect(pg_uri_for(admin_uri, building), autocommit=True) as conn:
        for table, spec in TABLES.items():
            conn.execute(f"CREATE TABLE {table} ({spec})")
        ids = dict.fromkeys(TABLES, 0)
        _copy_rows(conn, size_mb * MB, ids)
        for statement in INDEXES:
            conn.execute(statement)
        conn.execute("VACUUM ANALYZE")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
    print(f"built {name} in {time.perf_counter() - started:.0f} s: {ids}", flush=True)
    return name


def _copy_rows(conn: Any, size_bytes: int, ids: dict[str, int]) -> None:
    """COPY the rows in batches per table (one COPY at a time on a connection)."""
    batches: dict[str, list[tuple]] = {table: [] for table in TABLES}

    def flush(table: str) -> None:
        rows = batches[table]
        if not rows:
            return
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN") as copy:
            for row in rows:
                ids[table] += 1
                copy.write_row((ids[table], *row))
        rows.clear()

    for table, row in text_rows(size_bytes):
        batches[table].append(row)
        if len(batches[table]) >= 20_000:
            flush(table)
    for table in TABLES:
        flush(table)


def pg_database_bytes(admin_uri: str, name: str) -> int:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        return conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0]


# libpq connection parameters -> the variables pg_dump and pg_restore read them from.
_PG_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE"}


def tool_env(uri: str) -> dict[str, str]:
    """The environment for a hand-run pg_dump/pg_restore/createdb on ``uri``: its connection in
    PG* variables (a password on the command line would show in ``ps``), inherited ones dropped."""
    from psycopg.conninfo import conninfo_to_dict

    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    for key, value in conninfo_to_dict(uri).items():
        if key in _PG_ENV and value is not None:
            env[_PG_ENV[key]] = str(value)
    return env


# ---------------------------------------------------------------------------- the service


@dataclass
class ServiceStack:
    """API + worker as ``make run`` starts them (``python -m scripts.run_stack --no-beat``),
    with a private Redis on a free port and a temporary storage folder."""

    targets: dict[str, dict[str, Any]]
    settings: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flexdb-bench-")))

    def __post_init__(self) -> None:
        self.port = free_port()
        self.storage_dir = self.workdir / "backups"
        self.api = ApiClient(f"http://127.0.0.1:{self.port}/api/v1")
        self._process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FLEXDB_")}
        env.update(
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            FLEXDB_ENV_FILE=os.devnull,
            FLEXDB_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            FLEXDB_API_PORT=str(self.port),
            FLEXDB_API_WORKERS="1",
            FLEXDB_STORAGE_DIR=str(self.storage_dir),
            FLEXDB_BEAT_SCHEDULE_FILE=str(self.workdir / "beat-schedule"),
            FLEXDB_TARGETS=json.dumps(self.targets),
            FLEXDB_CALLBACK_SECRET=secrets.token_hex(32),
            FLEXDB_LOG_FORMAT="json",
            FLEXDB_WORKER_HEARTBEAT_SECONDS="1",
        )
        env.update(self.settings)
        return env

    def __enter__(self) -> ServiceStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "stack.log").open("ab")
        # The working folder is the temporary one: the private Redis keeps its files there.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "scripts.run_stack", "--no-beat"],
            cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

        def up() -> bool:
            if self._process.poll() is not None:
                raise RuntimeError(f"the stack exited; see {self.workdir / 'stack.log'}")
            return bool(self.api.get("/health").body["components"]["workers"]["ok"])

        wait_for(up, 90, interval=0.5, what="API and worker up")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGTERM)  # the supervisor stops its children
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the private Redis's files, the archives

    # ---------------------------------------------------------------- processes

    def worker_pid(self) -> int:
        """The Celery worker's main process (a child of the supervisor)."""
        for pid in children_of(self._process.pid):
            if "worker" in cmdline(pid) and "beat" not in cmdline(pid) and "gunicorn" not in " ".join(cmdline(pid)):
                return pid
        raise RuntimeError("no worker process found")

    # ---------------------------------------------------------------- jobs

    def run_job(self, kind: str, body: dict[str, Any], timeout: float = 3600) -> tuple[dict[str, Any], float]:
        """Submit, then follow the job with long polls until it is done: (job, seconds)."""
        started = time.perf_counter()
        response = self.api.post(f"/{kind}", body)
        if response.status != 202:
            raise RuntimeError(f"{kind} refused: {response.status} {response.text}")
        location = response.headers["Location"]
        deadline = started + timeout
        while time.perf_counter() < deadline:
            job = self.api.get(f"{location}?wait=30").body
            if job and job.get("done"):
                return job, time.perf_counter() - started
        raise TimeoutError(f"{kind} job {location} not done within {timeout} s")

    def backup(self, target: str, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
        job, seconds = self.run_job("backups", {"target": target, **({"options": options} if options else {})})
        _succeeded(job)
        return job, seconds

    def restore(self, backup_id: str, database: str) -> tuple[dict[str, Any], float]:
        job, seconds = self.run_job("restores", {"backup_id": backup_id, "database": database})
        _succeeded(job)
        return job, seconds

    def manifest(self, backup_id: str) -> dict[str, Any]:
        return self.api.get(f"/backups/{backup_id}").body

    def stored_bytes(self, backup_id: str) -> int:
        """What the backup occupies in storage, manifest aside."""
        folder = self.storage_dir / backup_id
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")

    def delete(self, backup_id: str) -> None:
        self.api.request("DELETE", f"/backups/{backup_id}")


def _succeeded(job: dict[str, Any]) -> None:
    if job.get("status") != "succeeded":
        raise RuntimeError(f"job {job.get('id')} ended {job.get('status')}: {job.get('error')}")


# ------------------------------------------------------------------------------ memory


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command may hold spaces and parentheses: fields start after the last ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children_of(current))
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: pages shared with the other pool processes (forked from one
    parent) counted once across them, so a sum over the pool is not inflated."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_python(pid: int) -> bool:
    try:
        return "python" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False


class TreeMemory:
    """Peak memory of the worker while one job runs.

    Before the job every process of the worker's tree gets its peak reset (``clear_refs`` 5);
    after it, each one's ``VmHWM`` is its true peak. A sampling thread also records the peak of
    the sum of the worker's Python processes (by PSS), and of the tools (pg_dump, pg_restore)
    apart (by RSS)."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_python_pss_kib = 0
        self.peak_tool_kib = 0
        self.peaks_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        for pid in descendants(self.root):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in descendants(self.root):
            if _is_python(pid):
                self.peaks_kib[pid] = max(self.peaks_kib.get(pid, 0), _status_kib(pid, "VmHWM"))

    def _sample(self) -> None:
        while not self._stop.is_set():
            python_sum = 0
            for pid in descendants(self.root):
                if _is_python(pid):
                    python_sum += _pss_kib(pid)
                    self.peaks_kib[pid] = max(self.peaks_kib.get(pid, 0), _status_kib(pid, "VmHWM"))
                else:
                    self.peak_tool_kib = max(self.peak_tool_kib, _status_kib(pid, "VmRSS"))
            self.peak_python_pss_kib = max(self.peak_python_pss_kib, python_sum)
            self._stop.wait(self.interval)

    @property
    def main_kib(self) -> int:
        return self.peaks_kib.get(self.root, 0)

    @property
    def child_kib(self) -> int:
        """The busiest other Python process: the pool child that ran the job."""
        return max((kib for pid, kib in self.peaks_kib.items() if pid != self.root), default=0)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
