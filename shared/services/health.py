"""Health: Redis, workers (heartbeats), storage and every target, checked concurrently."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from shared.core.errors import FlexDBError
from shared.core.settings import Settings
from shared.domain.ports import Storage, WorkerRegistry
from shared.services.targets import TargetService


class HealthService:
    def __init__(
        self, settings: Settings, client: redis.Redis, workers: WorkerRegistry, storage: Storage, targets: TargetService
    ) -> None:
        self._settings = settings
        self._redis = client
        self._workers = workers
        self._storage = storage
        self._targets = targets
        # target name -> (monotonic time it expires, its status): a health probe every few
        # seconds (a load balancer, compose) must not open a connection to every database each time
        self._target_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._target_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def check(self, include_targets: bool = True, detailed: bool = True) -> tuple[bool, dict[str, Any]]:
        """``detailed`` False: each component's ``ok`` only (no hosts, paths, versions or error
        text), for callers that did not authenticate."""
        with ThreadPoolExecutor(max_workers=4 + len(self._settings.targets)) as pool:
            redis_future = pool.submit(self._redis_status)
            storage_future = pool.submit(self._storage_status)
            target_futures = (
                {t.name: pool.submit(self._target_status, t.name) for t in self._targets.all()} if include_targets else {}
            )
            components: dict[str, Any] = {"api": {"ok": True}, "redis": redis_future.result()}
            components["workers"] = self._workers_status() if components["redis"]["ok"] else {
                "ok": False,
                "error": "Redis is down, so worker heartbeats cannot be read",
            }
            components["storage"] = storage_future.result()
            components["targets"] = {name: future.result() for name, future in target_futures.items()}
        healthy = all(components[key]["ok"] for key in ("api", "redis", "workers", "storage")) and all(
            status["ok"] for status in components["targets"].values()
        )
        if not detailed:
            components = statuses_only(components)
        return healthy, {"status": "ok" if healthy else "degraded", "components": components}

    def _redis_status(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            return {"ok": False, "error": f"Redis is not answering ({type(exc).__name__})"}
        return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 1)}

    def _workers_status(self) -> dict[str, Any]:
        try:
            alive = self._workers.alive()
        except FlexDBError as exc:
            return {"ok": False, "error": exc.message}
        if not alive:
            return {"ok": False, "alive": [], "error": "no worker has sent a heartbeat recently; start one (make run)"}
        return {"ok": True, "alive": alive}

    def _storage_status(self) -> dict[str, Any]:
        location, problem = self._storage.describe(), self._storage.problem()
        if problem:
            return {"ok": False, "location": location, "error": problem}
        return {"ok": True, "location": location}

    def _target_status(self, name: str) -> dict[str, Any]:
        """The target's last status while it is fresh; otherwise one check, shared by the
        health requests that ask at the same time."""
        with self._locks_guard:
            lock = self._target_locks.setdefault(name, threading.Lock())
        with lock:
            expires, status = self._target_cache.get(name, (0.0, {}))
            if time.monotonic() < expires:
                return status
            status = self._check_target(name)
            self._target_cache[name] = (time.monotonic() + self._settings.health_cache_seconds, status)
            return status

    def _check_target(self, name: str) -> dict[str, Any]:
        try:
            info = self._targets.check(name)
        except FlexDBError as exc:
            return {"ok": False, "code": exc.code, "error": exc.message}
        return {"ok": True, "server_version": info.version, "latency_ms": info.latency_ms}


def statuses_only(components: dict[str, Any]) -> dict[str, Any]:
    """Each component's ``ok`` (and each target's), nothing else."""
    shown: dict[str, Any] = {name: {"ok": bool(status["ok"])} for name, status in components.items() if name != "targets"}
    shown["targets"] = {name: {"ok": bool(status["ok"])} for name, status in components.get("targets", {}).items()}
    return shown
