"""PostgreSQL: ``pg_dump -Fc`` streamed from stdout, ``pg_restore`` fed from the archive.

Credentials reach the tools through their environment only (never argv, which ``ps`` shows);
inherited ``PG*`` variables are dropped first so the target's own settings apply.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any, BinaryIO

from shared.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DumpFailed,
    FlexDBError,
    RestoreFailed,
    TargetNotEmpty,
    TargetUnreachable,
    ToolVersionMismatch,
    ValidationFailed,
)
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Target
from shared.domain.backups import DATABASE_NAME_PATTERN, DATABASE_NAME_RULE, BackupManifest
from shared.domain.engine import BackupEngine, DumpResult, RestoreRequest, ServerInfo
from shared.domain.progress import ProgressTracker
from shared.domain.streams import HashingWriter, iter_chunks
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


def classify_connection_error(message: str, where: str) -> FlexDBError:
    """Tell a wrong password from an unreachable server from a missing database."""
    text = redact(message.strip().splitlines()[-1] if message.strip() else message)
    lowered = message.lower()
    if "authentication failed" in lowered or "no password supplied" in lowered:
        return AuthenticationFailed(f"{where}: the server refused the credentials ({text}). Check the user and password in the target's URI.")
    if "does not exist" in lowered and "database" in lowered:
        return TargetUnreachable(f"{where}: {text}. Check the database name in the target's URI.")
    return TargetUnreachable(f"{where}: cannot connect ({text}). Check that the server is up and the host and port are right.")


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
    compression = "pg_dump-zlib"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if psycopg is None:
            return "the psycopg driver is not installed"
        return None

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

    def _connection_params(self, target: Target, database: str | None = None) -> dict[str, Any]:
        try:
            params = conninfo_to_dict(target.uri)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"Target {target.name!r}: the PostgreSQL URI is not usable ({redact(str(exc))}); "
                "write it as postgresql://user:password@host:5432/database."
            ) from None
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

    def _connect(self, target: Target, database: str | None = None, autocommit: bool = False):
        params = self._connection_params(target, database)
        try:
            return psycopg.connect(
                **params, connect_timeout=self.settings.connect_timeout_seconds, autocommit=autocommit
            )
        except psycopg.OperationalError as exc:
            raise classify_connection_error(str(exc), f"Target {target.name!r}") from None

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
        sink: HashingWriter,
        progress: ProgressTracker,
        server: ServerInfo,
        options: Mapping[str, Any],
    ) -> DumpResult:
        env = self._tool_env(target)
        tool_version = self._check_tool_version(server, env)
        progress.set_total(server.details.get("tables") or None)
        with tempfile.NamedTemporaryFile(prefix="pg_dump-", suffix=".log") as stderr:
            # stderr goes to a file: a pipe nobody reads fills up and deadlocks the dump.
            proc = subprocess.Popen(
                [self._tool("pg_dump"), "--format=custom", "--no-password", "--verbose"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
            watcher = _TableCounter(Path(stderr.name))
            try:
                # pg_dump can wait silently on a table lock; a cancel must still stop it.
                with progress.stop_hook(proc.kill):
                    for chunk in iter_chunks(proc.stdout, self.settings.stream_chunk_bytes):
                        sink.write(chunk)
                        watcher.update(progress)
                    returncode = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                proc.stdout.close()
            if returncode != 0:
                raise self._dump_error(Path(stderr.name), target)
            watcher.update(progress, force=True)
        return DumpResult(
            database=server.details.get("database"),
            server_version=server.version,
            tool_version=tool_version,
            details={"tables": server.details.get("tables")},
        )

    def _dump_error(self, stderr: Path, target: Target) -> FlexDBError:
        tail = _stderr_tail(stderr)
        lowered = tail.lower()
        if "server version mismatch" in lowered:
            return ToolVersionMismatch(f"pg_dump is older than the server: {tail}")
        if "authentication" in lowered or ("connection" in lowered and ("refused" in lowered or "timeout" in lowered)):
            return classify_connection_error(tail, f"Target {target.name!r}")
        return DumpFailed(f"pg_dump failed for target {target.name!r}: {tail or 'no error output'}")

    def prepare_restore(self, target: Target, manifest: BackupManifest, request: RestoreRequest) -> None:
        own = self._database_of(self._connection_params(target))
        database = request.database or own
        if not DATABASE_NAME_PATTERN.match(database):
            raise ValidationFailed(
                f"Database name {database!r} is not allowed: use {DATABASE_NAME_RULE}."
            )
        if database != own:
            with self._connect(target, autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
                if not exists:
                    # CREATE DATABASE cannot run in a transaction; the name is quoted as an identifier.
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    log.info("restore.database_created", database=database)
        if not request.drop:
            with self._connect(target, database) as conn:
                count = conn.execute(_USER_OBJECTS_SQL).fetchone()[0]
            if count:
                raise TargetNotEmpty(
                    f"Database {database!r} on target {target.name!r} already holds {count} tables, views or "
                    'sequences. Restore with "drop": true to replace them, or into another "database".'
                )

    def load(
        self,
        target: Target,
        archive: BinaryIO,
        manifest: BackupManifest,
        request: RestoreRequest,
        progress: ProgressTracker,
    ) -> dict[str, Any]:
        database = request.database or self._database_of(self._connection_params(target))
        argv = [self._tool("pg_restore"), "--no-owner", "--single-transaction", "--exit-on-error", "--no-password"]
        if request.drop:
            argv += ["--clean", "--if-exists"]
        argv.append(f"--dbname={database}")
        with tempfile.NamedTemporaryFile(prefix="pg_restore-", suffix=".log") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=stderr, env=self._tool_env(target, database))
            try:
                # Killing pg_restore mid-way aborts its single transaction: nothing is kept.
                with progress.stop_hook(proc.kill):
                    for chunk in iter_chunks(archive, self.settings.stream_chunk_bytes):
                        proc.stdin.write(chunk)
                        progress.add_bytes(len(chunk))
                    proc.stdin.close()
                    returncode = proc.wait()
            except BrokenPipeError:
                returncode = proc.wait()  # pg_restore stopped early: its stderr says why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if returncode != 0:
                tail = _stderr_tail(Path(stderr.name))
                raise RestoreFailed(
                    f"pg_restore failed; the restore was rolled back and database {database!r} is as it was: "
                    f"{tail or 'no error output'}"
                )
        return {"database": database, "dropped_existing": request.drop}


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
