"""The ``flexdb`` commands. Each one parses its arguments, calls one method of the API client,
and prints the answer: exactly the API's JSON with ``--json``, lines and tables otherwise.

Exit codes (``errors.ExitCode``): 0 success, 1 the job failed or was cancelled or the API
refused the request, 2 a usage error, 3 the API is unreachable, refuses the token or cannot
take work now, 130 Ctrl-C while following a job (which goes on).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

import click
from click.shell_completion import CompletionItem

from flexdb_cli import __version__
from flexdb_cli.client import Answer, ArchiveDownload, FlexDBClient
from flexdb_cli.errors import CliError, DownloadCorrupt, JobUnsuccessful
from flexdb_cli.output import (
    TransferProgress,
    human_size,
    progress_display,
    progress_text,
    record,
    short_time,
    table,
)
from flexdb_cli.watch import JobWatcher

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "FLEXDB_URL"
# Read from the environment only: a token on the command line is visible to everyone in `ps`.
TOKEN_ENV = "FLEXDB_API_TOKEN"
DOWNLOAD_CHUNK_BYTES = 2**20


@dataclass
class Session:
    """What every command shares: where the API is, and (made on first use) its client."""

    url: str
    timeout: float
    _client: FlexDBClient | None = field(default=None, repr=False)

    @property
    def client(self) -> FlexDBClient:
        if self._client is None:
            self._client = FlexDBClient(self.url, os.environ.get(TOKEN_ENV) or None, self.timeout)
        return self._client


class FlexDBGroup(click.Group):
    """Reports a ``CliError`` from any command as one line on stderr, with its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            click.echo(f"flexdb: {exc.message}", err=True)
            ctx.exit(exc.exit_code)


class JsonObject(click.ParamType):
    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            self.fail(f"not JSON: {exc}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail('must be a JSON object, e.g. \'{"collections": ["orders"]}\'', param, ctx)
        return parsed


# ------------------------------------------------------------------------------ shared pieces

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON answer as it is (for scripts)."
)
wait_option = click.option(
    "--wait", is_flag=True, help="Follow the job until it ends, with live progress; exit 1 if it fails."
)
options_option = click.option(
    "--options",
    type=JsonObject(),
    default=None,
    help='Engine options as a JSON object, e.g. \'{"collections": ["orders"]}\'.',
)


def _session(ctx: click.Context) -> Session:
    return ctx.find_object(Session)


def _completion(names: Callable[[FlexDBClient], list[str]]) -> Callable[..., list[CompletionItem]]:
    """Shell completion from the API (target names, backup ids); nothing when it does not answer."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        params = ctx.find_root().params
        client = FlexDBClient(params.get("url") or os.environ.get(URL_ENV) or DEFAULT_URL, os.environ.get(TOKEN_ENV), 3)
        try:
            found = names(client)
        except (CliError, KeyError, TypeError):  # completion must never break the user's shell
            return []
        return [CompletionItem(name) for name in found if name.startswith(incomplete)]

    return complete


complete_targets = _completion(lambda client: [t["name"] for t in client.targets().data["items"]])
complete_backups = _completion(lambda client: [b["id"] for b in client.backups().data["items"]])


def emit(answer: Answer, as_json: bool, human: Callable[[Any], str | None]) -> None:
    """The API's JSON as it is, or what ``human`` makes of it."""
    if as_json:
        if answer.text:
            click.echo(answer.text.rstrip("\n"))
        return
    text = human(answer.data)
    if text:
        click.echo(text)


def _more(page: dict) -> None:
    """A page that is not the last says how to get the next one (on stderr: stdout is the table)."""
    if page.get("next"):
        cursor = parse_qs(urlsplit(page["next"]).query).get("cursor", [""])[0]
        click.echo(f"more: repeat with --cursor {cursor}", err=True)


def job_line(job: dict) -> str:
    text = f"{job.get('kind')} job {job.get('id')} {job.get('status')}"
    if not job.get("done"):
        progress = progress_text(job, with_status=False)
        return f"{text}{f' ({progress})' if progress else ''}; follow it with: flexdb jobs wait {job.get('id')}"
    if job.get("backup_id"):
        text += f": backup {job['backup_id']}"
    if job.get("target"):
        text += f", target {job['target']}"
    if job.get("duration_seconds") is not None:
        text += f" ({job['duration_seconds']:.1f} s)"
    return text


