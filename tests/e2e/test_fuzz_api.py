"""Schemathesis against the live API and its own OpenAPI document.

A dedicated stack (a Celery worker, and the API under gunicorn with the project's config as
``make run`` starts it, with a Redis database, a storage folder, and a PostgreSQL role and
database of their own) so that thousands of random submits never touch the session's shared
stack. Its one target is healthy, so /health stays 200. Schemathesis runs as a user would run it, its CLI with every check,
through all its phases (coverage, fuzzing, stateful); the test fails when it reports anything and
prints its reproductions (curl lines). Then the recorded traffic is checked once more here: no 5xx
but the documented 502 of the two connection checks, every error is application/problem+json,
and the canary password of the target never shows.

The same module is the hooks module of the schemathesis process (SCHEMATHESIS_HOOKS): it keeps
the connection checks on this machine (:func:`keep_connection_check_local`) and adds the canary
check. Callbacks to generated URLs go to a closed loopback proxy (:func:`_service_env_without_network`).

Knobs: FLEXDB_FUZZ_MAX_EXAMPLES (per operation and phase), FLEXDB_FUZZ_SEED (replay a run),
FLEXDB_FUZZ_RUN_TIMEOUT (seconds for the whole schemathesis run, default 240).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.conftest import CANARY_PASSWORD, REDIS_URL, drop_database, pg_admin, service_env
from tests.support.processes import REPO, ApiClient, ManagedProcess, free_port, python_argv, wait_for
from tests.support.servers import _CLAIM_KEY

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install schemathesis==4.32.5)")

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("FLEXDB_FUZZ_MAX_EXAMPLES", "200"))
MIN_REQUESTS = 3000
# Seconds the schemathesis run may take; raise it with FLEXDB_FUZZ_MAX_EXAMPLES (1,000 takes minutes).
RUN_TIMEOUT = float(os.environ.get("FLEXDB_FUZZ_RUN_TIMEOUT", "240"))
# The two operations that connect to a database and report its failure as a gateway error.
CHECK_OPERATIONS = ("targets_check_connection", "targets_check_target")
CHECK_PATHS = re.compile(r"/api/v1/(connections|targets/[^/]+)/check")

# Operations whose request body has rules JSON Schema cannot state, which the API enforces with a
# documented 422 validation_failed: engine options checked per engine, `callback_url` must be an
# absolute http(s) URL and `callback_headers` needs it and may not set reserved headers, a cron
# expression must parse and a time zone must be an IANA name, a schedule takes exactly one of
# `cron` and `interval_seconds` (at least FLEXDB_SCHEDULE_MIN_INTERVAL_SECONDS), and an ad-hoc
# URI must be one the engine's driver can use. For these, "schema-valid data was refused" with 422
# is that validation, not a bug; every other check stays on.
SEMANTIC_422_OPERATIONS = (
    "jobs_create_backup",
    "jobs_create_restore",
    "schedules_create_schedule",
    "schedules_update_schedule",
    "targets_check_connection",
    # an imported file must be an archive the target's engine restores (archive_corrupt)
    "backups_import_backup",
)
# A request line or headers too large for the HTTP server are refused before the app sees them:
# 414 and 431 (problem+json, documented with every route) are rejections like any other 4xx.
NEGATIVE_DATA_STATUSES = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "414",
    "415",
    "422",
    "428",
    "429",
    "431",
    "5xx",
]
POSITIVE_DATA_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]


# ------------------------------------------------------------------------ the schemathesis side


def _is_local_host(host: str) -> bool:
    host = host.strip()
    if not host or host.startswith(("/", "@")):  # default or unix-domain socket
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _postgresql_stays_local(uri: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(uri)
    except Exception:  # noqa: BLE001 - whatever the parser refuses, the engine cannot use either: nothing is contacted
        return True
    hosts = str(params.get("host") or "").split(",") + str(params.get("hostaddr") or "").split(",")
    return all(_is_local_host(host) for host in hosts)


def _mongodb_stays_local(uri: str) -> bool:
    from pymongo.uri_parser import parse_uri, split_hosts

    if uri.startswith("mongodb+srv://"):  # resolved through DNS SRV records
        return False
    try:
        # What MongoClient does with its host argument: a URI when it has a '/', else host[:port] list.
        nodes = (
            parse_uri(uri, validate=True, warn=True, normalize=False)["nodelist"]
            if "/" in uri
            else split_hosts(uri, 27017)
        )
    except Exception:  # noqa: BLE001 - pymongo refuses it as well: nothing is contacted
        return True
    return all(_is_local_host(str(host)) for host, _ in nodes)


_STAYS_LOCAL = {"postgresql": _postgresql_stays_local, "mongodb": _mongodb_stays_local}
_LOCAL_STAND_INS = {
    "postgresql": "postgresql://fuzz@127.0.0.1:{port}/fuzz",
    "mongodb": "mongodb://127.0.0.1:{port}/fuzz",
}


def keep_connection_check_local(case) -> None:
    """``POST /connections/check`` connects wherever its body says. A generated URI that would
    reach beyond this machine (a name to resolve, a non-loopback address) is swapped for one on
    a closed loopback port: the check still answers its 502, and this machine sends nothing
    elsewhere. URIs that stay local, or that the drivers refuse to parse, are sent as generated."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("uri"), str):
        return
    engine = body.get("engine")
    if isinstance(engine, str) and engine in _STAYS_LOCAL and not _STAYS_LOCAL[engine](body["uri"]):
        body["uri"] = _LOCAL_STAND_INS[engine].format(port=os.environ.get("FLEXDB_FUZZ_CLOSED_PORT", "1"))


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # loaded by the schemathesis CLI

    @schemathesis.hook
    def before_call(context, case, kwargs) -> None:
        if case.operation.path == "/api/v1/connections/check":
            keep_connection_check_local(case)

    @schemathesis.check
    def no_target_secret_in_response(ctx, response, case) -> bool | None:
        """The configured target's password must never come back, in any header or body."""
        canary = os.environ["FLEXDB_FUZZ_CANARY"]
        # Bytes, not text: an archive download is binary (a compressed one is not UTF-8 at all).
        if canary.encode() in response.content or any(canary in str(value) for value in response.headers.values()):
            raise AssertionError("The response shows the target's password")
        return None


