"""Following a job until it ends, with the API's long-poll (``GET /jobs/<id>?wait=N``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from flexdb_cli.client import Answer, FlexDBClient
from flexdb_cli.errors import CliError, ExitCode, StoppedWaiting
from flexdb_cli.output import ProgressDisplay

# With a progress display, the API holds each request for the display's refresh interval
# unless the status changes first. Without one only the end matters: each request is held as
# long as the API allows (it caps the wait at its FLEXDB_WAIT_MAX_SECONDS).
QUIET_WAIT_SECONDS = 30


class JobWatcher:
    """Asks for the job again and again, each request held by the API. When an answer comes
    back early without a change (the API had no free wait slot, and said when to come back
    in ``Retry-After``), it sleeps that long, so it never turns into a busy loop."""

    def __init__(self, client: FlexDBClient, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client, self._sleep = client, sleep

    def follow(self, answer: Answer, display: ProgressDisplay | None = None) -> Answer:
        """The job's last answer, once it is done. Ctrl-C stops the watching, not the job."""
        job = answer.data
        wait = display.refresh_seconds if display else QUIET_WAIT_SECONDS
        try:
            while not job.get("done"):
                if display:
                    display.update(job)
                started = time.monotonic()
                answer = self._client.job(job["id"], wait=wait)
                held = time.monotonic() - started
                changed = answer.data.get("status") != job.get("status")
                job = answer.data
                if not job.get("done") and not changed and held < wait / 2:
                    self._sleep(min(_retry_after(answer, wait), wait))
        except KeyboardInterrupt:
            if display:
                display.abandon()
            raise StoppedWaiting(job["id"]) from None
        except CliError as exc:
            if display:
                display.abandon()
            if exc.exit_code is ExitCode.UNAVAILABLE:  # the job goes on where the API is
                exc.message += f" (job {job['id']} goes on; follow it with: flexdb jobs wait {job['id']})"
            raise
        if display:
            display.finish(job)
        return answer


def _retry_after(answer: Answer, default: float) -> float:
    value = answer.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else default