def conclude_job(ctx: click.Context, answer: Answer, wait: bool, as_json: bool) -> None:
    """Print a job (followed to its end with ``--wait``); a failed or cancelled one exits 1."""
    if wait:
        job = answer.data
        stderr = click.get_text_stream("stderr")
        # With --json the progress shows only to a person at a terminal; a script gets stdout alone.
        display = (
            None if as_json and not stderr.isatty() else progress_display(f"{job['kind']} {job['id'][:8]}", stderr)
        )
        answer = JobWatcher(_session(ctx).client).follow(answer, display)
    emit(answer, as_json, job_line)
    job = answer.data
    if job.get("done") and job.get("status") != "succeeded":
        raise JobUnsuccessful(job)


# ------------------------------------------------------------------------------ the root


@click.group(cls=FlexDBGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar=URL_ENV,
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    help="The FlexDB service's base URL. The API token comes from FLEXDB_API_TOKEN.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the API to connect and to answer (a --wait long-poll adds its own hold).",
)
@click.version_option(__version__, prog_name="flexdb")
@click.pass_context
def cli(ctx: click.Context, url: str, timeout: float) -> None:
    """Back up and restore PostgreSQL and MongoDB through the FlexDB API.

    Shell completion: eval "$(_FLEXDB_COMPLETE=bash_source flexdb)" (zsh_source, fish_source).
    """
    ctx.obj = Session(url, timeout)


@cli.command()
@json_option
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """The API, Redis, workers, storage and every target; exit 1 when any part is down."""
    answer = _session(ctx).client.health()
    emit(answer, as_json, _health_text)
    if answer.data.get("status") != "ok":
        ctx.exit(1)


def _health_text(body: dict) -> str:
    rows = []
    for name, status in body.get("components", {}).items():
        if name == "targets":
            rows += [(f"target {target}", _ok(s), _health_detail(s)) for target, s in status.items()]
        else:
            rows.append((name, _ok(status), _health_detail(status)))
    return f"status: {body.get('status')}\n" + table(("COMPONENT", "OK", "DETAILS"), rows)


def _ok(status: dict) -> str:
    return "ok" if status.get("ok") else "DOWN"


def _health_detail(status: dict) -> str:
    if not status.get("ok"):
        return ": ".join(str(status[key]) for key in ("code", "error") if status.get(key))
    parts = [status.get("server_version"), status.get("location"), ", ".join(status.get("alive") or [])]
    if status.get("latency_ms") is not None:
        parts.append(f"{status['latency_ms']} ms")
    return ", ".join(str(part) for part in parts if part)


# ------------------------------------------------------------------------------ targets


@cli.group()
def targets() -> None:
    """The databases the service is configured to back up."""


@targets.command("list")
@json_option
@click.pass_context
def targets_list(ctx: click.Context, as_json: bool) -> None:
    """The configured targets (URIs with the password masked)."""
    emit(
        _session(ctx).client.targets(),
        as_json,
        lambda body: table(
            ("NAME", "ENGINE", "AVAILABLE", "URI"),
            [(t["name"], t["engine"], t.get("engine_available"), t.get("uri")) for t in body["items"]],
        ),
    )


@targets.command("check")
@click.argument("name", shell_complete=complete_targets)
@json_option
@click.pass_context
def targets_check(ctx: click.Context, name: str, as_json: bool) -> None:
    """Connect to target NAME: server version and latency."""
    emit(
        _session(ctx).client.check_target(name),
        as_json,
        lambda info: f"{name}: {info['engine']} {info['server_version']} answers ({info['latency_ms']} ms)",
    )


# ------------------------------------------------------------------------------ backup, restore


@cli.command()
@click.argument("target", shell_complete=complete_targets)
@options_option
@wait_option
@json_option
@click.pass_context
def backup(ctx: click.Context, target: str, options: dict | None, wait: bool, as_json: bool) -> None:
    """Back up TARGET now; prints the job (with --wait: the backup id when it is done)."""
    conclude_job(ctx, _session(ctx).client.submit_backup(target, options or {}), wait, as_json)


