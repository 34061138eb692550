"""Prometheus metrics, computed at scrape time from the job records, the manifests and the
broker: nothing to keep in sync, and every API process answers the same."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.domain.jobs import parse_iso
from shared.domain.ports import JobRepository, Storage, WorkerRegistry
from shared.domain.tasks import QUEUE

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
SIZE_BUCKETS = tuple(float(2**n) for n in range(10, 41, 3))  # 1 KiB .. 1 TiB


def _histogram(name: str, doc: str, label: str, samples: dict[str, list[float]], buckets: Iterable[float]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    bounds = sorted(buckets)
    for value, observed in sorted(samples.items()):
        observed = sorted(observed)
        cumulative = [(str(bound), bisect_left(observed, bound + 1e-12)) for bound in bounds]
        cumulative.append(("+Inf", len(observed)))
        family.add_metric([value], cumulative, sum_value=sum(observed))
    return family


class FlexDBCollector(Collector):
    def __init__(self, jobs: JobRepository, storage: Storage, workers: WorkerRegistry, client: redis.Redis) -> None:
        self._jobs = jobs
        self._storage = storage
        self._workers = workers
        self._redis = client

    def collect(self) -> Iterator[Metric]:
        counts: Counter[tuple[str, str]] = Counter()
        durations: dict[str, list[float]] = defaultdict(list)
        for job in self._jobs.iter_jobs():
            counts[(job.kind.value, job.status.value)] += 1
            if job.status.is_terminal and job.duration_seconds is not None:
                durations[job.kind.value].append(job.duration_seconds)
        jobs = GaugeMetricFamily("flexdb_jobs", "Job records in Redis by kind and status", labels=["kind", "status"])
        for (kind, status), count in sorted(counts.items()):
            jobs.add_metric([kind, status], count)
        yield jobs
        yield _histogram("flexdb_job_duration_seconds", "Duration of finished jobs", "kind", durations, DURATION_BUCKETS)

        sizes: dict[str, list[float]] = defaultdict(list)
        newest: dict[str, float] = {}
        per_target: Counter[str] = Counter()
        for manifest in self._storage.iter_manifests():
            sizes[manifest.engine].append(float(manifest.size_bytes))
            per_target[manifest.target] += 1
            finished = parse_iso(manifest.finished_at)
            if finished is not None:
                newest[manifest.target] = max(newest.get(manifest.target, 0.0), finished.timestamp())
        yield _histogram("flexdb_backup_size_bytes", "Size of stored backups", "engine", sizes, SIZE_BUCKETS)
        backups = GaugeMetricFamily("flexdb_backups", "Complete backups in storage", labels=["target"])
        last = GaugeMetricFamily(
            "flexdb_last_successful_backup_timestamp_seconds", "When the newest complete backup finished", labels=["target"]
        )
        for target in sorted(per_target):
            backups.add_metric([target], per_target[target])
            last.add_metric([target], newest.get(target, 0.0))
        yield backups
        yield last

        queue = GaugeMetricFamily("flexdb_queue_depth", "Tasks waiting in the broker queue")
        queue.add_metric([], self._redis.llen(QUEUE))
        yield queue
        workers = GaugeMetricFamily("flexdb_workers_alive", "Workers with a fresh heartbeat")
        workers.add_metric([], len(self._workers.alive()))
        yield workers


class MetricsService:
    def __init__(self, collector: FlexDBCollector) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
