"""Run the cURL examples of the documentation, in order, and check what each one says it gets.

The convention the documents follow (explained to readers in docs/user-manual.md, "How to read
the examples"):

- Commands live in fenced ```` ```bash ```` blocks. Every ``curl`` command starts a line of its
  own (continuation lines ending in ``\\`` and a ``<<EOF`` here-document belong to it) and is
  followed by one result line::

      curl -s -X POST "$API/backups" -H 'Content-Type: application/json' -d '{"target": "orders"}'
      # → 202; .kind = "backup"; JOB_ID=.id

  The result line starts with ``# →`` and the HTTP status, then ``;``-separated items:
  ``.path = <JSON>`` (a field of the JSON answer and its value), ``until .path`` (repeat the
  command until that field is true: polling a job), ``NAME=.path`` (remember the field in the
  shell variable NAME for later commands), ``Header-Name: value`` (a response header) and
  ``contains "<text>"`` (the raw answer holds that text, a JSON string: for answers that are
  not JSON, such as ``/metrics``).
  Expected values may use variables remembered earlier (``"$BACKUP_ID"``).
- ``$API`` is the base URL; every other ``$VARIABLE`` must be set by an earlier result line.
- A ```` ```json ```` block right after a bash block shows an example answer of that block's
  last command: every field it shows must exist in the real answer (values are examples).
- A ```` ```dotenv ```` block holds the settings the examples assume (targets, schedules).
- Other lines of a bash block (``make run``, ``cp .env.example .env``, assignments such as
  ``API=...``) are for the reader and are not run; a ``curl`` anywhere else is an error, so no
  example escapes the test.

Each command runs through ``bash`` exactly as written (quoting, variables and here-documents as
a reader's shell sees them), with the variables in its environment, in a folder of the run's
own: a file one example writes (``curl -o orders.dump``) is there for a later one to send
(``--data-binary @orders.dump``). A private ``.curlrc``
(``CURL_HOME``) adds ``--write-out`` and ``--dump-header``, so the status and headers are known
without changing the command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_MARK = "# →"
STATUS_MARK = "@@flexdb-docs-status "
_FENCE = re.compile(r"^\s*```\s*([A-Za-z0-9_+-]*)\s*$")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_ITEM_UNTIL = re.compile(r"^until\s+(\.\S*)$")
_ITEM_CAPTURE = re.compile(r"^([A-Z][A-Z0-9_]*)=(\.\S*)$")
_ITEM_EQUALS = re.compile(r"^(\.\S*)\s*=\s*(.+)$")
_ITEM_CONTAINS = re.compile(r"^contains\s+(.+)$")
_ITEM_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):\s*(.+)$")
_STATUS = re.compile(r"^(\d{3})(?:\s+[A-Za-z][A-Za-z -]*)?$")


class DocError(AssertionError):
    """A document breaks the convention, or an example does not do what it says."""


# ------------------------------------------------------------------------------------ parsing


@dataclass
class Expectation:
    status: int
    equals: list[tuple[str, str]] = field(default_factory=list)  # (path, JSON text)
    until: str | None = None
    captures: list[tuple[str, str]] = field(default_factory=list)  # (variable, path)
    headers: list[tuple[str, str]] = field(default_factory=list)  # (name, value)
    contains: list[str] = field(default_factory=list)  # JSON strings the raw answer must hold


@dataclass
class DocCommand:
    doc: Path
    line: int  # 1-based line of the `curl`
    text: str  # the shell text: the command, its continuation lines and here-document
    expect: Expectation
    example: Any = None  # the JSON example answer shown after the block, if any

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"


@dataclass
class _Fence:
    lang: str
    start: int  # line index of the opening fence
    lines: list[tuple[int, str]]  # (0-based index, text)
    end: int = -1  # line index of the closing fence


def _fences(text: str, doc: Path) -> list[_Fence]:
    fences: list[_Fence] = []
    current: _Fence | None = None
    for index, line in enumerate(text.splitlines()):
        match = _FENCE.match(line)
        if current is None:
            if match:
                current = _Fence(match.group(1).lower(), index, [])
            elif line.lstrip().startswith("curl "):
                raise DocError(f"{doc.name}:{index + 1}: a curl command outside a ```bash block is never tested")
        elif match and not match.group(1):
            current.end = index
            fences.append(current)
            current = None
        else:
            current.lines.append((index, line))
    if current is not None:
        raise DocError(f"{doc.name}:{current.start + 1}: a ``` block is never closed")
    return fences


def _split_items(text: str) -> list[str]:
    """Split a result line at `;` outside double quotes."""
    items, buf, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            items.append("".join(buf).strip())
            buf = []
            continue
        buf.append(char)
    items.append("".join(buf).strip())
    return [item for item in items if item]


def parse_expectation(line: str, where: str) -> Expectation:
    body = line.strip()[len(RESULT_MARK) :].strip()
    items = _split_items(body)
    status = _STATUS.match(items[0]) if items else None
    if not status:
        raise DocError(f"{where}: the result line must start with `# → <HTTP status>`, got {line.strip()!r}")
    expect = Expectation(int(status.group(1)))
    for item in items[1:]:
        if m := _ITEM_UNTIL.match(item):
            expect.until = m.group(1)
        elif m := _ITEM_CAPTURE.match(item):
            expect.captures.append((m.group(1), m.group(2)))
        elif m := _ITEM_EQUALS.match(item):
            try:
                json.loads(m.group(2))
            except ValueError:
                raise DocError(
                    f"{where}: {item!r}: the expected value must be JSON (strings in double quotes)"
                ) from None
            expect.equals.append((m.group(1), m.group(2)))
        elif m := _ITEM_CONTAINS.match(item):
            try:
                text = json.loads(m.group(1))
            except ValueError:
                text = None
            if not isinstance(text, str):
                raise DocError(f"{where}: {item!r}: contains takes one JSON string (in double quotes)")
            expect.contains.append(m.group(1))
        elif m := _ITEM_HEADER.match(item):
            expect.headers.append((m.group(1), m.group(2).strip()))
        else:
            raise DocError(f"{where}: cannot read {item!r} on the result line")
    return expect


def _commands_in(fence: _Fence, doc: Path) -> list[DocCommand]:
    commands: list[DocCommand] = []
    lines = fence.lines
    i = 0
    while i < len(lines):
        index, line = lines[i]
        stripped = line.strip()
        if not stripped.startswith("curl "):
            if re.search(r"\bcurl\b", stripped) and not stripped.startswith("#"):
                raise DocError(
                    f"{doc.name}:{index + 1}: curl must start its own line (not in a pipe or $(...)) "
                    "so the docs test runs it"
                )
            i += 1
            continue
        start = index
        parts = [line]
        while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i][1])
        heredoc = _HEREDOC.search(" ".join(parts))
        if heredoc:
            delimiter = heredoc.group(2)
            while True:
                i += 1
                if i >= len(lines):
                    raise DocError(f"{doc.name}:{start + 1}: here-document {delimiter} is never closed")
                parts.append(lines[i][1])
                if lines[i][1].strip() == delimiter:
                    break
        i += 1
        while i < len(lines) and not lines[i][1].strip():
            i += 1
        if i >= len(lines) or not lines[i][1].strip().startswith(RESULT_MARK):
            raise DocError(f"{doc.name}:{start + 1}: a curl command needs a `# → <status>` line right after it")
        where = f"{doc.name}:{lines[i][0] + 1}"
        commands.append(DocCommand(doc, start + 1, "\n".join(parts), parse_expectation(lines[i][1], where)))
        i += 1
    return commands


def parse_doc(doc: Path) -> list[DocCommand]:
    """Every curl command of a document, in order, with what it should get."""
    text = doc.read_text(encoding="utf-8")
    fences = _fences(text, doc)
    all_lines = text.splitlines()
    commands: list[DocCommand] = []
    previous: _Fence | None = None
    for fence in fences:
        if fence.lang == "bash":
            commands.extend(_commands_in(fence, doc))
        elif any(re.search(r"(^|\s)curl\s", line) for _, line in fence.lines) and fence.lang != "json":
            raise DocError(
                f"{doc.name}:{fence.start + 1}: curl in a ```{fence.lang} block is never tested; use ```bash"
            )
        if fence.lang == "json" and previous is not None and previous.lang == "bash":
            gap = all_lines[previous.end + 1 : fence.start]
            block_commands = [c for c in commands if c.doc == doc and previous.start < c.line - 1 < previous.end]
            if not any(line.strip() for line in gap) and block_commands:
                try:
                    block_commands[-1].example = json.loads("\n".join(line for _, line in fence.lines))
                except ValueError as exc:
                    raise DocError(
                        f"{doc.name}:{fence.start + 1}: the example answer is not valid JSON ({exc})"
                    ) from None
        previous = fence
    return commands


def dotenv_settings(doc: Path) -> dict[str, str]:
    """``NAME=value`` lines of the document's ```dotenv blocks."""
    values: dict[str, str] = {}
    for fence in _fences(doc.read_text(encoding="utf-8"), doc):
        if fence.lang != "dotenv":
            continue
        for index, line in fence.lines:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            name, sep, value = stripped.partition("=")
            if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise DocError(f"{doc.name}:{index + 1}: a dotenv line must be NAME=value")
            values[name] = value
    return values


