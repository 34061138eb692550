"""Progress tracking handed to engines: cheap to call per chunk, reported at most every N s."""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.domain.jobs import Progress


class ProgressTracker:
    def __init__(
        self,
        report: Callable[[Progress], None],
        interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress = Progress()
        self._report = report
        self._interval = interval_seconds
        self._clock = clock
        self._last = float("-inf")

    def stage(self, name: str, items_total: int | None = None, bytes_total: int | None = None) -> None:
        self.progress = Progress(stage=name, items_total=items_total, bytes_total=bytes_total)
        self.flush()

    def add_bytes(self, count: int) -> None:
        self.progress.bytes_done += count
        self._maybe_flush()

    def add_items(self, count: int = 1, current: str | None = None) -> None:
        self.progress.items_done += count
        if current is not None:
            self.progress.current = current
        self._maybe_flush()

    def set_total(self, items_total: int | None) -> None:
        self.progress.items_total = items_total

    def flush(self) -> None:
        self._last = self._clock()
        self._report(self.progress)

    def _maybe_flush(self) -> None:
        if self._clock() - self._last >= self._interval:
            self.flush()
