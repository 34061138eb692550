"""The one exception hierarchy.

Every error a user can cause (or must be told about) is a subclass of :class:`FlexDBError`
carrying an HTTP status and a stable snake_case ``code``. ``api/errors.py`` renders them as
RFC 9457 problem+json; the worker stores ``{code, message}`` on the failed job. Messages must
say what to fix and must never contain a secret (they are redacted again on the way out).
"""

from __future__ import annotations

from typing import Any


class FlexDBError(Exception):
    """Base of every error the service reports to a user."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.title
        self.extra = extra
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        """HTTP headers the error's response carries besides the problem body (none by default)."""
        return {}


# --- 4xx: the request is wrong -------------------------------------------------------------


class ValidationFailed(FlexDBError):
    status, code, title = 422, "validation_failed", "Request validation failed"

    def __init__(self, message: str | None = None, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message or "The request body or query has invalid fields; see errors.")
        self.errors = errors or []


class SystemDatabaseRefused(ValidationFailed):
    code, title = "system_database_refused", "Restore into a system database refused"


class BadRequest(FlexDBError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(FlexDBError):
    status, code, title = 401, "unauthorized", "Authentication required"


class HostNotAllowed(FlexDBError):
    """An ad-hoc connection check names a host outside FLEXDB_CHECK_ALLOWED_HOSTS."""

    status, code, title = 403, "host_not_allowed", "Host not allowed"


class NotFound(FlexDBError):
    status, code, title = 404, "not_found", "Not found"


class TargetNotFound(NotFound):
    code, title = "target_not_found", "Target not found"


class BackupNotFound(NotFound):
    code, title = "backup_not_found", "Backup not found"


class JobNotFound(NotFound):
    code, title = "job_not_found", "Job not found"


class ScheduleNotFound(NotFound):
    code, title = "schedule_not_found", "Schedule not found"


class MethodNotAllowed(FlexDBError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class Conflict(FlexDBError):
    status, code, title = 409, "conflict", "Conflict"


class TargetNotEmpty(Conflict):
    code, title = "target_not_empty", "Target is not empty"


class ScheduleManagedBySettings(Conflict):
    code, title = "schedule_managed_by_settings", "Schedule is declared in settings"


class JobFinished(Conflict):
    code, title = "job_finished", "Job already finished"


class IdempotencyKeyInUse(Conflict):
    code, title = "idempotency_key_in_use", "Idempotency key in use"


class IdempotencyKeyReused(FlexDBError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused with another request"


class TargetBusy(Conflict):
    code, title = "target_busy", "Target is busy"


class BackupPinned(Conflict):
    code, title = "backup_pinned", "Backup is pinned"


class BackupInUse(Conflict):
    """A queued or running restore reads the backup."""

    code, title = "backup_in_use", "Backup is in use"


class ArchiveTooLarge(FlexDBError):
    """An uploaded archive is larger than FLEXDB_IMPORT_MAX_BYTES."""

    status, code, title = 413, "archive_too_large", "Archive too large"


class RangeNotSatisfiable(FlexDBError):
    """A download's ``Range`` starts beyond the end of the archive."""

    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class UriTooLong(FlexDBError):
    """A request line over 4094 bytes. The HTTP server (gunicorn, see api/gunicorn_conf.py)
    answers it before the app runs, so nothing raises this class: it is here so that every code
    a route can answer comes from this one hierarchy."""

    status, code, title = 414, "uri_too_long", "URI too long"


class RequestHeaderFieldsTooLarge(FlexDBError):
    """Too many or too large request headers; answered by the HTTP server like UriTooLong."""

    status, code, title = 431, "request_header_fields_too_large", "Request header fields too large"


class EngineUnavailable(FlexDBError):
    status, code, title = 422, "engine_unavailable", "Engine unavailable"


class EncryptionKeyMissing(FlexDBError):
    """An encrypted archive names a key id that FLEXDB_ENCRYPTION_KEYS does not hold."""

    status, code, title = 422, "encryption_key_missing", "Encryption key missing"


# --- 5xx: a dependency or the job failed ----------------------------------------------------


class ConfigurationError(FlexDBError):
    status, code, title = 500, "configuration_error", "Configuration error"


class BrokerUnavailable(FlexDBError):
    status, code, title = 503, "broker_unavailable", "Broker unavailable"


class TargetUnreachable(FlexDBError):
    status, code, title = 502, "target_unreachable", "Target unreachable"


class AuthenticationFailed(FlexDBError):
    status, code, title = 502, "authentication_failed", "Authentication to the target failed"


class DatabaseNotFound(FlexDBError):
    """The server answers, but the database the target names does not exist there."""

    status, code, title = 502, "database_not_found", "Database not found on the target"


class TargetMisconfigured(ConfigurationError):
    """A target's URI or options keep the driver from using it (an unreadable TLS file, a
    statement_timeout that cancels every query...): the server may be fine, the target is not."""

    status, code, title = 502, "target_misconfigured", "Target misconfigured"


class ToolVersionMismatch(FlexDBError):
    status, code, title = 500, "tool_version_mismatch", "Dump tool older than the server"


class DumpFailed(FlexDBError):
    status, code, title = 500, "dump_failed", "Dump failed"


class RestoreFailed(FlexDBError):
    status, code, title = 500, "restore_failed", "Restore failed"


class ArchiveCorrupt(FlexDBError):
    """The archive cannot be read: bad format, truncated, or a CRC that does not match."""

    status, code, title = 422, "archive_corrupt", "Archive is corrupt"


class ChecksumMismatch(ArchiveCorrupt):
    code, title = "checksum_mismatch", "Archive checksum mismatch"


class StorageError(FlexDBError):
    status, code, title = 500, "storage_error", "Storage error"


class StorageFull(StorageError):
    """No space (or quota) left where backups are written; older backups are untouched."""

    status, code, title = 507, "storage_full", "Storage full"


class JobCancelled(FlexDBError):
    status, code, title = 409, "job_cancelled", "Job cancelled"
