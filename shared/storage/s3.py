"""S3-compatible blob store (AWS S3, MinIO, Ceph RGW, Cloudflare R2, Backblaze B2): keys live
under ``<prefix>/<key>`` in one bucket, so every worker and API that shares the bucket sees
every backup.

A blob is written as a multipart upload in parts of ``FLEXDB_S3_PART_BYTES`` (one part in
memory at a time, whatever the archive's size) and becomes an object only when the upload is
completed, so nothing is visible before ``commit``; a blob smaller than one part is a single
PUT. A worker killed mid-upload leaves an unfinished upload, which is billed but invisible:
:meth:`S3BlobStore.list` shows it as ``<key>.<token>.part`` (as the local store shows its
partial files) so that the catalog's sweep removes it, and :meth:`S3BlobStore.delete` of the
key aborts it too.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from urllib3.exceptions import HTTPError as Urllib3Error

from shared.core.errors import ConfigurationError, StorageError, StorageFull
from shared.core.logs import get_logger
from shared.core.redaction import register_secret
from shared.domain.ports import ArchiveSink, BlobInfo, BlobMissing, BlobStore

if TYPE_CHECKING:
    from shared.core.settings import Settings

log = get_logger(__name__)

MIN_PART_BYTES = 5 * 2**20  # S3 refuses smaller parts (but the last)
MAX_PARTS = 10_000  # S3's limit of parts in one multipart upload
ADDRESSING_STYLES = ("auto", "path", "virtual")
PART_SUFFIX = ".part"
_UPLOAD_MARKER = re.compile(r"^(?P<key>.+)\.(?P<token>[0-9a-f]{16})" + re.escape(PART_SUFFIX) + "$")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
# Error codes that mean "no room": Ceph RGW and others (quota), MinIO (drive threshold, bucket
# quota); HTTP 507 from any server. EntityTooLarge is not among them: it is a size limit per
# object or part, which more room would not lift.
_FULL_CODES = frozenset({"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded"})
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
# Errors while reading a response body (botocore wraps most, urllib3 and sockets may slip through).
_STREAM_ERRORS = (BotoCoreError, Urllib3Error, OSError)


def _upload_token(upload_id: str) -> str:
    """A short, name-safe stand-in for an upload id (ids are long and may hold any character)."""
    return hashlib.sha256(upload_id.encode()).hexdigest()[:16]


def _key_parts_valid(key: str) -> bool:
    return all(part and part not in {".", ".."} for part in key.split("/"))


class S3BlobStore(BlobStore):
    """Blobs as objects in one bucket, under an optional prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
        addressing_style: str = "auto",
        part_bytes: int = 8 * 2**20,
        connect_timeout: float = 5,
        max_attempts: int = 5,
    ) -> None:
        if not _BUCKET_NAME.match(bucket):
            raise ConfigurationError(f"S3 storage: {bucket!r} is not a bucket name.")
        if addressing_style not in ADDRESSING_STYLES:
            raise ConfigurationError(f"S3 storage: addressing must be one of {', '.join(ADDRESSING_STYLES)}.")
        if part_bytes < MIN_PART_BYTES:
            raise ConfigurationError(f"S3 storage: the part size must be at least {MIN_PART_BYTES} bytes.")
        if bool(access_key_id) != bool(secret_access_key):
            raise ConfigurationError(
                "S3 storage: set both FLEXDB_S3_ACCESS_KEY_ID and FLEXDB_S3_SECRET_ACCESS_KEY, or neither "
                "(then boto3's own credential chain is used)."
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.addressing_style = addressing_style
        self.part_bytes = part_bytes
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        register_secret(secret_access_key)  # also when built without Settings (tests, scripts)
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._root = self.prefix + "/" if self.prefix else ""
        self._clients: dict[int, tuple[int, Any]] = {}  # attempts -> (pid, client)
        self._clients_lock = threading.Lock()
        self._uploads_unlisted = False

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> S3BlobStore:
        """The store for a storage URL ``s3://bucket/prefix``, the rest from ``FLEXDB_S3_*``."""
        # The URL is never echoed: a mistaken one may carry a credential.
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigurationError("FLEXDB_STORAGE_URL: an S3 storage URL looks like s3://bucket/prefix.")
        if "@" in parts.netloc or ":" in parts.netloc or parts.query or parts.fragment:
            raise ConfigurationError(
                "FLEXDB_STORAGE_URL: an S3 storage URL is only s3://bucket/prefix; the endpoint goes in "
                "FLEXDB_S3_ENDPOINT_URL and the key pair in FLEXDB_S3_ACCESS_KEY_ID / FLEXDB_S3_SECRET_ACCESS_KEY."
            )
        prefix = unquote(parts.path).strip("/")
        if prefix and not _key_parts_valid(prefix):
            raise ConfigurationError(
                "FLEXDB_STORAGE_URL: an S3 storage URL looks like s3://bucket/prefix, with no empty, '.' or '..' "
                "part in the prefix."
            )
        return cls(
            parts.netloc,
            prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing,
            part_bytes=settings.s3_part_bytes,
            connect_timeout=settings.connect_timeout_seconds,
            max_attempts=settings.s3_max_attempts,
        )

    # ------------------------------------------------------------------ clients

    def _client(self, max_attempts: int | None = None) -> Any:
        """A client per process (Celery forks workers; a client's connections must not be
        shared across a fork) and per retry budget (health checks try once)."""
        attempts = max_attempts or self._max_attempts
        pid = os.getpid()
        with self._clients_lock:
            known = self._clients.get(attempts)
            if known is None or known[0] != pid:
                known = (pid, self._new_client(attempts))
                self._clients[attempts] = known
            return known[1]

    def _new_client(self, max_attempts: int) -> Any:
        config = Config(
            s3={"addressing_style": self.addressing_style},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=self._connect_timeout,
            # Checksums only where S3 demands them: the newer default (CRC32 on every upload) is
            # refused by several S3-compatible servers, and the catalog hashes every archive anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()  # its own: boto3's default session is not thread-safe
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self._access_key_id or None,
            aws_secret_access_key=self._secret_access_key or None,
            config=config,
        )

    # ------------------------------------------------------------------ keys and errors

    def _object_key(self, key: str) -> str:
        if not _key_parts_valid(key):
            raise BlobMissing(key)
        return self._root + key

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self._root}{key or ''}"

    def _endpoint_host(self) -> str:
        if self.endpoint_url is None:
            return f"AWS S3 {self.region}"
        return urlsplit(self.endpoint_url).netloc

    def _failure(self, exc: Exception, doing: str, key: str | None = None) -> StorageError:
        """The storage error a user can act on; says bucket and key, never a credential."""
        where = self._where(key)
        code, status = "", None
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        log.warning(
            "storage.s3_failed", bucket=self.bucket, key=key, doing=doing, error=type(exc).__name__,
            error_code=code or None, http_status=status,
        )  # fmt: skip
        if code in _FULL_CODES or status == 507:
            return StorageFull(
                f"No room left in the S3 bucket {self.bucket} while {doing} {where} (S3 error {code or status}). "
                "The partial upload was removed and older backups are intact; raise the quota or delete old "
                "backups, then retry."
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"The S3 bucket {self.bucket} does not exist at {self._endpoint_host()} ({doing} {where})."
            )
        if code in _DENIED_CODES or status == 403:
            return StorageError(
                f"Access denied by S3 while {doing} {where} (S3 error {code or status}); check "
                "FLEXDB_S3_ACCESS_KEY_ID / FLEXDB_S3_SECRET_ACCESS_KEY and the bucket's policy."
            )
        if code == "EntityTooLarge":
            return StorageError(f"S3 refused a part as too large while {doing} {where}; lower FLEXDB_S3_PART_BYTES.")
        if isinstance(exc, ClientError):
            return StorageError(f"S3 error {code or '?'} (HTTP {status}) while {doing} {where}.")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"No S3 credentials while {doing} {where}: set FLEXDB_S3_ACCESS_KEY_ID and "
                "FLEXDB_S3_SECRET_ACCESS_KEY (or give the process an AWS profile or role)."
            )
        return StorageError(
            f"Cannot talk to the S3 endpoint {self._endpoint_host()} while {doing} {where} ({type(exc).__name__})."
        )

    @staticmethod
    def _code(exc: ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    @staticmethod
    def _status(exc: ClientError) -> int | None:
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")

    def _is_missing(self, exc: ClientError) -> bool:
        return self._code(exc) in _MISSING_CODES or (self._status(exc) == 404 and self._code(exc) != "NoSuchBucket")

    # ------------------------------------------------------------------ the port

    def writer(self, key: str) -> ArchiveSink:
        return _S3Writer(self, key, self._object_key(key))

    def open(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        if start < 0 or (length is not None and length < 0):
            raise ValueError("start and length must not be negative")
        object_key = self._object_key(key)
        if length == 0:  # no Range header can ask for nothing
            if self.stat(key) is None:
                raise BlobMissing(key)
            return io.BytesIO(b"")
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": object_key}
        if start or length is not None:
            request["Range"] = f"bytes={start}-{'' if length is None else start + length - 1}"
        try:
            response = self._client().get_object(**request)
        except ClientError as exc:
            if self._is_missing(exc):
                raise BlobMissing(key) from None
            if self._code(exc) == "InvalidRange" or self._status(exc) == 416:
                return io.BytesIO(b"")  # a range that starts past the end: nothing, as a file gives
            raise self._failure(exc, "reading", key) from None
        except BotoCoreError as exc:
            raise self._failure(exc, "reading", key) from None
        return _ObjectStream(response["Body"], self, key)  # type: ignore[return-value]

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        full_prefix = self._root + prefix
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self._root) :]
                    if key and not key.endswith("/"):  # "folder" markers some consoles create
                        yield BlobInfo(key, int(item["Size"]), item["LastModified"].timestamp())
            for object_key, upload_id, initiated in self._unfinished_uploads(full_prefix):
                key = object_key[len(self._root) :]
                yield BlobInfo(f"{key}.{_upload_token(upload_id)}{PART_SUFFIX}", 0, initiated)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, "listing", prefix) from None

    def _unfinished_uploads(self, object_prefix: str) -> Iterator[tuple[str, str, float]]:
        """(object key, upload id, when it was started) of every unfinished multipart upload."""
        try:
            paginator = self._client().get_paginator("list_multipart_uploads")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=object_prefix)
            for page in pages:
                for upload in page.get("Uploads", ()):
                    yield upload["Key"], upload["UploadId"], upload["Initiated"].timestamp()
        except ClientError as exc:
            # A server without the call, or a key without the permission, cannot sweep: the
            # bucket's lifecycle rule (docs/setup.md) still does. Said once per process.
            if self._code(exc) not in {"NotImplemented", "AccessDenied"} and self._status(exc) not in {403, 501}:
                raise
            if not self._uploads_unlisted:
                self._uploads_unlisted = True
                log.warning("storage.s3_uploads_unlisted", bucket=self.bucket, error_code=self._code(exc))

    def stat(self, key: str) -> BlobInfo | None:
        try:
            object_key = self._object_key(key)
            response = self._client().head_object(Bucket=self.bucket, Key=object_key)
        except BlobMissing:
            return None
        except ClientError as exc:
            if self._is_missing(exc):
                return None
            raise self._failure(exc, "looking up", key) from None
        except BotoCoreError as exc:
            raise self._failure(exc, "looking up", key) from None
        return BlobInfo(key, int(response["ContentLength"]), response["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        try:
            object_key = self._object_key(key)
        except BlobMissing:
            return
        marker = _UPLOAD_MARKER.match(object_key)
        try:
            self._client().delete_object(Bucket=self.bucket, Key=object_key)  # no error when absent
            # A worker killed mid-upload left the upload: billed, invisible, and ours to end.
            upload_key, token = (marker["key"], marker["token"]) if marker else (object_key, None)
            for found_key, upload_id, _initiated in list(self._unfinished_uploads(upload_key)):
                if found_key == upload_key and (token is None or _upload_token(upload_id) == token):
                    self._abort_upload(found_key, upload_id)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, "deleting", key) from None

    def _abort_upload(self, object_key: str, upload_id: str) -> None:
        try:
            self._client().abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except ClientError as exc:
            if self._code(exc) != "NoSuchUpload" and self._status(exc) != 404:  # already gone is fine
                raise
        log.info("storage.s3_upload_aborted", bucket=self.bucket, key=object_key[len(self._root) :])

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self._root} ({self._endpoint_host()})"

    def problem(self) -> str | None:
        try:
            self._client(max_attempts=1).head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = self._status(exc)
            if status == 404:
                return f"the S3 bucket {self.bucket} does not exist at {self._endpoint_host()}"
            if status == 403:
                return f"access to the S3 bucket {self.bucket} is denied (check the key pair and the bucket policy)"
            return f"the S3 bucket {self.bucket} answered HTTP {status}"
        except (NoCredentialsError, PartialCredentialsError):
            return "no S3 credentials (set FLEXDB_S3_ACCESS_KEY_ID and FLEXDB_S3_SECRET_ACCESS_KEY)"
        except BotoCoreError as exc:
            return f"cannot reach the S3 endpoint {self._endpoint_host()} ({type(exc).__name__})"
        return None