# ----------------------------------------------------------------------------- JSON and shape


def json_path(value: Any, path: str, where: str) -> Any:
    """``.a.b[0].c`` inside a JSON value (``.`` is the whole value)."""
    if path == ".":
        return value
    position, current = 0, value
    for match in _PATH_PART.finditer(path):
        if match.start() != position:
            break
        position = match.end()
        key, index = match.groups()
        try:
            current = current[key] if key is not None else current[int(index)]
        except (KeyError, IndexError, TypeError):
            raise DocError(f"{where}: the answer has no {path} ({path[:position]} is missing)") from None
    if position != len(path):
        raise DocError(f"{where}: {path!r} is not a path like .items[0].id")
    return current


def missing_fields(example: Any, actual: Any, prefix: str = "") -> list[str]:
    """Fields the example shows that the real answer does not have (values are not compared)."""
    if isinstance(example, dict):
        if not isinstance(actual, dict):
            return [prefix or "."]
        missing = []
        for key, value in example.items():
            if key not in actual:
                missing.append(f"{prefix}.{key}")
            else:
                missing.extend(missing_fields(value, actual[key], f"{prefix}.{key}"))
        return missing
    if isinstance(example, list) and example:
        if not isinstance(actual, list) or not actual:
            return [f"{prefix}[0]"]
        return missing_fields(example[0], actual[0], f"{prefix}[0]")
    return []


