"""Progress tracking handed to engines: cheap to call per chunk, reported at most every N s.

The tracker is also how a running job learns it must stop: cancelled by a user, handed back at
worker shutdown, or its target lease lost. A watcher thread asks ``should_stop`` every interval;
when it answers with a reason, the tracker runs the stop hooks engines registered (e.g. killing
``pg_dump``, which may sit blocked on a table lock and produce nothing) and the next report
raises that reason, so the workflow's clean-up runs (the partial archive is removed, a restore
transaction rolls back)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.core.errors import JobCancelled
from shared.domain.jobs import Progress


class ProgressTracker:
    def __init__(
        self,
        report: Callable[[Progress], None],
        interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], Exception | None] | None = None,
    ) -> None:
        self.progress = Progress()
        self._report = report
        self._interval = interval_seconds
        self._clock = clock
        self._last = float("-inf")
        self._should_stop = should_stop
        self._stop_hooks: list[Callable[[], None]] = []
        self._hooks_lock = threading.Lock()
        # engines may count from several threads; one of them reports when a report is due
        self._counts_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self.cancelled = threading.Event()
        self._stop_reason: Exception = JobCancelled("The job was cancelled on request.")

    # ------------------------------------------------------------------ progress

    def stage(self, name: str, items_total: int | None = None, bytes_total: int | None = None) -> None:
        self.progress = Progress(stage=name, items_total=items_total, bytes_total=bytes_total)
        self.flush()

    def add_bytes(self, count: int) -> None:
        with self._counts_lock:
            self.progress.bytes_done += count
        self._maybe_flush()

    def add_items(self, count: int = 1, current: str | None = None) -> None:
        with self._counts_lock:
            self.progress.items_done += count
            if current is not None:
                self.progress.current = current
        self._maybe_flush()

    def set_total(self, items_total: int | None) -> None:
        self.progress.items_total = items_total

    def flush(self) -> None:
        self._last = self._clock()
        self._report(self.progress)
        self.raise_if_cancelled()

    def _maybe_flush(self) -> None:
        if self._clock() - self._last >= self._interval and self._report_lock.acquire(blocking=False):
            try:
                self.flush()
            finally:
                self._report_lock.release()

    # ------------------------------------------------------------------ cancellation

    @property
    def stop_reason(self) -> Exception | None:
        """Why the job was stopped, or None while it runs on."""
        return self._stop_reason if self.cancelled.is_set() else None

    def raise_if_cancelled(self) -> None:
        """Raise the reason the job was stopped for, if it was."""
        if self.cancelled.is_set():
            raise self._stop_reason

    @contextmanager
    def stop_hook(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run ``hook`` (from the watcher thread) if the job is cancelled while inside."""
        with self._hooks_lock:
            self._stop_hooks.append(hook)
            already = self.cancelled.is_set()
        if already:
            hook()
        try:
            yield
        finally:
            with self._hooks_lock:
                self._stop_hooks.remove(hook)

    def stop(self, reason: Exception) -> None:
        """Stop the job (from any thread): run the stop hooks; the next report raises ``reason``."""
        with self._hooks_lock:
            if self.cancelled.is_set():
                return
            self._stop_reason = reason
            self.cancelled.set()
            hooks = list(self._stop_hooks)
        for hook in hooks:
            hook()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Poll ``should_stop`` in the background while the job runs."""
        if self._should_stop is None:
            yield
            return
        done = threading.Event()

        def watch() -> None:
            while not done.wait(self._interval):
                try:
                    reason = self._should_stop()
                except Exception:  # the store blipped: ask again next time
                    continue
                if reason is not None:
                    self.stop(reason)
                    return

        watcher = threading.Thread(target=watch, name="stop-watcher", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()


class JobInterrupted(Exception):
    """The job stopped for a reason of the service's own, not the user's: it is not finished."""


class HandedBack(JobInterrupted):
    """The worker is shutting down: the job goes back to the queue for the next worker."""


class LeaseLost(JobInterrupted):
    """Another attempt now owns the target: this one must stop and record nothing."""
