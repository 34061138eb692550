"""Request and response schemas (marshmallow). Unknown fields are rejected."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from shared.core.settings import NAME_PATTERN
from shared.domain.backups import DATABASE_NAME_PATTERN, DATABASE_NAME_RULE, ID_PATTERN
from shared.domain.jobs import JobKind, JobStatus
from shared.domain.retention import MAX_AGE_DAYS
from shared.domain.schedules import MAX_INTERVAL_SECONDS
from shared.engines import engine_names

_name = validate.Regexp(NAME_PATTERN, error="must be 1-64 letters, digits, '_' or '-'")
_id = validate.Regexp(ID_PATTERN, error="must be 1-64 letters, digits, '_' or '-'")
# ``GET /jobs`` pages with ``<score>:<job id>`` (the score is the job's creation time as a float
# repr); anything else would reach Redis as a malformed range and come back as a broker error.
_job_cursor = validate.Regexp(
    r"^[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?:[A-Za-z0-9_-]{1,64}$", error="not a cursor this API handed out (links.next)"
)
_database = validate.Regexp(DATABASE_NAME_PATTERN, error=f"must be {DATABASE_NAME_RULE}")


class StrictSchema(Schema):
    # A request body's example, in the OpenAPI document (the body a reader can send as it is).
    example: ClassVar[dict[str, Any]]

    class Meta:
        unknown = RAISE


class StrictBoolean(fields.Boolean):
    """JSON ``true``/``false`` only. marshmallow's Boolean also takes "yes", "on", "1" and 1 (and
    ``1 in {True}`` holds in Python, so narrowing ``truthy`` is not enough)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if value is not True and value is not False:
            raise self.make_error("invalid", input=value)
        return value


class StrictInteger(fields.Integer):
    """A JSON integer only: marshmallow's Integer truncates 1.5 to 1 and takes "5"."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class QueryInteger(fields.Integer):
    """A query-string integer: the text is digits ("5"), never "1.5", "5_000", " 5" or "٥",
    which Python's int() would take."""

    def _validated(self, value: Any) -> int:
        if not isinstance(value, str) or not _QUERY_INTEGER.fullmatch(value):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


_QUERY_INTEGER = re.compile(r"-?[0-9]+")


_callback_url = validate.URL(schemes={"http", "https"}, require_tld=False, error="must be an http(s) URL")


class CallbackFieldsSchema(StrictSchema):
    callback_url = fields.String(
        load_default=None,
        validate=[validate.Length(max=2048), _callback_url],
        metadata={"description": "POSTed the final job (signed, see X-FlexDB-Signature) when the job ends"},
    )
    callback_headers = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$", error="not a header name")),
        values=fields.String(validate=validate.Length(max=4096)),
        load_default=None,
        metadata={"description": "Extra headers for the callback (kept secret, never shown)"},
    )


class BackupRequestSchema(CallbackFieldsSchema):
    example = {"target": "orders"}

    target = fields.String(required=True, validate=_name, metadata={"description": "Name of a configured target"})
    options = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={
            "description": 'Every engine: "compression" ("zstd", "gzip" or "none"; default FLEXDB_COMPRESSION). '
            'postgresql: "format" ("custom" or "directory") and, with "directory", "jobs" (1 to FLEXDB_PG_MAX_JOBS). '
            'mongodb: "collections", "exclude_collections"'
        },
    )


class RestoreRequestSchema(CallbackFieldsSchema):
    example = {"backup_id": "20261202T031500123456Z-3f9a2c", "database": "orders_copy"}

    backup_id = fields.String(required=True, validate=_id)
    target = fields.String(load_default=None, validate=_name, metadata={"description": "Default: the backup's own target"})
    database = fields.String(
        load_default=None, validate=_database, metadata={"description": "Another database on that server; created if missing"}
    )
    drop = StrictBoolean(load_default=False, metadata={"description": "Replace existing objects"})
    allow_system_database = StrictBoolean(
        load_default=False,
        metadata={
            "description": "Needed to restore into a server's own database (PostgreSQL postgres; MongoDB admin, "
            "local, config). template0 and template1 are always refused (system_database_refused)."
        },
    )
    options = fields.Dict(keys=fields.String(), load_default=dict)


class ConnectionCheckSchema(StrictSchema):
    example = {"engine": "postgresql", "uri": "postgresql://backup@127.0.0.1:5432/orders"}

    engine = fields.String(required=True, validate=validate.OneOf(engine_names()))
    uri = fields.String(required=True, validate=validate.Length(min=1, max=4096))