# ------------------------------------------------------------------------------------ running


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    text: str


class DocRunner:
    """Runs the commands of one document in order, carrying the variables they set."""

    def __init__(
        self,
        api_url: str,
        workdir: Path,
        rewrite: Callable[[str], str] = lambda text: text,
        poll_timeout: float = 60.0,
        poll_interval: float = 0.3,
        on_failure: Callable[[], str] = lambda: "",
    ) -> None:
        self.variables: dict[str, str] = {"API": api_url.rstrip("/")}
        self.workdir = workdir
        self.rewrite = rewrite
        self.poll_timeout = poll_timeout
        self.poll_interval = poll_interval
        self.on_failure = on_failure
        self.headers_file = workdir / "headers.txt"
        workdir.mkdir(parents=True, exist_ok=True)
        # curl reads $CURL_HOME/.curlrc before its arguments: the status and the headers are
        # captured without touching the command as the document shows it.
        (workdir / ".curlrc").write_text(
            f'write-out = "\\n{STATUS_MARK}%{{http_code}}\\n"\ndump-header = "{self.headers_file}"\n'
        )

    def run_all(self, commands: Iterable[DocCommand]) -> int:
        count = 0
        for command in commands:
            self.run(command)
            count += 1
        return count

    def run(self, command: DocCommand) -> Answer:
        self._check_variables(command)
        expect = command.expect
        deadline = time.monotonic() + self.poll_timeout
        while True:
            answer = self._execute(command)
            if answer.status != expect.status:
                self._fail(command, answer, f"expected HTTP {expect.status}, got {answer.status}")
            if expect.until is None or json_path(answer.body, expect.until, command.where):
                break
            if time.monotonic() > deadline:
                self._fail(command, answer, f"{expect.until} did not become true within {self.poll_timeout:g} s")
            time.sleep(self.poll_interval)
        captured: dict[str, str] = {}
        for name, path in expect.captures:
            value = json_path(answer.body, path, command.where)
            if value is None or value == "" or isinstance(value, (dict, list)):
                self._fail(command, answer, f"{name}={path} needs a string or number, the answer has {value!r}")
            captured[name] = str(value)
        self.variables.update(captured)
        for path, raw in expect.equals:
            wanted = json.loads(self.rewrite(self._expand(raw, command)))
            got = json_path(answer.body, path, command.where)
            if got != wanted:
                self._fail(command, answer, f"{path} is {got!r}, the document says {wanted!r}")
        for name, raw in expect.headers:
            wanted = self.rewrite(self._expand(raw, command))
            got = answer.headers.get(name.lower())
            if got != wanted:
                self._fail(command, answer, f"header {name} is {got!r}, the document says {wanted!r}")
        for raw in expect.contains:
            wanted = json.loads(self.rewrite(self._expand(raw, command)))
            if wanted not in answer.text:
                self._fail(command, answer, f"the answer does not contain {wanted!r}")
        self._trace(command, answer)
        if command.example is not None:
            missing = missing_fields(command.example, answer.body)
            if missing:
                self._fail(command, answer, f"the example answer shows fields the real one lacks: {missing}")
        return answer

    # ---------------------------------------------------------------- helpers

    def _trace(self, command: DocCommand, answer: Answer) -> None:
        """With DOCS_TRACE=<file>, every command and its real answer go to that file: the
        quickest way to write an example answer for a new section."""
        target = os.environ.get("DOCS_TRACE")
        if target:
            with open(target, "a", encoding="utf-8") as handle:
                handle.write(f"## {command.where}\n{command.text}\n# → {answer.status}\n{answer.text}\n\n")

    def _check_variables(self, command: DocCommand) -> None:
        for match in _VARIABLE.finditer(command.text):
            name = match.group(1) or match.group(2)
            if name not in self.variables:
                raise DocError(
                    f"{command.where}: uses ${name}, which no earlier result line sets (e.g. `# → 202; {name}=.id`)"
                )

    def _expand(self, text: str, command: DocCommand) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if name not in self.variables:
                raise DocError(f"{command.where}: ${name} is not set")
            return self.variables[name]

        return _VARIABLE.sub(value, text)

    def _execute(self, command: DocCommand) -> Answer:
        env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
        env.update(self.variables, CURL_HOME=str(self.workdir))
        self.headers_file.unlink(missing_ok=True)
        try:
            proc = subprocess.run(
                ["bash", "-c", self.rewrite(command.text)],
                env=env,
                cwd=self.workdir,  # files an example writes (curl -o) or sends (@file) are its own
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DocError(f"{command.where}: the command did not finish within 30 s:\n{command.text}") from None
        out, mark, status = proc.stdout.rpartition(STATUS_MARK)
        if proc.returncode != 0 or not mark:
            raise DocError(
                f"{command.where}: the command failed (exit {proc.returncode}):\n{command.text}\n"
                f"stderr: {proc.stderr.strip()}\nstdout: {proc.stdout.strip()[:2000]}{self.on_failure()}"
            )
        text = out.removesuffix("\n")
        if text.startswith("HTTP/"):  # `curl -i`: headers come first
            text = re.split(r"\r?\n\r?\n", text, maxsplit=1)[1] if re.search(r"\r?\n\r?\n", text) else ""
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        return Answer(int(status.strip()), self._headers(), body, text)

    def _headers(self) -> dict[str, str]:
        try:
            raw = self.headers_file.read_text(errors="replace")
        except OSError:
            return {}
        headers: dict[str, str] = {}
        for line in raw.splitlines():
            name, sep, value = line.partition(":")
            if sep and not line.startswith("HTTP/"):
                headers[name.strip().lower()] = value.strip()
        return headers

    def _fail(self, command: DocCommand, answer: Answer, problem: str) -> None:
        raise DocError(
            f"{command.where}: {problem}\ncommand:\n{command.text}\nanswer ({answer.status}): {answer.text[:3000]}"
            f"{self.on_failure()}"
        )


def substitutions(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """A rewrite that replaces whole words (database names, URIs) in commands."""
    if not mapping:
        return lambda text: text
    pattern = re.compile(
        "|".join(rf"(?<![\w/]){re.escape(key)}(?![\w])" for key in sorted(mapping, key=len, reverse=True))
    )
    return lambda text: pattern.sub(lambda m: mapping[m.group(0)], text)
