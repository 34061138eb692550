"""A small client of the FlexDB HTTP API: one method per route, answers as ``Answer``.

Every method returns the API's answer untouched (status, headers, raw text), so the command
line can print exactly what the API said (``--json``); errors become ``CliError``s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from flexdb_cli import __version__
from flexdb_cli.errors import ApiProblem, ApiUnreachable

API_PREFIX = "/api/v1"
PROBLEM_MEDIA_TYPE = "application/problem+json"
_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_FILENAME = re.compile(r'filename="([^"]+)"')


def without_credentials(url: str) -> str:
    """The URL as it may be shown: any ``user:password@`` removed."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str
    url: str

    @property
    def data(self) -> Any:
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            raise ApiUnreachable(
                f"{without_credentials(self.url)} answered {self.status} with something that is not JSON: "
                "is --url (FLEXDB_URL) the FlexDB service?"
            ) from None


@dataclass(frozen=True)
class ArchiveDownload:
    """An archive being received: its announced size, checksum and file name, and its bytes."""

    length: int | None
    sha256: str | None
    filename: str | None
    _response: requests.Response

    def chunks(self, size: int) -> Iterator[bytes]:
        try:
            yield from self._response.iter_content(size)
        except requests.RequestException as exc:
            raise ApiUnreachable(f"the download broke off: {_reason(exc)}") from None


def _reason(exc: requests.RequestException) -> str:
    """The useful end of requests' long messages ("Connection refused", "timed out")."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time (--timeout)"
    found = _ERRNO_TEXT.findall(str(exc))
    return found[-1].strip() if found else type(exc).__name__


class FlexDBClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        base = base_url.rstrip("/")
        # Accept the API's own base (…/api/v1) as well as the service's.
        self.base_url = base.removesuffix(API_PREFIX)
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"flexdb-cli/{__version__}"
        self._session.headers["Accept"] = f"application/json, {PROBLEM_MEDIA_TYPE}"
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    # ------------------------------------------------------------------ system and targets

    def health(self) -> Answer:
        # 503 is the same body as 200, saying which part is down: an answer, not an error.
        return self._call("GET", "/health", ok=(200, 503))

    def targets(self) -> Answer:
        return self._call("GET", "/targets")

    def check_target(self, name: str) -> Answer:
        return self._call("POST", f"/targets/{_segment(name)}/check")

    # ------------------------------------------------------------------ jobs

    def submit_backup(self, target: str, options: Mapping[str, Any]) -> Answer:
        return self._call("POST", "/backups", body={"target": target, "options": dict(options)}, ok=(202,))

    def submit_restore(self, backup_id: str, **fields: Any) -> Answer:
        body = {"backup_id": backup_id, **{k: v for k, v in fields.items() if v is not None}}
        return self._call("POST", "/restores", body=body, ok=(202,))

    def job(self, job_id: str, wait: int = 0) -> Answer:
        params = {"wait": wait} if wait else None
        # A long-poll is held up to ``wait`` seconds before the API answers.
        return self._call("GET", f"/jobs/{_segment(job_id)}", params=params, read_timeout=self.timeout + wait)

    def jobs(self, **filters: Any) -> Answer:
        return self._call("GET", "/jobs", params=filters)

    def cancel_job(self, job_id: str) -> Answer:
        return self._call("POST", f"/jobs/{_segment(job_id)}/cancel", ok=(200, 202))

    # ------------------------------------------------------------------ backups

    def backups(self, **filters: Any) -> Answer:
        return self._call("GET", "/backups", params=filters)

    def backup(self, backup_id: str) -> Answer:
        return self._call("GET", f"/backups/{_segment(backup_id)}")

    def set_pinned(self, backup_id: str, pinned: bool) -> Answer:
        return self._call("PATCH", f"/backups/{_segment(backup_id)}", body={"pinned": pinned})

    def delete_backup(self, backup_id: str) -> Answer:
        return self._call("DELETE", f"/backups/{_segment(backup_id)}", ok=(204,))

    def import_archive(self, target: str, archive: IO[bytes]) -> Answer:
        # requests streams a file object from disk (with its Content-Length), never whole in memory.
        return self._call(
            "POST",
            "/backups/import",
            params={"target": target},
            data=archive,
            headers={"Content-Type": "application/octet-stream"},
            ok=(201,),
        )

    @contextmanager
    def download_archive(self, backup_id: str) -> Iterator[ArchiveDownload]:
        response = self._send("GET", f"/backups/{_segment(backup_id)}/archive", stream=True)
        try:
            if response.status_code != 200:
                self._raise_for(response.status_code, response.headers, response.text, response.url)
            length = response.headers.get("Content-Length")
            filename = _FILENAME.search(response.headers.get("Content-Disposition", ""))
            yield ArchiveDownload(
                int(length) if length and length.isdigit() else None,
                response.headers.get("X-FlexDB-SHA256"),
                filename.group(1) if filename else None,
                response,
            )
        finally:
            response.close()

    # ------------------------------------------------------------------ schedules

    def schedules(self, **filters: Any) -> Answer:
        return self._call("GET", "/schedules", params=filters)

    def schedule(self, schedule_id: str) -> Answer:
        return self._call("GET", f"/schedules/{_segment(schedule_id)}")

    def create_schedule(self, body: Mapping[str, Any]) -> Answer:
        return self._call("POST", "/schedules", body=dict(body), ok=(201,))

    def update_schedule(self, schedule_id: str, changes: Mapping[str, Any]) -> Answer:
        return self._call("PATCH", f"/schedules/{_segment(schedule_id)}", body=dict(changes))

    def delete_schedule(self, schedule_id: str) -> Answer:
        return self._call("DELETE", f"/schedules/{_segment(schedule_id)}", ok=(204,))

    def run_schedule(self, schedule_id: str) -> Answer:
        return self._call("POST", f"/schedules/{_segment(schedule_id)}/run", ok=(202,))

    # ------------------------------------------------------------------ HTTP

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        read_timeout: float | None = None,
    ) -> Answer:
        response = self._send(
            method, path, params=params, json=body, data=data, headers=headers, read_timeout=read_timeout
        )
        answer = Answer(response.status_code, response.headers, response.text, response.url)
        if answer.status not in ok:
            self._raise_for(answer.status, answer.headers, answer.text, answer.url)
        return answer

    def _send(self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any) -> requests.Response:
        if kwargs.get("params"):
            kwargs["params"] = {k: v for k, v in kwargs["params"].items() if v is not None}
        try:
            return self._session.request(
                method,
                self.base_url + API_PREFIX + path,
                timeout=(self.timeout, read_timeout or self.timeout),
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise ApiUnreachable(
                f"cannot reach the API at {without_credentials(self.base_url)}: {_reason(exc)}"
            ) from None

    @staticmethod
    def _raise_for(status: int, headers: Mapping[str, str], text: str, url: str) -> None:
        body = Answer(status, headers, text, url).data if text else None
        if isinstance(body, dict) and body.get("code"):
            raise ApiProblem(status, body)
        raise ApiUnreachable(
            f"{without_credentials(url)} answered {status} without a problem document: "
            "is --url (FLEXDB_URL) the FlexDB service?"
        )


def _segment(value: str) -> str:
    """A name or id as one path segment (a ``/`` in it cannot reach another route)."""
    return quote(value, safe="")
