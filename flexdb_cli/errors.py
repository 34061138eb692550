"""What can go wrong for the command line, each with the exit code a script can test."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the job failed or was cancelled, or the API refused the request
    USAGE = 2  # click's own code for a usage error
    UNAVAILABLE = 3  # no answer from the API, no access to it, or it cannot take work now
    INTERRUPTED = 130  # Ctrl-C: the shell's 128 + SIGINT


class CliError(Exception):
    """An error the command reports in one line on stderr before it exits with ``exit_code``."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # One line whatever the server wrote, so a log or a terminal shows it whole.
        self.message = " ".join(message.split())


class ApiUnreachable(CliError):
    """No answer, or an answer that is not the FlexDB API's (a wrong ``--url``)."""

    exit_code = ExitCode.UNAVAILABLE


class ApiProblem(CliError):
    """The API answered with an RFC 9457 problem (``application/problem+json``)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("code") or "error")
        self.body = body
        detail = body.get("detail") or body.get("title") or ""
        super().__init__(f"{self.code} ({status}): {detail}")

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        # 401: no or a wrong FLEXDB_API_TOKEN; 503: the API's Redis is down, nothing was done.
        return ExitCode.UNAVAILABLE if self.status in (401, 503) else ExitCode.FAILED


class JobUnsuccessful(CliError):
    """A job ended ``failed`` or ``cancelled``."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        reason = f"{error.get('code')}: {error.get('message')}" if error.get("code") else "no reason given"
        super().__init__(f"job {job.get('id')} {job.get('status')}: {reason}")


class StoppedWaiting(CliError):
    """Ctrl-C while following a job: the job goes on, the command stops watching it."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, job_id: str) -> None:
        super().__init__(f"stopped waiting; job {job_id} keeps running. Follow it with: flexdb jobs wait {job_id}")


class DownloadCorrupt(CliError):
    """The bytes received do not have the checksum the API announced."""