class PageQuerySchema(StrictSchema):
    limit = QueryInteger(load_default=None, validate=validate.Range(min=1))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=200))


class JobGetQuerySchema(StrictSchema):
    wait = QueryInteger(
        load_default=0,
        validate=validate.Range(min=0, max=3600),
        metadata={"description": "Hold the request up to this many seconds until the status changes (capped by FLEXDB_WAIT_MAX_SECONDS)"},
    )


class JobListQuerySchema(PageQuerySchema):
    cursor = fields.String(load_default=None, validate=[validate.Length(min=1, max=200), _job_cursor])
    status = fields.Enum(JobStatus, by_value=True, load_default=None)
    kind = fields.Enum(JobKind, by_value=True, load_default=None)
    target = fields.String(load_default=None, validate=_name)


class BackupListQuerySchema(PageQuerySchema):
    # A backup list pages by backup id: a malformed one is a bad query (422), not a missing backup.
    cursor = fields.String(load_default=None, validate=_id)
    target = fields.String(load_default=None, validate=_name)


# ------------------------------------------------------------------------------ responses


class ProgressSchema(Schema):
    stage = fields.String(allow_none=True)
    bytes_done = fields.Integer()
    bytes_total = fields.Integer(allow_none=True)
    items_done = fields.Integer()
    items_total = fields.Integer(allow_none=True)
    percent = fields.Float(allow_none=True)
    current = fields.String(allow_none=True)


class JobErrorSchema(Schema):
    code = fields.String()
    message = fields.String()


class CallbackStateSchema(Schema):
    url = fields.String()
    status = fields.String(metadata={"description": "pending, delivered or failed"})
    attempts = fields.Integer()
    response_status = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)


class JobSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String()
    kind = fields.String()
    status = fields.String()
    done = fields.Boolean()
    target = fields.String()
    engine = fields.String()
    params = fields.Dict()
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    duration_seconds = fields.Float(allow_none=True)
    progress = fields.Nested(ProgressSchema)
    backup_id = fields.String(allow_none=True)
    result = fields.Dict()
    error = fields.Nested(JobErrorSchema, allow_none=True)
    callback = fields.Nested(CallbackStateSchema, allow_none=True)
    cancel_requested = fields.Boolean()
    attempts = fields.Integer(metadata={"description": "How many times a worker started it (a backup whose worker died is retried)"})
    links = fields.Dict(keys=fields.String(), values=fields.String())


class BackupSchema(Schema):
    id = fields.String()
    target = fields.String()
    engine = fields.String()
    format = fields.String()
    database = fields.String(allow_none=True)
    created_at = fields.String()
    finished_at = fields.String()
    duration_seconds = fields.Float()
    size_bytes = fields.Integer()
    sha256 = fields.String()
    compression = fields.String(
        allow_none=True,
        metadata={"description": 'The stream codec of the stored archive ("zstd", "gzip", "none"); older backups: null or "pg_dump-zlib"'},
    )
    tool_version = fields.String(allow_none=True)
    server_version = fields.String(allow_none=True)
    job_id = fields.String(allow_none=True)
    schedule_id = fields.String(allow_none=True, metadata={"description": "The schedule that made it; null for a manual backup"})
    partial = fields.Boolean(metadata={"description": "Only some collections or tables (see scope); never counted by keep_* rules"})
    scope = fields.Dict(metadata={"description": "The options that narrowed a partial backup; {} for a full one"})
    pinned = fields.Boolean(metadata={"description": "Kept whatever retention says (PATCH /backups/<id>)"})
    source = fields.String(metadata={"description": "backup (made by this service) or import (uploaded with POST /backups/import)"})
    copies = fields.List(
        fields.Dict(),
        metadata={"description": "Other copies: [{storage: mirror, status: pending|copied|failed, at}] (FLEXDB_STORAGE_MIRROR_URL)"},
    )
    encryption = fields.Dict(
        allow_none=True,
        metadata={"description": "{algorithm, key_id} when stored encrypted (FLEXDB_ENCRYPTION_KEYS); null for plain"},
    )
    details = fields.Dict()
    links = fields.Dict(keys=fields.String(), values=fields.String())


class BackupImportQuerySchema(StrictSchema):
    target = fields.String(required=True, validate=_name, metadata={"description": "The target the archive belongs to"})


class BackupUpdateSchema(StrictSchema):
    example = {"pinned": True}

    pinned = StrictBoolean(required=True, metadata={"description": "true: retention never deletes this backup"})


