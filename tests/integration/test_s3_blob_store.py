"""The S3 blob store against a real S3 HTTP endpoint: moto in server mode on 127.0.0.1, started
by the fixture as its own process (tests/support/s3.py) and spoken to over HTTP by boto3, as
MinIO or AWS would be. Parts are 5 MiB, the smallest S3 takes, so multipart uploads stay quick."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.core.errors import ConfigurationError, StorageError, StorageFull
from shared.core.settings import Settings
from shared.domain.ports import BlobMissing
from shared.storage.s3 import MIN_PART_BYTES, PART_SUFFIX, S3BlobStore
from tests.support.processes import free_port
from tests.support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, blob_store, create_bucket, moto_s3, s3_client

PART = MIN_PART_BYTES
PREFIX = "team-a/backups"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    return create_bucket(endpoint)


@pytest.fixture
def store(endpoint: str, bucket: str) -> S3BlobStore:
    return blob_store(endpoint, bucket, PREFIX)


def put(store: S3BlobStore, key: str, data: bytes, chunk: int = 1_000_003) -> None:
    with store.writer(key) as sink:
        for start in range(0, len(data), chunk):
            sink.write(data[start : start + chunk])
        sink.commit()


def read_all(store: S3BlobStore, key: str, **range_: Any) -> bytes:
    with store.open(key, **range_) as handle:
        return b"".join(iter(lambda: handle.read(65536), b""))


def unfinished_uploads(endpoint: str, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_a_multipart_blob_streams_in_and_reads_back_with_its_checksum(store, endpoint, bucket) -> None:
    data = os.urandom(3 * PART + 123_457)
    put(store, "b1/archive.dump", data)
    assert hashlib.sha256(read_all(store, "b1/archive.dump")).hexdigest() == hashlib.sha256(data).hexdigest()
    head = s3_client(endpoint).head_object(Bucket=bucket, Key=f"{PREFIX}/b1/archive.dump")
    assert head["ETag"].endswith('-4"')  # three full parts and the tail: a real multipart upload
    assert unfinished_uploads(endpoint, bucket) == []


def test_a_small_blob_is_one_put_and_an_empty_one_is_fine(store, endpoint, bucket) -> None:
    put(store, "b1/manifest.json", b'{"id": "b1"}')
    put(store, "b1/empty", b"")
    assert read_all(store, "b1/manifest.json") == b'{"id": "b1"}'
    assert read_all(store, "b1/empty") == b""
    assert "-" not in s3_client(endpoint).head_object(Bucket=bucket, Key=f"{PREFIX}/b1/manifest.json")["ETag"]


def test_ranged_reads(store) -> None:
    data = os.urandom(PART + 4096)
    put(store, "b2/archive.dump", data)
    key = "b2/archive.dump"
    assert read_all(store, key, start=PART - 10, length=20) == data[PART - 10 : PART + 10]  # across parts
    assert read_all(store, key, start=PART) == data[PART:]
    assert read_all(store, key, start=0, length=1) == data[:1]
    assert read_all(store, key, start=len(data) - 5, length=100) == data[-5:]  # past the end: what there is
    assert read_all(store, key, start=len(data) + 10) == b""
    assert read_all(store, key, start=7, length=0) == b""
    with store.open(key, start=100, length=50) as handle:
        assert handle.read(10) == data[100:110]
        assert handle.read() == data[110:150]
    assert handle.closed
    with pytest.raises(BlobMissing):
        store.open("b2/missing", start=3, length=0)


def test_a_blob_is_invisible_before_commit_and_after_abort(store, endpoint, bucket) -> None:
    key = "b3/archive.dump"
    sink = store.writer(key)
    sink.write(os.urandom(PART + 10))  # one part uploaded, ten bytes buffered
    assert store.stat(key) is None
    with pytest.raises(BlobMissing):
        store.open(key)
    listed = [info.key for info in store.list("b3/")]
    assert key not in listed
    # Only the unfinished upload's marker shows, as a local store's partial file does.
    assert len(listed) == 1 and listed[0].startswith(key + ".") and listed[0].endswith(PART_SUFFIX)
    sink.abort()
    assert store.stat(key) is None and list(store.list("b3/")) == []
    assert unfinished_uploads(endpoint, bucket) == []
    with pytest.raises(StorageError):
        sink.write(b"more")  # an aborted writer takes nothing


def test_list_by_prefix_is_relative_to_the_store_prefix(store, endpoint, bucket) -> None:
    before = time.time()
    put(store, "b4/one", b"1")
    put(store, "b4/two", b"22")
    put(store, "b44/three", b"333")
    blob_store(endpoint, bucket, "another-team").writer("b4/foreign").commit()
    listed = {info.key: info for info in store.list("b4/")}
    assert sorted(listed) == ["b4/one", "b4/two"]
    assert listed["b4/two"].size == 2 and before - 5 <= listed["b4/two"].modified <= time.time() + 5
    assert {info.key for info in store.list()} == {"b4/one", "b4/two", "b44/three"}
    raw = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/")["Contents"]
    assert {item["Key"] for item in raw} == {f"{PREFIX}/b4/one", f"{PREFIX}/b4/two", f"{PREFIX}/b44/three"}
    whole_bucket = {info.key for info in blob_store(endpoint, bucket).list()}
    assert whole_bucket >= {"team-a/backups/b4/one", "another-team/b4/foreign"}


def test_list_pages_through_every_page(store, monkeypatch) -> None:
    for number in range(7):
        put(store, f"many/{number}", b"x")
    client = store._client()
    real_list = client.list_objects_v2
    pages = []

    def list_objects_v2(**kwargs: Any) -> Any:  # two keys a page instead of S3's 1000
        pages.append(kwargs.get("ContinuationToken"))
        return real_list(**kwargs, MaxKeys=2)

    monkeypatch.setattr(client, "list_objects_v2", list_objects_v2)
    assert sorted(info.key for info in store.list("many/")) == [f"many/{number}" for number in range(7)]
    assert len(pages) == 4


def test_stat(store) -> None:
    assert store.stat("b5/archive.dump") is None
    assert store.stat("../escape") is None
    put(store, "b5/archive.dump", b"abc")
    info = store.stat("b5/archive.dump")
    assert info is not None and (info.key, info.size) == ("b5/archive.dump", 3)


def test_delete_removes_the_blob_and_what_a_killed_worker_left(store, endpoint, bucket) -> None:
    put(store, "b6/archive.dump", b"old")
    store.delete("b6/archive.dump")
    store.delete("b6/archive.dump")  # already gone: no error
    assert store.stat("b6/archive.dump") is None

    # A worker killed mid-upload: a part went up, then nothing (no commit, no abort).
    sink = store.writer("b6/archive.dump")
    sink.write(os.urandom(PART))
    del sink
    assert unfinished_uploads(endpoint, bucket) == [f"{PREFIX}/b6/archive.dump"]
    store.delete("b6/archive.dump")
    assert unfinished_uploads(endpoint, bucket) == []

    # The catalog's sweep deletes what list() shows: the marker ends that upload alone.
    for key in ("b7/archive.dump", "b7/archive.dump2"):
        store.writer(key).write(os.urandom(PART))
    marker = next(info.key for info in store.list("b7/") if info.key.startswith("b7/archive.dump."))
    store.delete(marker)
    assert unfinished_uploads(endpoint, bucket) == [f"{PREFIX}/b7/archive.dump2"]
    store.delete("b7/archive.dump2")
    assert list(store.list("b7/")) == []


def test_describe_and_errors_never_show_the_secret(store, endpoint, bucket) -> None:
    described = store.describe()
    assert described == f"s3://{bucket}/{PREFIX}/ (127.0.0.1:{endpoint.rsplit(':', 1)[1]})"
    assert SECRET_ACCESS_KEY not in described and SECRET_ACCESS_KEY not in repr(store)
    gone = blob_store(endpoint, "flexdb-no-such-bucket", PREFIX)
    with pytest.raises(StorageError) as caught:
        gone.writer("b8/manifest.json").commit()
    assert "flexdb-no-such-bucket" in caught.value.message and "b8/manifest.json" in caught.value.message
    assert SECRET_ACCESS_KEY not in caught.value.message and ACCESS_KEY_ID not in caught.value.message


def test_problem_says_whether_the_bucket_answers(store, endpoint) -> None:
    assert store.problem() is None
    missing = blob_store(endpoint, "flexdb-no-such-bucket").problem()
    assert missing is not None and "flexdb-no-such-bucket" in missing and "does not exist" in missing
    unreachable = blob_store(f"http://127.0.0.1:{free_port()}", "any-bucket").problem()
    assert unreachable is not None and "cannot reach" in unreachable
    assert SECRET_ACCESS_KEY not in missing + unreachable


def test_a_full_bucket_is_storage_full_and_the_upload_is_aborted(store, endpoint, bucket, monkeypatch) -> None:
    client = store._client()
    real_upload_part = client.upload_part
    calls = []

    def upload_part(**kwargs: Any) -> Any:
        calls.append(kwargs["PartNumber"])
        if len(calls) == 2:  # what MinIO says when its drives reach the free-space threshold
            error = {"Code": "XMinioStorageFull", "Message": "minimum free drive threshold reached"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 507}}, "UploadPart")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(client, "upload_part", upload_part)
    with pytest.raises(StorageFull) as caught:
        put(store, "b9/archive.dump", os.urandom(3 * PART))
    assert caught.value.code == "storage_full" and bucket in caught.value.message
    assert unfinished_uploads(endpoint, bucket) == [] and store.stat("b9/archive.dump") is None


def test_worker_memory_stays_flat_while_64_mib_stream_through(store) -> None:
    chunk = os.urandom(2**20)
    store.stat("b10/archive.dump")  # the client loads its service model once per process: not counted
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with store.writer("b10/archive.dump") as sink:
            for _ in range(64):
                sink.write(chunk)
            sink.commit()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One part being filled (and sent without a copy), whatever the blob's size.
    assert peak - baseline < 2 * PART, f"peak grew by {(peak - baseline) / 2**20:.1f} MiB"
    info = store.stat("b10/archive.dump")
    assert info is not None and info.size == 64 * 2**20


def test_from_url_takes_the_bucket_and_prefix_from_the_url_and_the_rest_from_settings(endpoint, bucket) -> None:
    settings = Settings.from_env(
        {
            "FLEXDB_S3_ENDPOINT_URL": endpoint,
            "FLEXDB_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "FLEXDB_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "FLEXDB_S3_ADDRESSING": "path",
            "FLEXDB_S3_PART_BYTES": str(PART),
        }
    )
    assert SECRET_ACCESS_KEY not in repr(settings)
    store = S3BlobStore.from_url(f"s3://{bucket}/nightly/", settings)
    assert (store.bucket, store.prefix, store.part_bytes, store.addressing_style) == (bucket, "nightly", PART, "path")
    put(store, "b11/manifest.json", b"{}")
    assert s3_client(endpoint).head_object(Bucket=bucket, Key="nightly/b11/manifest.json")["ContentLength"] == 2
    assert S3BlobStore.from_url(f"s3://{bucket}", settings).describe().startswith(f"s3://{bucket}/ (")


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "file:///tmp/x",
        f"s3://key:{SECRET_ACCESS_KEY}@bucket/x",
        "s3://bucket/a/../b",
        "s3://bucket/x?region=eu",
    ],
)
def test_from_url_refuses_what_is_not_s3_bucket_prefix_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        S3BlobStore.from_url(url, Settings.from_env({}))
    assert SECRET_ACCESS_KEY not in caught.value.message and "s3://bucket/prefix" in caught.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLEXDB_S3_PART_BYTES", str(PART - 1)),
        ("FLEXDB_S3_ADDRESSING", "sideways"),
        ("FLEXDB_S3_ENDPOINT_URL", "minio:9000"),
        ("FLEXDB_S3_ENDPOINT_URL", f"http://key:{SECRET_ACCESS_KEY}@127.0.0.1:9000"),
    ],
)
def test_bad_s3_settings_are_refused_at_start(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({name: value})
    assert name in caught.value.message and SECRET_ACCESS_KEY not in caught.value.message


def test_a_key_pair_is_both_or_neither(endpoint) -> None:
    with pytest.raises(ConfigurationError):
        blob_store(endpoint, "any-bucket", secret_access_key="")
