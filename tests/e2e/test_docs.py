"""Every cURL command in docs/user-manual.md, demo.md, setup.md and commands.md runs, in order,
against a live stack, and gets what the document says it gets (the convention is in
tests/support/docs.py and, for readers, in the user manual's "How to read the examples"). Also:
every route of the API has a tested example in the user manual, and the documents' links lead
to files and headings that exist.

The stack is this module's own: the API under gunicorn and a Celery worker started with the very
commands of ``make run`` (scripts/run_stack.py COMMANDS), on a Redis database claimed for this
module alone (the suite's shared ``stack`` has a worker on the suite's database that would take
our tasks and not know our targets), with the targets and schedules of the documents' ```dotenv
blocks. Only what cannot be the same on a test machine is replaced in the commands: the targets'
URIs point at databases made for this run, and database names in request bodies get a unique
prefix so two runs on one machine never meet.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.run_stack import COMMANDS
from shared.engines import engine_class, engine_names
from tests.conftest import drop_database, pg_admin, pg_uri, service_env
from tests.support.docs import DocCommand, DocError, DocRunner, dotenv_settings, parse_doc, substitutions
from tests.support.mongo import MongoTestServer
from tests.support.processes import ApiClient, ManagedProcess, free_port, python_argv, wait_for

REPO = Path(__file__).resolve().parents[2]
MANUAL = REPO / "docs" / "user-manual.md"
DEMO = REPO / "docs" / "demo.md"
SETUP = REPO / "docs" / "setup.md"
COMMANDS_DOC = REPO / "docs" / "commands.md"
# Run in this order, each with fresh variables; at least this many examples in each.
DOCS = {MANUAL: 25, DEMO: 8, SETUP: 2, COMMANDS_DOC: 0}
# The documents whose examples assume the settings of their ```dotenv blocks (setup.md shows
# other settings, for Docker, and its examples assume none).
SETTINGS_DOCS = (MANUAL, DEMO)
# Documents the pages link to before they exist (announced: the n8n workflows).
ANNOUNCED_LINKS = {"docs/n8n/README.md"}
API_PREFIX = "/api/v1"
# The engines' own databases: examples name them to show the refusal, so they are not renamed.
SYSTEM_DATABASES = {
    name
    for engine in engine_names()
    for name in engine_class(engine).forbidden_databases | engine_class(engine).system_databases
}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="the documents' examples are curl commands: install curl"),
    pytest.mark.skipif(shutil.which("bash") is None, reason="the examples are bash; bash is not on PATH"),
]


# ------------------------------------------------------------------------------- the settings


def _doc_settings() -> dict[str, str]:
    """The ```dotenv blocks of the documents; a setting shown twice must be shown the same."""
    merged: dict[str, str] = {}
    targets: dict[str, dict] = {}
    for doc in SETTINGS_DOCS:
        for name, value in dotenv_settings(doc).items():
            if name == "FLEXDB_TARGETS":
                for target, spec in json.loads(value).items():
                    if targets.setdefault(target, spec) != spec:
                        raise DocError(f"{doc.name}: target {target!r} differs from the other document's")
            elif merged.setdefault(name, value) != value:
                raise DocError(f"{doc.name}: {name} differs from the other document's")
    merged["FLEXDB_TARGETS"] = json.dumps(targets)
    return merged


def test_the_documents_follow_the_convention() -> None:
    """Fast, no stack: the documents parse, have examples, and set what they use."""
    for doc, minimum in DOCS.items():
        commands = parse_doc(doc)
        assert len(commands) >= minimum, f"{doc.name} has too few tested examples"
        known = {"API"}
        for command in commands:
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", command.text):
                assert name in known, f"{command.where}: ${name} is used before a result line sets it"
            known.update(name for name, _ in command.expect.captures)
    settings = _doc_settings()
    assert json.loads(settings["FLEXDB_TARGETS"]), "the documents must show the targets they use in a ```dotenv block"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Run this:\n\ncurl -s $API/health\n", "outside a ```bash block"),
        ('```sh\ncurl -s "$API/health"\n# → 200\n```\n', "use ```bash"),
        ('```bash\ncurl -s "$API/health"\n```\n', "needs a `# → <status>` line"),
        ('```bash\nID=$(curl -s "$API/health" | jq -r .id)\n# → 200\n```\n', "must start its own line"),
        ('```bash\ncurl -s "$API/health"\n# → ok\n```\n', "must start with `# → <HTTP status>`"),
        ('```bash\ncurl -s "$API/health"\n# → 200; .status is ok\n```\n', "cannot read"),
        ('```bash\ncurl -s "$API/health"\n# → 200; .status = ok\n```\n', "must be JSON"),
        ('```bash\ncurl -s "$API/health"\n# → 200\n```\n\n```json\n{"status": \n```\n', "not valid JSON"),
        ('```bash\ncurl -s -d @- "$API/x" <<EOF\n{}\n```\n', "never closed"),
        ('```bash\ncurl -s "$API/x"\n# → 200; contains flexdb_jobs\n```\n', "contains takes one JSON string"),
    ],
)
def test_the_convention_refuses_examples_the_test_would_not_run(tmp_path: Path, text: str, problem: str) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    with pytest.raises(DocError, match=re.escape(problem)):
        parse_doc(doc)