class TargetSchema(Schema):
    name = fields.String()
    engine = fields.String()
    uri = fields.String(metadata={"description": "Connection URI with the password masked"})
    engine_available = fields.Boolean()
    engine_unavailable_reason = fields.String(allow_none=True)
    links = fields.Dict(keys=fields.String(), values=fields.String())


class ServerInfoSchema(Schema):
    ok = fields.Boolean()
    engine = fields.String()
    server_version = fields.String()
    latency_ms = fields.Float()
    details = fields.Dict()


# ------------------------------------------------------------------------------ schedules


class RetentionPolicySchema(StrictSchema):
    keep_last = StrictInteger(allow_none=True, validate=validate.Range(min=0))
    max_age_days = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=MAX_AGE_DAYS))
    keep_daily = StrictInteger(allow_none=True, validate=validate.Range(min=0))
    keep_weekly = StrictInteger(allow_none=True, validate=validate.Range(min=0))
    keep_monthly = StrictInteger(allow_none=True, validate=validate.Range(min=0))
    min_keep = StrictInteger(validate=validate.Range(min=1), metadata={"description": "Default 1"})
    include_manual = StrictBoolean(
        metadata={"description": "Default false: a schedule's policy governs only the backups that schedule made"}
    )


class ScheduleWriteSchema(StrictSchema):
    """POST takes it whole (``target`` required); PATCH takes any subset."""

    example = {
        "target": "orders",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "retention": {"keep_daily": 7, "keep_weekly": 4},
    }
    target = fields.String(required=True, validate=_name)
    cron = fields.String(allow_none=True, metadata={"description": "5 fields: minute hour day-of-month month day-of-week"})
    # The minimum is FLEXDB_SCHEDULE_MIN_INTERVAL_SECONDS, checked by the schedule service.
    interval_seconds = StrictInteger(
        allow_none=True,
        validate=validate.Range(max=MAX_INTERVAL_SECONDS),
        metadata={"description": "At least FLEXDB_SCHEDULE_MIN_INTERVAL_SECONDS, at most 366 days"},
    )
    timezone = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "IANA name, default UTC"})
    enabled = StrictBoolean()
    options = fields.Dict(keys=fields.String())
    retention = fields.Nested(RetentionPolicySchema, allow_none=True)


class ScheduleUpdateSchema(ScheduleWriteSchema):
    """PATCH: any subset of the fields."""

    example = {"cron": "0 3 * * *", "enabled": True}
    target = fields.String(validate=_name)


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok or degraded"})
    components = fields.Dict(
        metadata={"description": "api, redis, workers, storage, targets: each with ok and details"}
    )


class TargetListSchema(Schema):
    items = fields.List(fields.Nested(TargetSchema))


class PageLinksSchema(Schema):
    next = fields.String(allow_none=True, metadata={"description": "Absolute URL of the next page, or null"})
    links = fields.Dict(keys=fields.String(), values=fields.String())


class JobPageSchema(PageLinksSchema):
    items = fields.List(fields.Nested(JobSchema))


class BackupPageSchema(PageLinksSchema):
    items = fields.List(fields.Nested(BackupSchema))


class RetentionDecisionSchema(Schema):
    backup_id = fields.String()
    created_at = fields.String()
    keep = fields.Boolean()
    reasons = fields.List(fields.String())
    links = fields.Dict(keys=fields.String(), values=fields.String())


class RetentionPreviewSchema(Schema):
    target = fields.String()
    policies = fields.List(fields.Dict())
    delete_count = fields.Integer()
    items = fields.List(fields.Nested(RetentionDecisionSchema))


class ScheduleSchema(Schema):
    id = fields.String()
    target = fields.String()
    cron = fields.String(allow_none=True)
    interval_seconds = fields.Integer(allow_none=True)
    timezone = fields.String()
    enabled = fields.Boolean()
    options = fields.Dict()
    retention = fields.Dict(allow_none=True)
    source = fields.String(metadata={"description": "api, or settings (FLEXDB_SCHEDULES; read-only here)"})
    created_at = fields.String()
    next_run_at = fields.String(allow_none=True)
    last_run_at = fields.String(allow_none=True)
    last_job_id = fields.String(allow_none=True)
    last_status = fields.String(allow_none=True, metadata={"description": "queued, running, succeeded, failed or skipped"})
    last_message = fields.String(allow_none=True)
    links = fields.Dict(keys=fields.String(), values=fields.String())


class ScheduleListQuerySchema(StrictSchema):
    target = fields.String(load_default=None, validate=_name)


class ScheduleListSchema(Schema):
    items = fields.List(fields.Nested(ScheduleSchema))


class RetentionPreviewQuerySchema(StrictSchema):
    target = fields.String(required=True, validate=_name)
