"""PostgreSQL: ``pg_dump -Fc`` streamed from stdout, ``pg_restore`` fed from the archive.

pg_dump writes uncompressed (``--compress=0``): the backup workflow's codec compresses the stream
(multi-threaded zstd by default), faster and smaller than pg_dump's own single-threaded zlib.

For big databases, ``"format": "directory", "jobs": N`` runs ``pg_dump -Fd -j N`` into a scratch
folder (FLEXDB_SCRATCH_DIR), then streams the folder as one tar archive through the same codec,
checksum, encryption and mirror path as any archive; a restore unpacks it into a scratch folder
(no member may leave it) and runs ``pg_restore -j N``. The scratch folder is always removed.

Credentials reach the tools through their environment only (never argv, which ``ps`` shows);
inherited ``PG*`` variables are dropped first so the target's own settings apply. Stopping a
job kills a tool with the parallel workers it forked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

from shared.core.errors import (
    ArchiveCorrupt,
    AuthenticationFailed,
    DatabaseNotFound,
    DumpFailed,
    EngineUnavailable,
    FlexDBError,
    RestoreFailed,
    TargetMisconfigured,
    TargetNotEmpty,
    TargetUnreachable,
    ToolVersionMismatch,
    ValidationFailed,
)
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Settings, Target
from shared.domain.backups import DATABASE_NAME_PATTERN, DATABASE_NAME_RULE, BackupManifest
from shared.domain.engine import (
    BackupEngine,
    ConnectionAddress,
    DumpResult,
    ImportedArchive,
    RestoreRequest,
    ServerInfo,
)
from shared.domain.progress import ProgressTracker
from shared.domain.streams import iter_chunks
from shared.engines.registry import register

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # the engine reports itself unavailable instead
    psycopg = None  # type: ignore[assignment]

log = get_logger(__name__)

# libpq connection parameters and the environment variables the tools read them from.
_CONNINFO_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}
_USER_OBJECTS_SQL = """
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
"""
_TABLES_SQL = """
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'm')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
"""


# libpq names each endpoint it tried: 'connection to server at "db" (10.0.0.5), port 5432 failed: ...'
# or 'connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: ...'.
_ENDPOINT = re.compile(
    r'connection to server (?:at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)|on socket "(?P<socket>[^"]*)") failed: '
    r"(?P<reason>[^\n]*)"
)
_MISSING = re.compile(r'(?P<kind>role|database) "(?P<name>[^"]*)" does not exist')
# Failures that come from the target's own settings (its URI's options), not from the server.
_MISCONFIGURED = ("certificate", "private key", "invalid connection option", "unrecognized configuration parameter", "sslmode value", "invalid value for parameter")


def classify_connection_error(message: str, where: str) -> FlexDBError:
    """Say what happened when libpq (or pg_dump, with libpq's words) could not connect: which
    endpoint refused or did not answer, a login refused (a wrong password or a role that does
    not exist), a database that does not exist, or settings in the URI the driver cannot use."""
    attempts = list(_ENDPOINT.finditer(message))
    endpoints = ", ".join(
        dict.fromkeys(a["socket"] or f"{a['host']}:{a['port']}" for a in attempts)
    ) or "the target's host"
    first = attempts[0]["reason"] if attempts else message.strip().splitlines()[0] if message.strip() else ""
    reason = redact(re.sub(r"^(?:FATAL|ERROR):\s+", "", first.strip()))
    lowered = message.lower()
    missing = _MISSING.search(message)
    if (missing and missing["kind"] == "role") or any(
        words in lowered for words in ("authentication failed", "no password supplied", "password is required")
    ):
        return AuthenticationFailed(
            f"{where}: the server at {endpoints} refused the login ({reason}). Check the user and password in the target's URI."
        )
    if missing:
        return DatabaseNotFound(
            f"{where}: the server at {endpoints} has no database {missing['name']!r}. Check the database name in "
            "the target's URI, or create the database."
        )
    if any(words in lowered for words in _MISCONFIGURED):
        return TargetMisconfigured(f"{where}: the driver cannot use the target's settings ({redact(message.strip().splitlines()[0])}). Fix the options in the target's URI.")
    if "connection refused" in lowered:
        return TargetUnreachable(
            f"{where}: connection refused at {endpoints}. Check that the server is up and the host and port in the "
            "target's URI are right."
        )
    if "timeout expired" in lowered or "timed out" in lowered:
        return TargetUnreachable(
            f"{where}: no answer from {endpoints} within the connect timeout (FLEXDB_CONNECT_TIMEOUT_SECONDS). Check "
            "the host and port, and that no firewall drops the connection."
        )
    return TargetUnreachable(
        f"{where}: cannot connect to {endpoints} ({reason}). Check that the server is up and the host and port in "
        "the target's URI are right."
    )


def classify_query_error(exc: Exception, where: str) -> FlexDBError:
    """A statement that failed on an open connection (the probe's, a restore's preparation)."""
    text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return TargetMisconfigured(
            f"{where}: the server cancelled a query ({text}). A statement_timeout from the target's URI "
            "(options=-c statement_timeout=...) or from its role or database is too short; raise it or remove it."
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return AuthenticationFailed(f"{where}: the server refused the operation ({text}). Give the target's user the privileges it needs.")
    if isinstance(exc, psycopg.OperationalError):
        return TargetUnreachable(f"{where}: the server closed the connection ({text}). Check that it is up.")
    return TargetUnreachable(f"{where}: the server answered with an error ({text}).")


def _stderr_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    errors = [line for line in text.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
    return redact(" | ".join((errors or text.splitlines())[-lines:]))


@register
class PostgreSQLEngine(BackupEngine):
    name = "postgresql"
    archive_format = "pg_dump-custom"
    archive_name = "archive.dump"
    # template1 is copied into every database created later; template0 must stay pristine.
    forbidden_databases = frozenset({"template0", "template1"})
    system_databases = frozenset({"postgres"})
    # Everything else libpq reads from a URI's query may send it elsewhere (host, hostaddr, port,
    # service), run server settings (options) or read local files (passfile, sslrootcert...).
    adhoc_uri_options = MappingProxyType({
        "sslmode": frozenset({"disable", "allow", "prefer", "require"}),
        "channel_binding": None,
        "application_name": None,
        "target_session_attrs": None,
    })

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if psycopg is None:
            return "the psycopg driver is not installed"
        return None

    @classmethod
    def validate_engine_options(
        cls, kind: str, options: Mapping[str, Any], settings: Settings | None = None
    ) -> dict[str, Any]:
        """backup: ``format`` ("custom", the default, or "directory") and, for a directory
        backup, ``jobs`` (parallel pg_dump/pg_restore jobs, 1 to FLEXDB_PG_MAX_JOBS)."""
        allowed = _BACKUP_OPTIONS if kind == "backup" else ()
        limit = (settings or Settings).pg_max_jobs
        errors = [
            {"pointer": f"/options/{key}", "detail": f"unknown option; {kind} takes {', '.join(allowed) or 'none'}"}
            for key in sorted(options)
            if key not in allowed
        ]
        clean: dict[str, Any] = {}
        if "format" in options:
            if options["format"] in _FORMATS:
                clean["format"] = options["format"]
            else:
                errors.append({"pointer": "/options/format", "detail": f"must be one of {', '.join(_FORMATS)}"})
        if "jobs" in options:
            jobs = options["jobs"]
            if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= limit:
                errors.append({"pointer": "/options/jobs", "detail": f"must be a whole number from 1 to {limit} (FLEXDB_PG_MAX_JOBS)"})
            elif options.get("format") != DIRECTORY:
                errors.append({"pointer": "/options/jobs", "detail": 'parallel jobs need "format": "directory"'})
            else:
                clean["jobs"] = jobs
        if errors:
            raise ValidationFailed(
                f"Invalid postgresql {kind} options: " + "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors),
                errors=errors,
            )
        return clean

    def archive_kind(self, options: Mapping[str, Any]) -> tuple[str, str]:
        if options.get("format") == DIRECTORY:
            return DIRECTORY_ARCHIVE_FORMAT, "archive.tar"
        return self.archive_format, self.archive_name

    @classmethod
    def restore_destination(cls, target: Target, manifest: BackupManifest, database: str | None) -> str | None:
        if database or psycopg is None:
            return database
        return cls._database_of(cls._uri_params(target))

    @classmethod
    def connection_address(cls, uri: str) -> ConnectionAddress:
        def refuse(detail: str) -> ValidationFailed:
            return ValidationFailed(f"The PostgreSQL URI cannot be used: {detail}.", errors=[{"pointer": "/uri", "detail": detail}])

        # libpq also takes "key=value" strings, where any option may hide: only URIs are checked.
        if not uri.startswith(("postgresql://", "postgres://")):
            raise refuse("write it as postgresql://user:password@host:5432/database")
        try:
            params = conninfo_to_dict(uri)
            # libpq decodes option names as parse_qsl does ("%68ost" is "host").
            options = {key: value for key, value in parse_qsl(urlsplit(uri).query, keep_blank_values=True)}
        except (psycopg.Error, ValueError) as exc:  # ValueError: text libpq cannot take, a bad "[v6]"
            raise refuse(f"libpq refuses it ({redact(str(exc))})") from None
        hosts = str(params.get("host") or "").split(",")
        # An empty host means the default socket; "/path" and "@name" are sockets too.
        sockets = tuple(host or "(the default socket)" for host in hosts if not host or host.startswith(("/", "@")))
        names = tuple(host for host in hosts if host and not host.startswith(("/", "@")))
        return ConnectionAddress(hosts=names, sockets=sockets, options=options)

    # ------------------------------------------------------------------ tools

    def _tool(self, name: str) -> str:
        bin_dir = self.settings.pg_bin_dir
        path = str(Path(bin_dir) / name) if bin_dir else shutil.which(name)
        if not path or not os.access(path, os.X_OK):
            raise DumpFailed(f"{name} is not installed on this worker; install postgresql-client or set FLEXDB_PG_BIN_DIR.")
        return path

    def tool_version(self, env: Mapping[str, str] | None = None) -> str:
        # Debian's pg_dump is a wrapper that picks a client version from the environment
        # (PGHOST...): ask with the dump's own environment to learn what will really run.
        out = subprocess.run(
            [self._tool("pg_dump"), "--version"], capture_output=True, text=True, check=False, env=env
        )
        match = re.search(r"(\d+(?:\.\d+)*)", out.stdout)
        return match.group(1) if match else out.stdout.strip()

    @staticmethod
    def _uri_params(target: Target) -> dict[str, Any]:
        try:
            return conninfo_to_dict(target.uri)
        except psycopg.ProgrammingError as exc:
            raise TargetMisconfigured(
                f"Target {target.name!r}: the PostgreSQL URI is not usable ({redact(str(exc))}); "
                "write it as postgresql://user:password@host:5432/database."
            ) from None

    def _connection_params(self, target: Target, database: str | None = None) -> dict[str, Any]:
        params = self._uri_params(target)
        if database:
            params["dbname"] = database
        return params

    def _tool_env(self, target: Target, database: str | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        for key, value in self._connection_params(target, database).items():
            if key in _CONNINFO_ENV and value is not None:
                env[_CONNINFO_ENV[key]] = str(value)
        env["PGCONNECT_TIMEOUT"] = str(self.settings.connect_timeout_seconds)
        return env

    @contextmanager
    def _connect(self, target: Target, database: str | None = None, autocommit: bool = False) -> Iterator[Any]:
        """An open connection; whatever the driver raises, while connecting or in the block,
        leaves as an error of our hierarchy."""
        params = self._connection_params(target, database)
        # A connect_timeout in the target's URI wins over the setting.
        params.setdefault("connect_timeout", self.settings.connect_timeout_seconds)
        where = f"Target {target.name!r}"
        try:
            conn = psycopg.connect(**params, autocommit=autocommit)
        except psycopg.Error as exc:
            raise classify_connection_error(str(exc), where) from None
        with conn:
            try:
                yield conn
            except psycopg.Error as exc:
                raise classify_query_error(exc, where) from None

    @staticmethod
    def _database_of(params: dict[str, Any]) -> str:
        return str(params.get("dbname") or params.get("user") or os.environ.get("USER", "postgres"))

    # ------------------------------------------------------------------ hooks

    def probe(self, target: Target) -> ServerInfo:
        started = time.monotonic()
        with self._connect(target) as conn:
            latency_ms = round((time.monotonic() - started) * 1000, 1)
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int, current_database()"
            ).fetchone()
            tables = conn.execute(_TABLES_SQL).fetchone()[0]
        version, version_num, database = row
        return ServerInfo(
            version=str(version).split()[0],
            latency_ms=latency_ms,
            details={"server_version_num": version_num, "database": database, "tables": tables},
        )

    def _check_tool_version(self, server: ServerInfo, env: Mapping[str, str]) -> str:
        tool = self.tool_version(env)
        tool_major = int(tool.split(".")[0]) if tool[:1].isdigit() else 0
        server_major = int(server.details["server_version_num"]) // 10000
        if tool_major and tool_major < server_major:
            raise ToolVersionMismatch(
                f"pg_dump {tool} is older than the server (PostgreSQL {server.version}); install "
                f"postgresql-client-{server_major} or newer on the worker, or point FLEXDB_PG_BIN_DIR at it."
            )
        return tool

    def dump(
        self,
        target: Target,
        sink: BinaryIO,
        progress: ProgressTracker,
        server: ServerInfo,
        options: Mapping[str, Any],
    ) -> DumpResult:
        env = self._tool_env(target)
        tool_version = self._check_tool_version(server, env)
        progress.set_total(server.details.get("tables") or None)
        details: dict[str, Any] = {"tables": server.details.get("tables")}
        # --compress=0: the workflow's codec compresses the stream, on more than one core
        argv = [self._tool("pg_dump"), "--compress=0", "--no-password", "--verbose"]
        with tempfile.NamedTemporaryFile(prefix="pg_dump-", suffix=".log") as stderr:
            # stderr goes to a file: a pipe nobody reads fills up and deadlocks the dump.
            watcher = _TableCounter(Path(stderr.name))
            if options.get("format") == DIRECTORY:
                jobs = min(int(options.get("jobs") or 1), self.settings.pg_max_jobs)
                details.update(format=DIRECTORY, jobs=jobs)
                with self._scratch("pg_dump-") as scratch:
                    folder = scratch / _DUMP_FOLDER
                    argv += ["--format=directory", f"--jobs={jobs}", f"--file={folder}"]
                    with _running(argv, env, progress, stdout=subprocess.DEVNULL, stderr=stderr) as proc:
                        returncode = self._wait(proc, lambda: watcher.update(progress))
                    if returncode != 0:
                        raise self._dump_error(Path(stderr.name), target)
                    watcher.update(progress, force=True)
                    self._write_tar(folder, sink)
            else:
                argv.append("--format=custom")
                with _running(argv, env, progress, stdout=subprocess.PIPE, stderr=stderr) as proc:
                    try:
                        for chunk in iter_chunks(proc.stdout, self.settings.stream_chunk_bytes):
                            sink.write(chunk)
                            watcher.update(progress)
                    finally:
                        proc.stdout.close()
                    returncode = proc.wait()
                if returncode != 0:
                    raise self._dump_error(Path(stderr.name), target)
                watcher.update(progress, force=True)
        return DumpResult(
            database=server.details.get("database"),
            server_version=server.version,
            tool_version=tool_version,
            details=details,
        )

    def _wait(self, proc: subprocess.Popen[bytes], tick: Callable[[], None]) -> int:
        """Wait for a tool that writes no stream, calling ``tick`` (progress, which raises when
        the job is stopped) at every progress interval."""
        interval = self.settings.progress_interval_seconds or 0.5
        while True:
            try:
                return proc.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                tick()

    @contextmanager
    def _scratch(self, prefix: str) -> Iterator[Path]:
        """A fresh folder under FLEXDB_SCRATCH_DIR, removed when the block ends however it ends.
        Folders a killed worker left behind (older than any job may run) are removed first."""
        root = self.settings.scratch_dir
        root.mkdir(parents=True, exist_ok=True)
        stale_before = time.time() - self.settings.task_max_seconds
        for entry in root.glob("pg_*"):
            try:
                if entry.is_dir() and entry.stat().st_mtime < stale_before:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue  # another worker removed it meanwhile
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _write_tar(self, folder: Path, sink: BinaryIO) -> None:
        """The dump folder as one tar stream: its files under ``dump/``, nothing else."""
        with tarfile.open(fileobj=sink, mode="w|", bufsize=self.settings.stream_chunk_bytes, format=tarfile.PAX_FORMAT) as tar:
            tar.add(folder, arcname=_DUMP_FOLDER)

    def _extract_tar(self, archive: BinaryIO, scratch: Path) -> Path:
        """Unpack a directory-format archive into ``scratch``: regular files and folders under
        ``dump/`` only, and tarfile's "data" filter refuses any path that would leave it."""
        try:
            with tarfile.open(fileobj=archive, mode="r|", bufsize=self.settings.stream_chunk_bytes) as tar:
                for member in tar:
                    inside = member.name == _DUMP_FOLDER or member.name.startswith(_DUMP_FOLDER + "/")
                    if not inside or not (member.isfile() or member.isdir()):
                        raise ArchiveCorrupt(
                            f"The directory-format archive holds {member.name!r}, which is not a file of a pg_dump folder."
                        )
                    tar.extract(member, scratch, filter="data")
        except tarfile.TarError as exc:
            raise ArchiveCorrupt(f"The directory-format archive cannot be unpacked: {exc}") from None
        folder = scratch / _DUMP_FOLDER
        if not (folder / "toc.dat").is_file():
            raise ArchiveCorrupt("The directory-format archive holds no pg_dump folder (dump/toc.dat is missing).")
        return folder

    def _dump_error(self, stderr: Path, target: Target) -> FlexDBError:
        tail = _stderr_tail(stderr)
        lowered = tail.lower()
        if "server version mismatch" in lowered:
            return ToolVersionMismatch(f"pg_dump is older than the server: {tail}")
        if "connection to server" in lowered or "authentication" in lowered:
            return classify_connection_error(tail, f"Target {target.name!r}")
        return DumpFailed(f"pg_dump failed for target {target.name!r}: {tail or 'no error output'}")

    def prepare_restore(self, target: Target, manifest: BackupManifest, request: RestoreRequest) -> list[str]:
        own = self._database_of(self._connection_params(target))
        database = request.database or own
        if not DATABASE_NAME_PATTERN.match(database):
            raise ValidationFailed(
                f"Database name {database!r} is not allowed: use {DATABASE_NAME_RULE}."
            )
        created: list[str] = []
        if database != own:
            with self._connect(target, autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
                if not exists:
                    # CREATE DATABASE cannot run in a transaction; the name is quoted as an identifier.
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    log.info("restore.database_created", database=database)
                    created.append(database)
        if created:
            return created  # new and empty: nothing to check
        if not request.drop:
            with self._connect(target, database) as conn:
                count = conn.execute(_USER_OBJECTS_SQL).fetchone()[0]
            if count:
                raise TargetNotEmpty(
                    f"Database {database!r} on target {target.name!r} already holds {count} tables, views or "
                    'sequences. Restore with "drop": true to replace them, or into another "database".'
                )
        return created

    def drop_database(self, target: Target, database: str) -> None:
        # pg_restore has exited by now; a plain DROP (no FORCE) never cuts off someone else's session.
        with self._connect(target, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))

    def load(
        self,
        target: Target,
        archive: BinaryIO,
        manifest: BackupManifest,
        request: RestoreRequest,
        progress: ProgressTracker,
    ) -> dict[str, Any]:
        database = request.database or self._database_of(self._connection_params(target))
        env = self._tool_env(target, database)
        argv = [self._tool("pg_restore"), "--no-owner", "--exit-on-error", "--no-password"]
        if request.drop:
            argv += ["--clean", "--if-exists"]
        argv.append(f"--dbname={database}")
        details: dict[str, Any] = {"database": database, "dropped_existing": request.drop}
        with tempfile.NamedTemporaryFile(prefix="pg_restore-", suffix=".log") as stderr:
            if manifest.format == DIRECTORY_ARCHIVE_FORMAT:
                jobs = min(int((manifest.details or {}).get("jobs") or 1), self.settings.pg_max_jobs)
                details["jobs"] = jobs
                # pg_restore cannot run parallel jobs inside one transaction
                argv.append("--single-transaction" if jobs == 1 else f"--jobs={jobs}")
                with self._scratch("pg_restore-") as scratch:
                    argv.append(str(self._extract_tar(archive, scratch)))
                    with _running(argv, env, progress, stderr=stderr) as proc:
                        returncode = self._wait(proc, progress.raise_if_cancelled)
            else:
                jobs = 1
                argv.append("--single-transaction")
                with _running(argv, env, progress, stdin=subprocess.PIPE, stderr=stderr) as proc:
                    try:
                        # Killing pg_restore mid-way aborts its single transaction: nothing is kept.
                        for chunk in iter_chunks(archive, self.settings.stream_chunk_bytes):
                            proc.stdin.write(chunk)
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass  # pg_restore stopped early: its stderr says why
                    returncode = proc.wait()
            if returncode != 0:
                tail = _stderr_tail(Path(stderr.name)) or "no error output"
                if jobs == 1:
                    raise RestoreFailed(
                        f"pg_restore failed; the restore was rolled back and database {database!r} is as it was: {tail}"
                    )
                raise RestoreFailed(
                    f"pg_restore failed; a parallel restore is not one transaction, so database {database!r} may "
                    f"hold part of the backup (restore again with \"drop\": true): {tail}"
                )
        return details

    # ------------------------------------------------------------------ import

    def inspect_import(self, open_archive: Callable[[], BinaryIO]) -> ImportedArchive:
        """A ``pg_dump -Fc`` file: the magic bytes, then ``pg_restore --list`` for what the
        archive says of itself, then a full ``pg_restore`` into nowhere, which reads and
        decompresses every block (a truncated or damaged file fails here)."""
        with open_archive() as archive:
            head = archive.read(len(PG_CUSTOM_MAGIC))
        if head != PG_CUSTOM_MAGIC:
            raise ArchiveCorrupt(
                "This is not a PostgreSQL custom-format archive: it does not start with PGDMP. Import the file "
                "`pg_dump --format=custom` wrote (plain SQL, tar and directory formats are not taken)."
            )
        listing = self._pg_restore_check(open_archive, ["--list"], "read the archive's table of contents")
        self._pg_restore_check(open_archive, ["--file=-"], "read the archive's data")
        header = dict(_LISTING_FIELD.findall(listing))
        if header.get("Format", "CUSTOM").strip() != "CUSTOM":
            raise ArchiveCorrupt(f"The archive's format is {header['Format'].strip()}, not CUSTOM (pg_dump -Fc).")
        entries = [line for line in listing.splitlines() if line and not line.startswith(";")]
        return ImportedArchive(
            archive_format=self.archive_format,
            database=(header.get("dbname") or "").strip() or None,
            server_version=_version_of(header.get("Dumped from database version")),
            tool_version=_version_of(header.get("Dumped by pg_dump version")),
            details={
                "tables": sum(1 for line in entries if " TABLE DATA " in line),
                "toc_entries": len(entries),
                "dump_version": (header.get("Dump Version") or "").strip() or None,
            },
        )

    def _pg_restore_check(self, open_archive: Callable[[], BinaryIO], args: list[str], doing: str) -> str:
        """Run pg_restore (no database: it writes a script) on the archive; its output, or
        ArchiveCorrupt with pg_restore's own words."""
        try:
            tool = self._tool("pg_restore")
        except DumpFailed:
            raise EngineUnavailable(
                "pg_restore checks an imported PostgreSQL archive and is not installed here (where the API runs); "
                "install postgresql-client or set FLEXDB_PG_BIN_DIR."
            ) from None
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        keep_output = args == ["--list"]
        with (
            tempfile.NamedTemporaryFile(prefix="pg_restore-", suffix=".log") as stderr,
            tempfile.TemporaryFile(prefix="pg_restore-out-") as stdout,
        ):
            proc = subprocess.Popen(
                [tool, *args], stdin=subprocess.PIPE, stdout=stdout if keep_output else subprocess.DEVNULL, stderr=stderr, env=env
            )
            try:
                with open_archive() as archive:
                    for chunk in iter_chunks(archive, self.settings.stream_chunk_bytes):
                        proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: --list needs only the start, or it failed (its exit says)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            returncode = proc.wait()
            if returncode != 0:
                tail = _stderr_tail(Path(stderr.name))
                raise ArchiveCorrupt(f"pg_restore could not {doing}: {tail or 'no error output'}")
            stdout.seek(0)
            return stdout.read().decode(errors="replace")


PG_CUSTOM_MAGIC = b"PGDMP"
DIRECTORY = "directory"
_FORMATS = ("custom", DIRECTORY)
_BACKUP_OPTIONS = ("format", "jobs")
# A pg_dump -Fd folder carried as one tar stream (its files under dump/).
DIRECTORY_ARCHIVE_FORMAT = "pg_dump-directory-tar"
_DUMP_FOLDER = "dump"


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc (Linux); elsewhere ``pid`` alone."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        # the command name may hold spaces and parentheses: the fields follow its last ")"
        parent = int(text[text.rfind(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


@contextmanager
def _running(argv: list[str], env: Mapping[str, str], progress: ProgressTracker, **streams: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A pg_dump or pg_restore: a cancel, a stop of the job or an error in the block kills it
    with the parallel workers (-j) it forked. It stays in the worker's process group, so
    whatever stops the whole worker stops it too."""
    proc = subprocess.Popen(argv, env=env, **streams)

    def kill() -> None:
        if proc.poll() is not None:
            return  # ended (and reaped): its pid may be another process's by now
        for pid in _process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # gone already

    try:
        # a tool can wait silently on a table lock; a cancel must still stop it
        with progress.stop_hook(kill):
            yield proc
    except BaseException:
        kill()
        proc.wait()
        raise
# `pg_restore --list` starts with ";     dbname: orders" and the like.
_LISTING_FIELD = re.compile(r"^;\s+([A-Za-z][A-Za-z ]*?):\s*(.*)$", re.MULTILINE)


def _version_of(text: str | None) -> str | None:
    match = re.search(r"(\d+(?:\.\d+)*)", text or "")
    return match.group(1) if match else None


class _TableCounter:
    """Counts tables pg_dump reports in its --verbose log, for progress percent."""

    _MARK = b"dumping contents of table"

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._tail = b""
        self.count = 0
        self._last_check = 0.0

    def update(self, progress: ProgressTracker, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < 0.5:
            return
        self._last_check = now
        data = self._tail + self._file.read()
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        found = data[:cut].count(self._MARK)
        if found:
            self.count += found
            progress.add_items(found)
        if force:
            self._file.close()