# ---------------------------------------------------------------------------- the dedicated stack


@dataclass
class FuzzStack:
    origin: str
    api: ApiClient
    processes: list[ManagedProcess]
    target: str
    target_uri: str  # the target's database, without the password
    closed_port: int  # nothing listens there

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.processes)


def _claim_redis_database() -> tuple[str, redis.Redis]:
    """A Redis database of its own (with the suite's claim key), so this worker consumes only
    this stack's tasks and the shared stack's worker never sees them."""
    base = urlsplit(REDIS_URL)
    for db in range(15, 0, -1):
        url = urlunsplit((base.scheme, base.netloc, f"/{db}", base.query, ""))
        if url == REDIS_URL:
            continue
        client = redis.Redis.from_url(url)
        if client.set(_CLAIM_KEY, f"fuzz-{os.getpid()}", nx=True, ex=3600):
            client.flushdb()
            client.set(_CLAIM_KEY, f"fuzz-{os.getpid()}", ex=3600)
            return url, client
    pytest.fail("No free Redis database (1-15) for the fuzz stack; another test run holds them all.")


def _service_env_without_network(env: dict[str, str], closed_port: int) -> dict[str, str]:
    """Generated callback URLs name arbitrary hosts. The worker's callbacks (urllib) go through
    a proxy on a closed loopback port, so a delivery fails here and reaches nobody."""
    env = {k: v for k, v in env.items() if k.lower() not in ("no_proxy", "all_proxy")}
    closed = f"http://127.0.0.1:{closed_port}"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = closed
    return env


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    tmp = tmp_path_factory.mktemp("fuzz-stack")
    suffix = secrets.token_hex(4)
    # A role of its own that may not create databases: a generated restore into "another
    # database" fails inside its job instead of leaving databases on the machine's server.
    role = database = f"flexdb_fuzz_{suffix}"
    redis_url, redis_client = _claim_redis_database()
    processes: list[ManagedProcess] = []
    try:
        with pg_admin() as conn:
            conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER')
            conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
        port = free_port()
        targets = {
            "fuzz": {"engine": "postgresql", "uri": f"postgresql://{role}:{CANARY_PASSWORD}@127.0.0.1:5432/{database}"}
        }
        env = service_env(
            tmp,
            targets,
            redis_url=redis_url,
            FLEXDB_API_HOST="127.0.0.1",
            FLEXDB_API_PORT=str(port),
            FLEXDB_API_THREADS="4",
            FLEXDB_WAIT_MAX_SECONDS="1",  # a generated ?wait=3600 must not hold a thread for 30 s
            FLEXDB_CALLBACK_MAX_ATTEMPTS="2",
            # Generated connection checks mostly meet closed ports; pymongo waits this long for a
            # server each time, so keep it short (the stack's own database answers at once).
            FLEXDB_CONNECT_TIMEOUT_SECONDS="1",
        )
        closed_port = free_port()  # nothing listens there
        env = _service_env_without_network(env, closed_port)
        worker = ("-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO", "--hostname", f"fuzz-{suffix}@%h")
        worker_argv = python_argv(*worker)
        processes.append(ManagedProcess("fuzz-worker", worker_argv, env, tmp / "worker.log"))
        # The API as users run it (make run, the image): gunicorn with the project's config.
        api_argv = python_argv("-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app")
        processes.append(ManagedProcess("fuzz-api", api_argv, env, tmp / "api.log"))
        origin = f"http://127.0.0.1:{port}"
        client = ApiClient(origin + "/api/v1")
        # Healthy means everything answers, so /health must stay 200 throughout the run.
        wait_for(lambda: client.get("/health").status == 200, 60, what="fuzz stack healthy")
        yield FuzzStack(
            origin,
            client,
            processes,
            "fuzz",
            f"postgresql://{role}@127.0.0.1:5432/{database}",
            closed_port,
        )
    finally:
        for process in processes:
            process.stop()
        drop_database(database)
        with pg_admin() as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        redis_client.flushdb()  # also drops the claim


