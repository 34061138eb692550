"""The API under load next to bare Flask, in the same run, on the same gunicorn settings.

    .venv/bin/python bench/api_throughput.py [--duration 10] [--connections 64] [--rounds 2] [--latency-jobs 200]

Starts everything it needs and removes it at the end: a private redis-server on a free port,
the API exactly as shipped (``gunicorn --config python:api.gunicorn_conf api.wsgi:app``), a
bare Flask app with one trivial endpoint (bench/bare_flask_app.py) under the same gunicorn
configuration, and later one Celery worker. Then:

1. throughput: ``wrk`` (bench/wrk_report.lua) with --connections connections against
   ``POST /api/v1/backups`` (submit) and ``GET /api/v1/jobs/<id>`` (poll), each next to the
   bare endpoint with the same method; no worker runs, so the submitted jobs only queue
   (the target is never contacted); best of --rounds rounds;
2. latency: with the queue emptied and one idle worker, --latency-jobs sequential submits,
   each timed from sending the POST to the job's ``running`` event (the target points at a
   closed port, so each job then fails at once and the worker is idle for the next one).

Beside req/s and latency it prints the CPU time the serving processes spent per request (the
API's gunicorn processes and Redis; the baseline's gunicorn processes), which other load on the
machine disturbs far less than req/s. Goals: submits >= 0.35x bare Flask with p99 <= 50 ms;
polls cheaper than submits; the median submit -> running <= 20 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[1]
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
TARGET = "bench"
SUBMIT_BODY = json.dumps({"target": TARGET})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what}: not reached within {timeout} s")


class Processes:
    """Every process the benchmark starts, each with its own log, stopped at the end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self._running: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        process = subprocess.Popen(
            argv, cwd=REPO, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._running)):
            self.stop(process)


def http_answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status < 500
    finally:
        conn.close()