class _S3Writer(ArchiveSink):
    """A multipart upload fed part by part: at most one part (plus one write) in memory."""

    def __init__(self, store: S3BlobStore, key: str, object_key: str) -> None:
        self._store = store
        self._key = key
        self._object_key = object_key
        # The part being filled. A BytesIO goes to botocore as it is (no copy of the part), and
        # botocore can rewind it to retry.
        self._buffer = io.BytesIO()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._state = "open"  # then "committed" or "aborted"

    def write(self, data: bytes) -> int:
        self._require_open()
        with memoryview(data) as whole:
            view = whole.cast("B") if whole.format != "B" or whole.ndim != 1 else whole
            offset = 0
            while offset < len(view):
                room = self._store.part_bytes - self._buffer.tell()
                self._buffer.write(view[offset : offset + room])
                offset += room
                if self._buffer.tell() >= self._store.part_bytes:
                    self._send_part()
            return len(view)

    def commit(self) -> None:
        self._require_open()
        client = self._store._client()
        try:
            if self._upload_id is None:
                self._buffer.seek(0)
                client.put_object(Bucket=self._store.bucket, Key=self._object_key, Body=self._buffer)
            else:
                if self._buffer.tell():
                    self._send_part()
                client.complete_multipart_upload(
                    Bucket=self._store.bucket, Key=self._object_key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )  # fmt: skip
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "saving") from None
        self._state = "committed"
        self._buffer = io.BytesIO()

    def abort(self) -> None:
        if self._state != "open":
            return  # committed (then the blob stays) or aborted already
        self._state = "aborted"
        self._buffer = io.BytesIO()
        if self._upload_id is not None:
            try:
                self._store._abort_upload(self._object_key, self._upload_id)
            except (ClientError, BotoCoreError) as exc:
                # Abort runs while another error propagates; that error is the one to report. The
                # upload stays until a sweep, a delete of the key or the bucket's lifecycle rule.
                log.warning(
                    "storage.s3_abort_failed", bucket=self._store.bucket, key=self._key, error=type(exc).__name__
                )

    def _require_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"The upload of {self._store._where(self._key)} is already {self._state}.")

    def _send_part(self) -> None:
        """Upload the buffer as the next part (starting the multipart upload on the first)."""
        if len(self._parts) >= MAX_PARTS:
            self.abort()
            raise StorageError(
                f"{self._store._where(self._key)} needs more than {MAX_PARTS} parts of {self._store.part_bytes} "
                "bytes, the most S3 takes; raise FLEXDB_S3_PART_BYTES."
            )
        body, self._buffer = self._buffer, io.BytesIO()
        body.seek(0)
        client = self._store._client()
        try:
            if self._upload_id is None:
                started = client.create_multipart_upload(Bucket=self._store.bucket, Key=self._object_key)
                self._upload_id = started["UploadId"]
            number = len(self._parts) + 1
            sent = client.upload_part(
                Bucket=self._store.bucket, Key=self._object_key, UploadId=self._upload_id, PartNumber=number, Body=body
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "uploading") from None
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def _fail(self, exc: Exception, doing: str) -> StorageError:
        error = self._store._failure(exc, doing, self._key)
        self.abort()  # nothing half-written stays behind, whoever called us
        return error


class _ObjectStream(io.RawIOBase):
    """An object's body as a read-only file; a connection lost mid-read is a StorageError."""

    def __init__(self, body: Any, store: S3BlobStore, key: str) -> None:
        super().__init__()
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except _STREAM_ERRORS as exc:
            raise self._store._failure(exc, "reading", self._key) from None

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as target:
            data = self.read(target.nbytes)
            target.cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()