# ------------------------------------------------------------------------------------ the run


def _toml_list(values: list) -> str:
    return json.dumps(values)  # a JSON array of strings and numbers is a TOML array


def _config(stack: FuzzStack, seed: str | None) -> str:
    closed = f"127.0.0.1:{stack.closed_port}"
    # Real values beside the generated ones (each drawn half the time), so that requests get past
    # "no such target" into the code behind it: backups and restores of the stack's target,
    # schedules that parse, connection checks that succeed or meet a closed port, callbacks
    # (sent to nobody, see _service_env_without_network).
    dictionaries = {
        "targets": [stack.target],
        "uris": [stack.target_uri, f"postgresql://fuzz@{closed}/fuzz", f"mongodb://{closed}/fuzz"],
        "callbacks": [f"http://{closed}/hook"],
        "crons": ["0 4 1 1 *", "*/5 * * * *"],
        "zones": ["UTC", "Europe/Berlin"],
    }
    bindings = {
        "path.name": "targets",
        "query.target": "targets",
        "body.target": "targets",
        "body.uri": "uris",
        "body.callback_url": "callbacks",
        "body.cron": "crons",
        "body.timezone": "zones",
    }
    lines = [
        # One worker: with several, hypothesis' lambda descriptions call ast.parse from several
        # threads at once, which CPython 3.11.7 can fail with "AST constructor recursion depth
        # mismatch" (a SystemError inside the runner, nothing to do with the API).
        "workers = 1",
        "request-timeout = 30",
        "continue-on-failure = true",
        *([f"seed = {int(seed)}"] if seed else []),
        "",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        'database = "none"',
        "",
        "[cache]",
        "enabled = false",
        "",
        "[checks.negative_data_rejection]",
        f"expected-statuses = {_toml_list(NEGATIVE_DATA_STATUSES)}",
        "",
        *(f"[dictionaries.{name}]\nvalues = {_toml_list(values)}\n" for name, values in dictionaries.items()),
        "[parameters]",
        *(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}' for key, name in bindings.items()),
        "",
        "[[operations]]",
        # The connection checks answer 502 target_unreachable / authentication_failed when the
        # database they are given does not answer or refuses the credentials: the database's
        # failure, reported as a documented gateway error. 502 is allowed there and nowhere else;
        # a 500 on them still fails the run, and every other check stays on for them.
        f"include-operation-id = {_toml_list(list(CHECK_OPERATIONS))}",
        f"checks.not_a_server_error.expected-statuses = {_toml_list(['2xx', '3xx', '4xx', '502'])}",
        "",
        "[[operations]]",
        f"include-operation-id = {_toml_list(list(SEMANTIC_422_OPERATIONS))}",
        f"checks.positive_data_acceptance.expected-statuses = {_toml_list(POSITIVE_DATA_STATUSES)}",
        "",
        "[[operations]]",
        # A schema-valid Range may start past the end of the archive: 416, documented.
        'include-operation-id = ["backups_download_archive"]',
        f"checks.positive_data_acceptance.expected-statuses = {_toml_list([*POSITIVE_DATA_STATUSES, '416'])}",
        "",
    ]
    # /health answers 503 (documented, same body) only when a component is down. This stack is
    # kept healthy, so no 503 may show anywhere (checked on the recorded traffic).
    return "\n".join(lines)


