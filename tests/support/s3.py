"""A real S3 HTTP endpoint on 127.0.0.1 for the tests: moto in server mode, in its own process.

``moto_s3()`` starts one server on a free port and yields its endpoint URL; ``s3_blob_store()``
yields an :class:`S3BlobStore` on a fresh bucket of such a server (or of ``endpoint_url``).
moto keeps everything in memory and checks no signature, so any key pair works; the tests use
a random secret so they can look for it where it must not appear.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from shared.storage.s3 import MIN_PART_BYTES, S3BlobStore
from tests.support.processes import ManagedProcess, free_port, wait_for

REGION = "us-east-1"
ACCESS_KEY_ID = "flexdb-test-key-id"
SECRET_ACCESS_KEY = "flexdb-test-secret-" + secrets.token_hex(16)
START_TIMEOUT_SECONDS = 30.0


def _moto_argv(port: int) -> list[str]:
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server is not installed; pip install -r requirements/dev.txt (moto[server])")
    return [found, "-H", "127.0.0.1", "-p", str(port)]


def _answers(endpoint_url: str) -> bool:
    with urllib.request.urlopen(endpoint_url + "/moto-api/", timeout=2) as response:
        return response.status == 200


@contextmanager
def moto_s3() -> Iterator[str]:
    """An S3 endpoint (moto server) on 127.0.0.1 for the duration of the block: its URL."""
    port = free_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="flexdb-test-s3-"))
    # No AWS_* or FLEXDB_* variables reach it: the server must not depend on the caller's account.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "FLEXDB_"))}
    process = ManagedProcess("moto_server", _moto_argv(port), env, workdir / "moto.log")
    try:
        wait_for(lambda: process.alive() and _answers(endpoint_url), START_TIMEOUT_SECONDS, what=f"moto on {port}")
        yield endpoint_url
    finally:
        process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def s3_client(endpoint_url: str) -> Any:
    """A plain boto3 client on the endpoint, to set up buckets and look behind the store's back."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    name = name or "flexdb-test-" + secrets.token_hex(6)
    s3_client(endpoint_url).create_bucket(Bucket=name)
    return name


def blob_store(endpoint_url: str, bucket: str, prefix: str = "", **overrides: Any) -> S3BlobStore:
    options: dict[str, Any] = {
        "endpoint_url": endpoint_url,
        "region": REGION,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "addressing_style": "path",
        "part_bytes": MIN_PART_BYTES,
        "connect_timeout": 2,
        "max_attempts": 2,
    }
    return S3BlobStore(bucket, prefix, **(options | overrides))


@contextmanager
def s3_blob_store(endpoint_url: str | None = None, prefix: str = "backups") -> Iterator[S3BlobStore]:
    """A store on a fresh bucket: of ``endpoint_url``, or of a moto server of its own."""
    if endpoint_url is not None:
        yield blob_store(endpoint_url, create_bucket(endpoint_url), prefix)
        return
    with moto_s3() as own_endpoint:
        yield blob_store(own_endpoint, create_bucket(own_endpoint), prefix)
