"""The thread hand-offs of parallel dumps and restores (shared/engines/parallel.py), and the
archive writer's interleaved blocks they rely on: nothing lost, order kept where it matters,
memory bounded, the first failure (or a cancel) stops every thread."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import bson
import pytest

from shared.core.errors import JobCancelled
from shared.domain.progress import ProgressTracker
from shared.engines.mongodb_archive import ArchiveReader, ArchiveWriter, CollectionEntry, DocumentBatch, build_metadata, verify
from shared.engines.parallel import FanIn, SerialLanes, stopped_with_the_job
from tests.support.processes import wait_for

WAIT = 5.0  # seconds a test waits for another thread before calling it stuck


# ----------------------------------------------------------------------------- FanIn


def counting_producer(per_task: int, emitted: list[tuple[str, int]] | None = None) -> Callable:
    def produce(task: str, emit: Callable) -> None:
        for number in range(per_task):
            emit((task, number))
            if emitted is not None:
                emitted.append((task, number))

    return produce


def test_fan_in_delivers_every_item_keeping_each_producers_order() -> None:
    tasks = [f"t{n}" for n in range(7)]
    with FanIn(tasks, counting_producer(50), workers=3, capacity=2, name="test") as items:
        received = list(items)

    assert sorted(received) == sorted((task, n) for task in tasks for n in range(50))
    for task in tasks:
        assert [n for t, n in received if t == task] == list(range(50))


def test_fan_in_holds_at_most_its_capacity_while_the_consumer_is_busy() -> None:
    emitted: list[tuple[str, int]] = []
    with FanIn(["a", "b", "c"], counting_producer(100, emitted), workers=3, capacity=4, name="test") as items:
        wait_for(lambda: len(emitted) == 4, WAIT, what="the channel full")
        time.sleep(0.2)  # the producers had every chance to push more
        assert len(emitted) == 4
        received = list(items)
    assert len(received) == 300


def test_a_failing_producer_stops_the_others_and_is_raised_to_the_consumer() -> None:
    unwound: list[str] = []

    def produce(task: str, emit: Callable) -> None:
        try:
            if task == "bad":
                emit((task, 0))
                raise RuntimeError("server said no")
            for number in range(10_000):
                emit((task, number))
        finally:
            unwound.append(task)

    with pytest.raises(RuntimeError, match="server said no"):
        with FanIn(["good", "bad", "other"], produce, workers=3, capacity=2, name="test") as items:
            for _ in items:
                time.sleep(0.001)
    assert sorted(unwound) == ["bad", "good", "other"]  # every producer left its loop (cursors closed)


def test_leaving_early_stops_the_producers() -> None:
    emitted: list[tuple[str, int]] = []
    with FanIn(["a", "b"], counting_producer(10_000, emitted), workers=2, capacity=2, name="test") as items:
        for _ in zip(range(5), items):
            pass
    assert len(emitted) < 100


def test_a_cancelled_job_wakes_the_waiting_consumer_with_its_reason() -> None:
    started = threading.Event()
    release = threading.Event()

    def produce(task: str, emit: Callable) -> None:
        started.set()
        release.wait(WAIT)  # a slow server read

    progress = ProgressTracker(lambda p: None)
    with pytest.raises(JobCancelled):
        with FanIn(["slow"], produce, workers=1, capacity=1, name="test") as items:
            with stopped_with_the_job(progress, items):
                threading.Timer(0.1, lambda: progress.stop(JobCancelled("cancelled by the user"))).start()
                started.wait(WAIT)
                try:
                    list(items)
                finally:
                    release.set()


# ----------------------------------------------------------------------------- SerialLanes


def test_tasks_of_one_lane_run_in_order_and_lanes_run_side_by_side() -> None:
    both_lanes_running = threading.Barrier(2, timeout=WAIT)
    done: dict[str, list[int]] = {"a": [], "b": []}
    running: dict[str, int] = {"a": 0, "b": 0}
    overlap_in_a_lane: list[str] = []

    def step(lane: str, number: int) -> Callable[[], None]:
        def run() -> None:
            running[lane] += 1
            if running[lane] > 1:
                overlap_in_a_lane.append(lane)
            if number == 0:
                both_lanes_running.wait()  # a BrokenBarrierError unless both lanes run at once
            time.sleep(0.001)
            done[lane].append(number)
            running[lane] -= 1

        return run

    with SerialLanes(workers=4, capacity=3, name="test") as lanes:
        for number in range(40):
            lanes.submit("a", step("a", number))
            lanes.submit("b", step("b", number))
        lanes.join()

    assert done == {"a": list(range(40)), "b": list(range(40))}
    assert overlap_in_a_lane == []


def test_submit_blocks_beyond_the_capacity() -> None:
    release = threading.Event()
    submitted: list[int] = []

    def submit_all(lanes: SerialLanes) -> None:
        for number in range(5):
            lanes.submit(number, lambda: release.wait(WAIT))
            submitted.append(number)

    with SerialLanes(workers=2, capacity=3, name="test") as lanes:
        feeder = threading.Thread(target=submit_all, args=(lanes,))
        feeder.start()
        wait_for(lambda: len(submitted) == 3, WAIT, what="three tasks submitted")
        time.sleep(0.2)
        assert len(submitted) == 3
        release.set()
        feeder.join(WAIT)
        lanes.join()
    assert submitted == [0, 1, 2, 3, 4]


def test_the_first_failure_stops_the_lanes_and_is_raised() -> None:
    ran: list[int] = []

    def step(number: int) -> Callable[[], None]:
        def run() -> None:
            if number == 3:
                raise ValueError("duplicate key")
            ran.append(number)

        return run

    with pytest.raises(ValueError, match="duplicate key"):
        with SerialLanes(workers=2, capacity=2, name="test") as lanes:
            for number in range(200):
                lanes.submit("one lane", step(number))
            lanes.join()
    assert ran == [0, 1, 2]  # nothing after the failure in its lane ran


def test_a_cancelled_job_wakes_a_blocked_submit() -> None:
    release = threading.Event()
    progress = ProgressTracker(lambda p: None)
    with pytest.raises(JobCancelled, match="by the user"):
        with SerialLanes(workers=1, capacity=1, name="test") as lanes, stopped_with_the_job(progress, lanes):
            lanes.submit("a", lambda: release.wait(WAIT))
            threading.Timer(0.1, lambda: progress.stop(JobCancelled("cancelled by the user"))).start()
            try:
                lanes.submit("a", lambda: None)  # blocks: capacity 1 is taken
            finally:
                release.set()


def test_progress_counted_from_many_threads_adds_up() -> None:
    progress = ProgressTracker(lambda p: None, interval_seconds=0.0)
    with SerialLanes(workers=4, capacity=8, name="test") as lanes:
        for number in range(2000):
            lanes.submit(number % 8, lambda: progress.add_items(3))
        lanes.join()
    assert progress.progress.items_done == 6000


# ----------------------------------------------------------------------------- interleaved archive


def docs(prefix: str, count: int) -> list[bytes]:
    return [bson.encode({"_id": f"{prefix}{n:03d}", "pad": "x" * 40}) for n in range(count)]


def entry(name: str) -> CollectionEntry:
    return CollectionEntry("shop", name, build_metadata(collection_name=name))


def test_namespaces_written_side_by_side_interleave_their_blocks_and_read_back() -> None:
    orders, items = docs("o", 30), docs("i", 30)
    out = io.BytesIO()
    block_size = 10 * len(orders[0])  # each namespace gathers its own block of ten documents
    writer = ArchiveWriter(out, "8.0.0", "test", concurrent_collections=3, block_size=block_size)
    writer.write_prelude([entry("orders"), entry("items"), entry("empty")])
    for start in range(0, 30, 10):  # batches of the two collections arrive in turn
        writer.write_documents("shop", "orders", [b"".join(orders[start : start + 10])])
        writer.write_documents("shop", "items", [b"".join(items[start : start + 10])])
        if start == 10:
            writer.finish_namespace("shop", "empty")  # while items' documents are pending
    writer.finish_namespace("shop", "orders")
    writer.finish_namespace("shop", "items")
    writer.finish()

    data = out.getvalue()
    reader = ArchiveReader(io.BytesIO(data))
    assert reader.header.concurrent_collections == 3
    received: dict[str, list[bytes]] = {"orders": [], "items": [], "empty": []}
    order: list[str] = []
    for event in reader:
        if isinstance(event, DocumentBatch):
            received[event.entry.collection] += event.documents
            order.append(event.entry.collection)
    assert received == {"orders": orders, "items": items, "empty": []}
    assert order == ["orders", "items"] * 3  # each block written when full: they alternate
    summary = verify(io.BytesIO(data))
    assert {ns: s.documents for ns, s in summary.namespaces.items()} == {
        "shop.orders": 30,
        "shop.items": 30,
        "shop.empty": 0,
    }


def test_no_more_namespaces_open_than_the_header_announces() -> None:
    writer = ArchiveWriter(io.BytesIO(), "8.0.0", "test", concurrent_collections=2)
    writer.write_prelude([entry("a"), entry("b"), entry("c")])
    writer.write_documents("shop", "a", docs("a", 1))
    writer.write_documents("shop", "b", docs("b", 1))
    with pytest.raises(RuntimeError, match="still open; the header allows 2"):
        writer.write_documents("shop", "c", docs("c", 1))
    writer.finish_namespace("shop", "a")
    writer.write_documents("shop", "c", docs("c", 1))  # a slot is free again
