"""Bounded hand-offs between threads, for engines that read or write several collections at once.

Two shapes, one rule. ``FanIn``: several threads produce (read collections), the caller's thread
consumes (writes the one archive). ``SerialLanes``: the caller's thread hands out tasks (inserts
read from the one archive), several threads run them, those of one lane (a collection) one after
the other. Both hold a bounded number of items, so memory does not grow with the database; the
first failure of any thread stops all of them and is what the caller raises; ``stop(reason)``
(a cancelled job) wakes whoever waits, at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Generic, TypeVar

from shared.core.errors import JobCancelled
from shared.domain.progress import ProgressTracker

T = TypeVar("T")
R = TypeVar("R")


class _Finished(Exception):
    """Internal: the consumer is gone (done or failed); a producer unwinds quietly."""


class _FirstFailure:
    """A condition shared by a group of threads, and the first failure among them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._failure: BaseException | None = None

    def stop(self, reason: BaseException) -> None:
        """Stop every thread of the group (from any thread); the first reason given is kept."""
        with self._cond:
            if self._failure is None:
                self._failure = reason
            self._cond.notify_all()

    def _raise_failure(self) -> None:  # holding the condition
        if self._failure is not None and not isinstance(self._failure, _Finished):
            raise self._failure


@contextmanager
def stopped_with_the_job(progress: ProgressTracker, group: _FirstFailure) -> Iterator[None]:
    """While inside, a job stopped from outside (cancelled, handed back, its lease lost) stops
    every thread of ``group`` at once, and whoever waits on it raises the job's stop reason."""

    def halt() -> None:
        group.stop(progress.stop_reason or JobCancelled())

    with progress.stop_hook(halt):
        yield


class FanIn(_FirstFailure, Generic[T, R]):
    """Runs ``produce(task, emit)`` for every task on up to ``workers`` threads; iterating yields
    what they emit, in arrival order (each producer's own items keep their order). At most
    ``capacity`` items wait; ``emit`` blocks beyond. Use as a context manager: leaving it stops
    the producers and waits for them."""

    def __init__(
        self,
        tasks: Iterable[T],
        produce: Callable[[T, Callable[[R], None]], None],
        *,
        workers: int,
        capacity: int,
        name: str,
    ) -> None:
        super().__init__()
        if workers < 1 or capacity < 1:
            raise ValueError("workers and capacity must be at least 1")
        self._tasks = deque(tasks)
        self._produce = produce
        self._capacity = capacity
        self._items: deque[R] = deque()
        self._running = min(workers, len(self._tasks))
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True) for number in range(self._running)
        ]

    def __enter__(self) -> FanIn[T, R]:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop(_Finished())  # a no-op when a failure came first
        for thread in self._threads:
            thread.join()

    def __iter__(self) -> Iterator[R]:
        while True:
            with self._cond:
                while not self._items and self._running and self._failure is None:
                    self._cond.wait()
                self._raise_failure()  # a failure wins over items still waiting
                if not self._items:
                    return  # every producer is done
                item = self._items.popleft()
                self._cond.notify_all()
            yield item

    def _emit(self, item: R) -> None:
        with self._cond:
            while len(self._items) >= self._capacity and self._failure is None:
                self._cond.wait()
            if self._failure is not None:
                raise _Finished
            self._items.append(item)
            self._cond.notify_all()

    def _next_task(self) -> tuple[bool, T | None]:
        with self._cond:
            if self._failure is not None or not self._tasks:
                return False, None
            return True, self._tasks.popleft()

    def _work(self) -> None:
        try:
            while True:
                found, task = self._next_task()
                if not found:
                    break
                self._produce(task, self._emit)  # type: ignore[arg-type]
        except _Finished:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            self.stop(exc)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


class SerialLanes(_FirstFailure):
    """Runs submitted tasks on ``workers`` threads; tasks of one lane run one after the other, in
    the order submitted; lanes take turns. At most ``capacity`` tasks wait or run at a time:
    ``submit`` blocks beyond, and raises the first failure of any task. ``join`` waits for all
    of them. Use as a context manager: leaving it drops what has not started and waits for the
    tasks that are running."""

    def __init__(self, *, workers: int, capacity: int, name: str) -> None:
        super().__init__()
        if workers < 1 or capacity < 1:
            raise ValueError("workers and capacity must be at least 1")
        self._capacity = capacity
        self._lanes: dict[Hashable, deque[Callable[[], None]]] = {}
        self._ready: deque[Hashable] = deque()  # lanes with a task to run and none running
        self._pending = 0
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True) for number in range(workers)
        ]

    def __enter__(self) -> SerialLanes:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        with self._cond:
            if error is not None and self._failure is None:
                self._failure = _Finished()  # the caller failed: start nothing more
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def submit(self, lane: Hashable, task: Callable[[], None]) -> None:
        with self._cond:
            while self._pending >= self._capacity and self._failure is None:
                self._cond.wait()
            self._raise_failure()
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
                self._ready.append(lane)  # neither waiting nor running: a new turn
            queue.append(task)
            self._pending += 1
            self._cond.notify_all()

    def join(self) -> None:
        with self._cond:
            while self._pending and self._failure is None:
                self._cond.wait()
            self._raise_failure()

    def _take(self) -> tuple[Hashable, Callable[[], None]] | None:
        with self._cond:
            while not self._ready and not self._closing and self._failure is None:
                self._cond.wait()
            if self._failure is not None or not self._ready:
                return None
            lane = self._ready.popleft()
            return lane, self._lanes[lane].popleft()

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            lane, task = taken
            try:
                task()
            except BaseException as exc:  # noqa: BLE001 - raised to the caller by submit/join
                self.stop(exc)
                return
            with self._cond:
                self._pending -= 1
                if self._lanes[lane]:
                    self._ready.append(lane)  # its next task, after the other lanes' turn
                else:
                    del self._lanes[lane]
                self._cond.notify_all()