@dataclass
class Interaction:
    label: str
    method: str
    path: str
    status: int
    content_type: str
    body: bytes
    headers: dict


def _interactions(ndjson: Path) -> list[Interaction]:
    found: list[Interaction] = []
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response")
            if response is None:  # a network error; schemathesis reports those itself
                continue
            headers = {k.lower(): ", ".join(v) for k, v in response["headers"].items()}
            content = response.get("content") or {}
            body = (
                base64.b64decode(content["$base64"])
                if "$base64" in content
                else str(content.get("string", "")).encode()
            )
            request = interaction["request"]
            found.append(
                Interaction(
                    recorder["label"],
                    request["method"],
                    urlsplit(request["uri"]).path,
                    response["status_code"],
                    headers.get("content-type", ""),
                    body,
                    headers,
                )
            )
    return found


def _failures_section(output: str) -> str:
    """From the first "ERRORS" or "FAILURES" banner on: what went wrong and the curl lines."""
    starts = [i for i in (output.find("= ERRORS ="), output.find("= FAILURES =")) if i >= 0]
    return output[output.rfind("\n", 0, min(starts)) + 1 :] if starts else output[-20000:]


@pytest.mark.timeout(RUN_TIMEOUT + 120)  # the stack's start and the checks after the run, too
def test_the_api_survives_schemathesis_and_keeps_its_contract(fuzz_stack: FuzzStack, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    seed = os.environ.get("FLEXDB_FUZZ_SEED")
    config.write_text(_config(fuzz_stack, seed))
    report = tmp_path / "events.ndjson"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(REPO),
        SCHEMATHESIS_HOOKS=__name__,
        FLEXDB_FUZZ_CANARY=CANARY_PASSWORD,
        FLEXDB_FUZZ_CLOSED_PORT=str(fuzz_stack.closed_port),
    )
    argv = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{fuzz_stack.origin}/api/v1/openapi.json", "--url", fuzz_stack.origin,
        "--checks", "all", "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.out").write_text(output)
    summary = re.search(r"(\d+) generated.*", output)
    print(f"schemathesis: exit {result.returncode} in {elapsed:.0f} s; {summary.group(0) if summary else '?'}")
    assert result.returncode == 0, "schemathesis found problems; reproduce with the curl lines:\n" + _failures_section(
        output
    )

    traffic = _interactions(report)
    statuses = Counter(i.status for i in traffic)
    print(f"{len(traffic)} requests, statuses {dict(sorted(statuses.items()))}")
    assert len(traffic) >= MIN_REQUESTS, f"only {len(traffic)} requests were made"
    problems: list[str] = []
    for item in traffic:
        where = f"{item.label} -> {item.status}"
        allowed_502 = item.status == 502 and item.method == "POST" and CHECK_PATHS.fullmatch(item.path) is not None
        if item.status >= 500 and not allowed_502:
            problems.append(f"{where}: server error {item.body[:300]!r}")
        if item.status >= 400 and not item.content_type.startswith("application/problem+json"):
            problems.append(f"{where}: error with content type {item.content_type!r}")
        if CANARY_PASSWORD.encode() in item.body or any(CANARY_PASSWORD in v for v in item.headers.values()):
            problems.append(f"{where}: the target's password is in the response")
    assert not problems, "\n".join(sorted(set(problems))[:40])
    # The service is still whole: both processes up, and everything still answers.
    assert all(p.alive() for p in fuzz_stack.processes), fuzz_stack.logs()[-5000:]
    health = fuzz_stack.api.get("/health")
    assert health.status == 200, health.body
    assert "request.crashed" not in fuzz_stack.processes[1].output()