def test_the_convention_reads_result_lines_and_examples(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\nAPI=http://127.0.0.1:8000/api/v1\n"
        'curl -s -X POST "$API/restores" -d @- <<EOF\n{"backup_id": "$B"}\nEOF\n'
        '# → 202 Accepted; .kind = "restore"; until .done; JOB_ID=.id; Location: /api/v1/jobs/$JOB_ID\n```\n\n'
        '```json\n{"kind": "restore", "links": {"self": "x"}}\n```\n'
    )
    [command] = parse_doc(doc)
    assert command.line == 3 and command.text.endswith("\nEOF")
    expect = command.expect
    assert (expect.status, expect.until, expect.captures) == (202, ".done", [("JOB_ID", ".id")])
    assert expect.equals == [(".kind", '"restore"')]
    assert expect.headers == [("Location", "/api/v1/jobs/$JOB_ID")]
    assert command.example == {"kind": "restore", "links": {"self": "x"}}


def test_the_convention_reads_text_assertions(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        '```bash\ncurl -s "${API%/api/v1}/metrics"\n'
        '# → 200; contains "# TYPE flexdb_jobs gauge"; contains "flexdb_backups{target=\\"orders\\"}"\n```\n'
    )
    [command] = parse_doc(doc)
    assert command.expect.contains == ['"# TYPE flexdb_jobs gauge"', '"flexdb_backups{target=\\"orders\\"}"']
    assert _route_of(command) == ("GET", "/metrics")


def _route_of(command: DocCommand) -> tuple[str, str] | None:
    """(METHOD, path on the server) of a command, or None when it calls a URL taken from an
    answer (``$NEXT``). ``$API/x`` is ``/api/v1/x``; ``${API%/api/v1}/x`` (the server's root, for
    routes outside the API prefix) is ``/x``."""
    text = command.text.split("<<", 1)[0]
    url = re.search(r'\$(API|\{API\}|\{API%/api/v1\})([^"\s?]*)', text)
    if url is None:
        return None
    path = url.group(2) if url.group(1).startswith("{API%") else API_PREFIX + url.group(2)
    method = re.search(r"(?:-X|--request)\s+([A-Z]+)", text)
    posts = re.search(r"(?:^|\s)(?:-d|--data(?:-binary|-raw)?|--json)\s", text)
    return (method.group(1) if method else "POST" if posts else "GET"), path


def test_every_route_is_run_in_the_user_manual(tmp_path: Path) -> None:
    from api import create_app
    from shared.core.settings import Settings

    settings = Settings.from_env(
        {
            "FLEXDB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nobody answers: no side effects
            "FLEXDB_STORAGE_DIR": str(tmp_path),
            "FLEXDB_CONNECT_TIMEOUT_SECONDS": "1",
        }
    )
    app = create_app(settings)
    called = [route for command in parse_doc(MANUAL) if (route := _route_of(command))]
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        pattern = re.compile("^" + re.sub(r"<[^>]+>", "[^/]+", re.escape(rule.rule)) + "$")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if not any(m == method and pattern.match(p) for m, p in called):
                missing.append(f"{method} {rule.rule}")
    assert not missing, f"docs/user-manual.md has no tested example for: {missing}"


# ---------------------------------------------------------------------------------- the stack