def gunicorn(app: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", app]


def process_group_cpu_seconds(group: int) -> float:
    """CPU time (user + system) used so far by the processes of one process group: a gunicorn
    master and its workers, or redis-server."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == group:  # field 5 of proc(5), after the name: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, method: str, body: str, seconds: int, connections: int, serving: list[int]) -> dict[str, float]:
    """One wrk run; also the CPU the ``serving`` process groups spent per request, a figure
    that other load on the machine disturbs far less than req/s."""
    env = {**os.environ, "WRK_METHOD": method, "WRK_BODY": body}
    argv = [
        "wrk",
        "-t",
        "2",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    cpu_before = sum(map(process_group_cpu_seconds, serving))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    cpu = sum(map(process_group_cpu_seconds, serving)) - cpu_before
    line = next(line for line in out.splitlines() if line.startswith("WRK_RESULT "))
    data = json.loads(line.removeprefix("WRK_RESULT "))
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50_us"] / 1000,
        "p99_ms": data["p99_us"] / 1000,
        "cpu_ms": cpu * 1000 / max(1, data["requests"]),
        "failed": data["non_2xx"] + data["socket_errors"],
    }


class RunningEvents:
    """Arrival times of jobs' ``running`` and terminal events, read on a thread of its own so a
    message is timed when it arrives, not when the submitting loop gets to it."""

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("flexdb:job-events:*")
        self.running: dict[str, float] = {}
        self.ended: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            at = time.perf_counter()
            job_id = message["channel"].rsplit(":", 1)[1]
            if message["data"] == "running":
                self.running.setdefault(job_id, at)
            elif message["data"] in ("succeeded", "failed", "cancelled"):
                self.ended_event(job_id).set()

    def ended_event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self.ended.setdefault(job_id, threading.Event())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()


def submit_to_running(port: int, client: redis.Redis, jobs: int) -> list[float]:
    """Milliseconds from sending each submit to its job's ``running`` event, one job at a time."""
    events = RunningEvents(client)
    headers = {"Content-Type": "application/json"}
    latencies = []
    try:
        for _ in range(jobs):
            # A connection per submit, as curl makes it (and a kept one would time out between jobs).
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            sent = time.perf_counter()
            conn.request("POST", "/api/v1/backups", SUBMIT_BODY, headers)
            response = conn.getresponse()
            job = json.loads(response.read())
            conn.close()
            if response.status != 202:
                raise SystemExit(f"submit answered {response.status}: {job}")
            if not events.ended_event(job["id"]).wait(30):
                raise SystemExit(f"job {job['id']} did not end within 30 s (see the worker log)")
            latencies.append((events.running[job["id"]] - sent) * 1000)
    finally:
        events.close()
    return latencies


def service_env(workdir: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXDB_")}
    # Nothing listens on this port: a job that runs fails at once, without touching any data.
    closed = f"postgresql://bench:{secrets.token_hex(8)}@127.0.0.1:{free_port()}/bench"
    env.update(
        FLEXDB_ENV_FILE=os.devnull,
        FLEXDB_REDIS_URL=redis_url,
        FLEXDB_TARGETS=json.dumps({TARGET: {"engine": "postgresql", "uri": closed}}),
        FLEXDB_STORAGE_DIR=str(workdir / "backups"),
        FLEXDB_BEAT_SCHEDULE_FILE=str(workdir / "beat-schedule"),
        FLEXDB_CALLBACK_SECRET=secrets.token_hex(32),
        FLEXDB_SCHEDULES="[]",
        FLEXDB_LOG_FORMAT="json",
        FLEXDB_LOG_LEVEL="INFO",
    )
    return env


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the most req/s, with the least CPU per request seen in any run."""
    return {**max(runs, key=lambda r: r["rps"]), "cpu_ms": min(r["cpu_ms"] for r in runs)}


def print_table(rows: list[tuple[str, dict[str, float], dict[str, float]]]) -> None:
    print(
        f"{'route':<24}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}"
        f"{'bare req/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}{'ratio':>7}{'CPU ratio':>10}{'failed':>7}"
    )
    for name, api, bare in rows:
        print(
            f"{name:<24}{api['rps']:>7.0f}{api['p50_ms']:>8.1f}{api['p99_ms']:>8.1f}{api['cpu_ms']:>11.3f}"
            f"{bare['rps']:>11.0f}{bare['p50_ms']:>8.1f}{bare['p99_ms']:>8.1f}{bare['cpu_ms']:>11.3f}"
            f"{api['rps'] / bare['rps']:>7.2f}{bare['cpu_ms'] / api['cpu_ms']:>10.2f}{api['failed']:>7.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="wrk runs per route; the best counts")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) at the end")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        raise SystemExit("needs wrk and redis-server (Debian packages wrk, redis-server)")

    workdir = Path(tempfile.mkdtemp(prefix="flexdb-bench-api-"))
    redis_port, api_port, bare_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = service_env(workdir, redis_url)
    procs = Processes(workdir, env)
    try:
        redis_server = procs.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--dir", str(workdir)])  # fmt: skip
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        wait_for(client.ping, 15, "redis-server up")
        api_server = procs.start("api", gunicorn("api.wsgi:app"), {**env, "FLEXDB_API_PORT": str(api_port)})
        bare_server = procs.start(
            "bare", gunicorn("bench.bare_flask_app:app"), {**env, "FLEXDB_API_PORT": str(bare_port)}
        )
        # Each started in a session of its own: its process group is its pid.
        api_serving, bare_serving = [api_server.pid, redis_server.pid], [bare_server.pid]
        wait_for(lambda: http_answers(api_port, "/api/v1/targets"), 60, "API up")
        wait_for(lambda: http_answers(bare_port, "/ping"), 60, "bare Flask up")

        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
        conn.request("POST", "/api/v1/backups", SUBMIT_BODY, {"Content-Type": "application/json"})
        job_id = json.loads(conn.getresponse().read())["id"]
        conn.close()

        api, bare = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}/ping"
        runs = {
            "POST /api/v1/backups": (f"{api}/api/v1/backups", "POST", SUBMIT_BODY, bare),
            "GET /api/v1/jobs/<id>": (f"{api}/api/v1/jobs/{job_id}", "GET", "", bare),
        }
        for url, method, body, bare_url in runs.values():  # warm-up: every process, every pool
            run_wrk(url, method, body, 2, args.connections, api_serving)
            run_wrk(bare_url, method, body, 2, args.connections, bare_serving)
        results: dict[str, tuple[list[dict[str, float]], list[dict[str, float]]]] = {name: ([], []) for name in runs}
        for _ in range(args.rounds):  # interleaved, so a busy moment of the machine hits both sides
            for name, (url, method, body, bare_url) in runs.items():
                results[name][1].append(run_wrk(bare_url, method, body, args.duration, args.connections, bare_serving))
                results[name][0].append(run_wrk(url, method, body, args.duration, args.connections, api_serving))
        best = {name: tuple(best_of(side) for side in sides) for name, sides in results.items()}
        print(f"{args.connections} connections, {args.duration} s per run, best of {args.rounds}; "
              f"{client.llen('flexdb')} jobs queued during the runs")  # fmt: skip
        print_table([(name, api_result, bare_result) for name, (api_result, bare_result) in best.items()])

        # The load left thousands of queued jobs: an empty database for the latency part.
        client.flushdb()
        procs.start("worker", [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO",
                               "--hostname", "bench@%h"])  # fmt: skip
        wait_for(lambda: client.keys("flexdb:worker:*"), 60, "worker up")
        submit_to_running(api_port, client, 5)  # the worker's first tasks import and connect
        latencies = submit_to_running(api_port, client, args.latency_jobs)
        quantiles = statistics.quantiles(latencies, n=100)
        print(
            f"submit -> running, {len(latencies)} sequential jobs, idle worker: median {statistics.median(latencies):.1f} ms, "
            f"p90 {quantiles[89]:.1f} ms, max {max(latencies):.1f} ms"
        )
    finally:
        procs.stop_all()
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