@cli.command()
@click.argument("backup_id", shell_complete=complete_backups)
@click.option("--target", shell_complete=complete_targets, help="Restore into this target (default: the backup's own).")
@click.option(
    "--into", "database", metavar="DATABASE", help="Another database on that server (PostgreSQL: created if missing)."
)
@click.option("--drop", is_flag=True, help="Replace what the destination holds (default: refuse a non-empty one).")
@click.option("--allow-system-database", is_flag=True, help="Allow restoring into postgres, admin, local or config.")
@options_option
@wait_option
@json_option
@click.pass_context
def restore(
    ctx: click.Context,
    backup_id: str,
    target: str | None,
    database: str | None,
    drop: bool,
    allow_system_database: bool,
    options: dict | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Restore backup BACKUP_ID; the archive is verified before a byte reaches the database."""
    answer = _session(ctx).client.submit_restore(
        backup_id,
        target=target,
        database=database,
        drop=drop or None,
        allow_system_database=allow_system_database or None,
        options=options,
    )
    conclude_job(ctx, answer, wait, as_json)


# ------------------------------------------------------------------------------ jobs


@cli.group()
def jobs() -> None:
    """Backups, restores and retention passes: list, show, follow, cancel."""


@jobs.command("list")
@click.option("--status", help="queued, running, succeeded, failed or cancelled.")
@click.option("--kind", help="backup, restore or retention.")
@click.option("--target", shell_complete=complete_targets)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (the API caps it).")
@click.option("--cursor", help="The next page, as the previous page said.")
@json_option
@click.pass_context
def jobs_list(ctx: click.Context, as_json: bool, **filters: Any) -> None:
    """Jobs, newest first."""
    answer = _session(ctx).client.jobs(**filters)
    emit(
        answer,
        as_json,
        lambda page: table(
            ("ID", "KIND", "TARGET", "CREATED", "STATUS", "DETAILS"),
            [
                (
                    j["id"],
                    j["kind"],
                    j.get("target"),
                    short_time(j.get("created_at")),
                    j["status"],
                    (j.get("error") or {}).get("code") or j.get("backup_id") or progress_text(j, with_status=False),
                )
                for j in page["items"]
            ],
        ),
    )
    if not as_json:
        _more(answer.data)


@jobs.command("show")
@click.argument("job_id")
@json_option
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job, every field."""
    emit(_session(ctx).client.job(job_id), as_json, record)


@jobs.command("wait")
@click.argument("job_id")
@json_option
@click.pass_context
def jobs_wait(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Follow a job until it ends; exit 1 if it failed or was cancelled."""
    conclude_job(ctx, _session(ctx).client.job(job_id), True, as_json)


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a job: a queued one never starts, a running one stops and leaves nothing behind."""
    emit(_session(ctx).client.cancel_job(job_id), as_json, _cancel_text)


def _cancel_text(job: dict) -> str:
    if job.get("done"):
        return f"job {job['id']} {job['status']}"
    return f"job {job['id']} is stopping (cancel requested); follow it with: flexdb jobs wait {job['id']}"


# ------------------------------------------------------------------------------ backups


@cli.group()
def backups() -> None:
    """Complete backups: list, show, download, import, delete, pin."""


@backups.command("list")
@click.option("--target", shell_complete=complete_targets)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (the API caps it).")
@click.option("--cursor", help="The next page, as the previous page said.")
@json_option
@click.pass_context
def backups_list(ctx: click.Context, as_json: bool, **filters: Any) -> None:
    """Complete, checksummed backups, newest first."""
    answer = _session(ctx).client.backups(**filters)
    emit(
        answer,
        as_json,
        lambda page: table(
            ("ID", "TARGET", "ENGINE", "SIZE", "CREATED", "PINNED", "SOURCE"),
            [_backup_row(b) for b in page["items"]],
        ),
    )
    if not as_json:
        _more(answer.data)


def _backup_row(b: dict) -> tuple:
    created = short_time(b.get("created_at"))
    return b["id"], b["target"], b["engine"], human_size(b.get("size_bytes")), created, b.get("pinned"), b.get("source")


@backups.command("show")
@click.argument("backup_id", shell_complete=complete_backups)
@json_option
@click.pass_context
def backups_show(ctx: click.Context, backup_id: str, as_json: bool) -> None:
    """One backup's manifest."""
    emit(_session(ctx).client.backup(backup_id), as_json, record)


@backups.command("download")
@click.argument("backup_id", shell_complete=complete_backups)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="The file to write (default: the name the API gives, here); - writes to stdout.",
)
@json_option
@click.pass_context
def backups_download(ctx: click.Context, backup_id: str, output: Path | None, as_json: bool) -> None:
    """Download a backup's archive, as pg_restore or mongorestore read it; its SHA-256 is checked."""
    client = _session(ctx).client
    to_stdout = str(output) == "-"
    with client.download_archive(backup_id) as archive:
        stderr = click.get_text_stream("stderr")
        display = progress_display(f"backup {backup_id}", stderr) if not as_json or stderr.isatty() else None
        progress = TransferProgress(display, "downloading", archive.length)
        try:
            if to_stdout:
                sha256 = _copy_verified(archive, click.get_binary_stream("stdout"), progress)
            else:
                path = output or _safe_name(archive.filename, f"{backup_id}.archive")
                # Written under another name first: a broken or mismatched download leaves no file.
                partial = path.with_name(path.name + ".part")
                try:
                    with partial.open("wb") as sink:
                        sha256 = _copy_verified(archive, sink, progress)
                    partial.replace(path)
                finally:
                    partial.unlink(missing_ok=True)
        except BaseException:
            progress.finish("failed")
            raise
        progress.finish("succeeded")
    if as_json:
        emit(client.backup(backup_id), True, record)
    else:
        where = "-" if to_stdout else str(path)
        click.echo(f"{where}: {human_size(progress.done)}, sha256 {sha256} verified", err=to_stdout)


def _safe_name(announced: str | None, fallback: str) -> Path:
    """The file name the API announced, as a name in the current folder and nothing else."""
    name = Path(announced or "").name
    return Path(name if name not in ("", ".", "..") else fallback)


def _copy_verified(archive: ArchiveDownload, sink: BinaryIO, progress: TransferProgress) -> str:
    digest = hashlib.sha256()
    for chunk in archive.chunks(DOWNLOAD_CHUNK_BYTES):
        sink.write(chunk)
        digest.update(chunk)
        progress.advance(len(chunk))
    sink.flush()
    if archive.sha256 and digest.hexdigest() != archive.sha256:
        raise DownloadCorrupt(
            f"the archive received has SHA-256 {digest.hexdigest()}; the API announced {archive.sha256}"
        )
    return digest.hexdigest()


@backups.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", required=True, shell_complete=complete_targets, help="The target the archive belongs to.")
@json_option
@click.pass_context
def backups_import(ctx: click.Context, archive: Path, target: str, as_json: bool) -> None:
    """Import ARCHIVE (pg_dump -Fc, or mongodump --archive, plain, gzip or zstd) as a backup of TARGET."""
    with archive.open("rb") as stream:
        answer = _session(ctx).client.import_archive(target, stream)
    emit(
        answer, as_json, lambda b: f"imported as backup {b['id']} of {b['target']} ({human_size(b.get('size_bytes'))})"
    )


@backups.command("delete")
@click.argument("backup_id", shell_complete=complete_backups)
@json_option
@click.pass_context
def backups_delete(ctx: click.Context, backup_id: str, as_json: bool) -> None:
    """Delete a backup (a pinned one must be unpinned first)."""
    emit(_session(ctx).client.delete_backup(backup_id), as_json, lambda _: f"deleted backup {backup_id}")


@backups.command("pin")
@click.argument("backup_id", shell_complete=complete_backups)
@click.option("--unpin", is_flag=True, help="Remove the pin instead.")
@json_option
@click.pass_context
def backups_pin(ctx: click.Context, backup_id: str, unpin: bool, as_json: bool) -> None:
    """Pin a backup: retention never deletes it (--unpin undoes it)."""
    emit(
        _session(ctx).client.set_pinned(backup_id, not unpin),
        as_json,
        lambda b: f"backup {b['id']} {'pinned' if b.get('pinned') else 'unpinned'}",
    )


# ------------------------------------------------------------------------------ schedules


@cli.group()
def schedules() -> None:
    """Scheduled backups with retention: list, show, create, enable, disable, delete, run."""


def _when(schedule: dict) -> str:
    if schedule.get("cron"):
        return f"{schedule['cron']} ({schedule.get('timezone')})"
    return f"every {schedule.get('interval_seconds')} s"


def _schedule_line(schedule: dict) -> str:
    state = "enabled" if schedule.get("enabled") else "disabled"
    return (
        f"schedule {schedule['id']} for {schedule['target']}: {_when(schedule)}, {state}, "
        f"next run {short_time(schedule.get('next_run_at'))}"
    )


def _schedule_row(s: dict) -> tuple:
    next_run = short_time(s.get("next_run_at"))
    return s["id"], s["target"], _when(s), s.get("enabled"), next_run, s.get("last_status"), s.get("source")


@schedules.command("list")
@click.option("--target", shell_complete=complete_targets)
@json_option
@click.pass_context
def schedules_list(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """Schedules, with their next and last run."""
    emit(
        _session(ctx).client.schedules(target=target),
        as_json,
        lambda body: table(
            ("ID", "TARGET", "WHEN", "ENABLED", "NEXT RUN", "LAST", "SOURCE"),
            [_schedule_row(s) for s in body["items"]],
        ),
    )


@schedules.command("show")
@click.argument("schedule_id")
@json_option
@click.pass_context
def schedules_show(ctx: click.Context, schedule_id: str, as_json: bool) -> None:
    """One schedule, every field."""
    emit(_session(ctx).client.schedule(schedule_id), as_json, record)


_RETENTION_RULES = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "max_age_days", "min_keep")


@schedules.command("create")
@click.argument("target", shell_complete=complete_targets)
@click.option("--cron", help="5 fields: minute hour day-of-month month day-of-week, e.g. '15 2 * * *'.")
@click.option("--timezone", help="IANA name the cron runs in (default UTC).")
@click.option(
    "--interval", "interval_seconds", type=click.IntRange(min=1), help="Instead of --cron: every this many seconds."
)
@click.option("--disabled", is_flag=True, help="Create it switched off.")
@options_option
@click.option("--keep-last", type=click.IntRange(min=0), help="Retention: keep this many newest backups.")
@click.option("--keep-daily", type=click.IntRange(min=0), help="Retention: the newest backup of this many days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), help="Retention: the newest backup of this many weeks.")
@click.option("--keep-monthly", type=click.IntRange(min=0), help="Retention: the newest backup of this many months.")
@click.option("--max-age-days", type=click.IntRange(min=0), help="Retention: delete backups older than this.")
@click.option("--min-keep", type=click.IntRange(min=1), help="Retention: always keep this many newest (default 1).")
@click.option("--include-manual", is_flag=True, help="Retention also governs backups not made by this schedule.")
@json_option
@click.pass_context
def schedules_create(
    ctx: click.Context,
    target: str,
    cron: str | None,
    timezone: str | None,
    interval_seconds: int | None,
    disabled: bool,
    options: dict | None,
    include_manual: bool,
    as_json: bool,
    **rules: int | None,
) -> None:
    """Back up TARGET on a cron (in a time zone) or every --interval seconds, with a retention policy."""
    if (cron is None) == (interval_seconds is None):
        raise click.UsageError("give exactly one of --cron and --interval")
    if timezone and not cron:
        raise click.UsageError("--timezone goes with --cron")
    body: dict[str, Any] = {"target": target, "enabled": not disabled}
    body.update(
        {
            k: v
            for k, v in {
                "cron": cron,
                "timezone": timezone,
                "interval_seconds": interval_seconds,
                "options": options,
            }.items()
            if v is not None
        }
    )
    retention = {rule: rules[rule] for rule in _RETENTION_RULES if rules.get(rule) is not None}
    if include_manual:
        retention["include_manual"] = True
    if retention:
        body["retention"] = retention
    emit(_session(ctx).client.create_schedule(body), as_json, _schedule_line)


def _switch(enabled: bool) -> Callable[..., None]:
    @click.argument("schedule_id")
    @json_option
    @click.pass_context
    def switch(ctx: click.Context, schedule_id: str, as_json: bool) -> None:
        emit(_session(ctx).client.update_schedule(schedule_id, {"enabled": enabled}), as_json, _schedule_line)

    return switch


schedules.command("enable", help="Switch a schedule on.")(_switch(True))
schedules.command("disable", help="Switch a schedule off (it stays, with its retention).")(_switch(False))


@schedules.command("delete")
@click.argument("schedule_id")
@json_option
@click.pass_context
def schedules_delete(ctx: click.Context, schedule_id: str, as_json: bool) -> None:
    """Delete a schedule (its backups stay)."""
    emit(_session(ctx).client.delete_schedule(schedule_id), as_json, lambda _: f"deleted schedule {schedule_id}")


@schedules.command("run")
@click.argument("schedule_id")
@wait_option
@json_option
@click.pass_context
def schedules_run(ctx: click.Context, schedule_id: str, wait: bool, as_json: bool) -> None:
    """Run the schedule's backup now."""
    conclude_job(ctx, _session(ctx).client.run_schedule(schedule_id), wait, as_json)


def main() -> None:
    cli(prog_name="flexdb")