@dataclass
class DocsStack:
    api_url: str
    suffix: str
    test_uris: dict[str, str]
    processes: list[ManagedProcess]
    databases: set[str] = field(default_factory=set)  # made by the examples, dropped at the end

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} log (tail) ---\n" + "\n".join(p.output().splitlines()[-15:]) for p in self.processes
        )

    def runner(self, doc: Path, workdir: Path) -> DocRunner:
        mapping = dict(self.test_uris)
        stem = re.sub(r"\W", "_", doc.stem)
        for command in parse_doc(doc):
            for name in re.findall(r'"database":\s*"([A-Za-z_][A-Za-z0-9_$-]*)"', command.text):
                if name in SYSTEM_DATABASES:  # refused at submit, so never made: shown as written
                    continue
                unique = f"flexdb_doc_{self.suffix}_{stem}_{name}"[:63]
                mapping[name] = unique
                self.databases.add(unique)
        return DocRunner(self.api_url, workdir, rewrite=substitutions(mapping), on_failure=lambda: "\n" + self.logs())


def _seed_postgresql(database: str) -> None:
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    import psycopg

    with psycopg.connect(pg_uri(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, total numeric)")
        conn.execute("INSERT INTO customers (name) SELECT 'customer ' || n FROM generate_series(1, 50) n")
        conn.execute(
            "INSERT INTO orders (customer_id, total) SELECT 1 + n % 50, n * 1.5 FROM generate_series(1, 500) n"
        )


def _seed_mongodb(server: MongoTestServer, database: str) -> None:
    with server.client() as client:
        client[database]["orders"].insert_many([{"n": n, "total": n * 1.5} for n in range(200)])
        client[database]["carts"].insert_many([{"n": n} for n in range(20)])


@pytest.fixture(scope="module")
def docs_stack(
    tmp_path_factory: pytest.TempPathFactory, mongo_server: MongoTestServer, own_redis_url: str
) -> Iterator[DocsStack]:
    tmp = tmp_path_factory.mktemp("docs-stack")
    settings = _doc_settings()
    suffix = secrets.token_hex(4)
    doc_targets = json.loads(settings["FLEXDB_TARGETS"])
    made = {"postgresql": f"flexdb_doc_{suffix}_src", "mongodb": f"flexdb_doc_{suffix}_shop"}
    uris = {"postgresql": pg_uri(made["postgresql"]), "mongodb": mongo_server.uri(made["mongodb"])}
    unknown = {name for name, spec in doc_targets.items() if spec["engine"] not in uris}
    assert not unknown, f"the docs use targets of an engine this test has no database for: {unknown}"
    targets = {name: {**spec, "uri": uris[spec["engine"]]} for name, spec in doc_targets.items()}
    redis_url = own_redis_url
    _seed_postgresql(made["postgresql"])
    _seed_mongodb(mongo_server, made["mongodb"])
    port = free_port()
    env = service_env(
        tmp,
        targets,
        redis_url=redis_url,
        FLEXDB_API_PORT=str(port),
        FLEXDB_SCHEDULES=settings.get("FLEXDB_SCHEDULES", "[]"),
    )
    # The commands `make run` uses (and the images), placeholders filled as run_stack does.
    values = {"log_level": "INFO", "beat_schedule": str(tmp / "beat-schedule"), "flower_host": "", "flower_port": ""}
    processes = [
        ManagedProcess(name, python_argv(*(part.format(**values) for part in COMMANDS[name])), env, tmp / f"{name}.log")
        for name in ("worker", "api")
    ]
    stack = DocsStack(
        f"http://127.0.0.1:{port}{API_PREFIX}",
        suffix,
        {spec["uri"]: uris[spec["engine"]] for spec in doc_targets.values()},
        processes,
    )
    client = ApiClient(stack.api_url)
    try:
        try:
            wait_for(lambda: client.get("/health").status == 200, 60, what="the docs stack healthy")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{client.get('/health').text}\n{stack.logs()}")
        yield stack
    finally:
        for process in processes:
            process.stop()
        for name in {made["postgresql"], *stack.databases}:
            drop_database(name)
        with mongo_server.client() as mongo:
            for name in {made["mongodb"], *stack.databases}:
                mongo.drop_database(name)


@pytest.mark.parametrize("doc", list(DOCS), ids=lambda doc: doc.name)
def test_the_examples_run(docs_stack: DocsStack, tmp_path: Path, doc: Path) -> None:
    runner = docs_stack.runner(doc, tmp_path)
    assert runner.run_all(parse_doc(doc)) >= DOCS[doc]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^#{1,6}\s+(.*)$", line)):
            slug = _slug(m.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("doc", list(DOCS), ids=lambda doc: doc.name)
def test_links_lead_somewhere(doc: Path) -> None:
    broken = []
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if path.is_relative_to(REPO) and path.relative_to(REPO).as_posix() in ANNOUNCED_LINKS:
            continue
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.name}: {broken}"
