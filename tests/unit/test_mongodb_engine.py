"""The MongoDB engine's pure parts: option checks, collection scope, restore planning, version
and error mapping. Everything that talks to a server is in tests/integration."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, ServerSelectionTimeoutError

from shared.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DumpFailed,
    RestoreFailed,
    TargetUnreachable,
    ValidationFailed,
)
from shared.core.redaction import register_secret
from shared.core.settings import Settings, Target
from shared.domain.engine import RestoreRequest
from shared.engines import engine_class, engine_for
from shared.engines.mongodb import (
    CollectionFilter,
    MongoDBEngine,
    RestorePlan,
    check_database_name,
    classify_error,
    server_version_of,
    validate_mongodb_options,
)

SECRET = "Unit-secret-pw-0451"
TARGET = Target("orders-mongo", "mongodb", f"mongodb://backup:{SECRET}@db.example:27017/shop?authSource=admin")


def pointers(exc: pytest.ExceptionInfo[ValidationFailed]) -> list[str]:
    return sorted(error["pointer"] for error in exc.value.errors)


# ----------------------------------------------------------------------------- options


def test_backup_options_are_normalised_without_duplicates() -> None:
    options = {"collections": ["orders", "a.b.c", "orders"], "exclude_collections": ["tmp"]}

    normalised = validate_mongodb_options("backup", options)

    assert normalised == {"collections": ["orders", "a.b.c"], "exclude_collections": ["tmp"]}
    assert validate_mongodb_options("backup", {}) == {}


def test_the_registered_engine_checks_options_at_submit() -> None:
    assert engine_class("mongodb") is MongoDBEngine
    with pytest.raises(ValidationFailed) as exc:
        engine_class("mongodb").validate_options("restore", {"exclude_collections": ["x"]})
    assert pointers(exc) == ["/options/exclude_collections"]


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("backup", {"colour": "red", "collections": ["ok"]}, ["/options/colour"]),
        ("backup", {"collections": "orders"}, ["/options/collections"]),
        ("backup", {"collections": []}, ["/options/collections"]),
        (
            "backup",
            {"exclude_collections": ["ok", 3, " "]},
            ["/options/exclude_collections/1", "/options/exclude_collections/2"],
        ),
        ("restore", {"collections": ["ok"], "drop": True}, ["/options/drop"]),
        ("restore", {"collections": [None]}, ["/options/collections/0"]),
    ],
)
def test_bad_options_name_every_offending_pointer(kind: str, options: dict, expected: list[str]) -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_mongodb_options(kind, options)

    assert pointers(exc) == expected
    assert exc.value.status == 422 and exc.value.code == "validation_failed"


def test_a_filter_matches_collection_names_and_full_namespaces() -> None:
    scope = CollectionFilter.from_options(
        {"collections": ["orders", "shop.a.b.c", "gone"], "exclude_collections": ["logs.orders"]}
    )

    assert scope.admits("shop", "orders") and scope.admits("shop", "a.b.c")
    assert not scope.admits("logs", "orders")  # excluded by namespace
    assert not scope.admits("other", "a.b.c")  # included only in shop
    assert not scope.admits("shop", "customers")
    assert scope.unmatched([("shop", "orders"), ("shop", "a.b.c")]) == ["gone"]
    assert CollectionFilter().admits("any", "thing") and CollectionFilter().unmatched([]) == []


# ----------------------------------------------------------------------------- restore plan

ARCHIVE = [
    ("shop", "orders"),
    ("shop", "a.b.c"),
    ("", "oplog"),
    ("admin", "system.version"),
    ("shop", "$admin.system.users"),
]


def test_plan_restores_user_namespaces_into_their_own_database() -> None:
    plan = RestorePlan.build(ARCHIVE, RestoreRequest(), target_database=None)

    assert plan.destinations == {("shop", "orders"): "shop", ("shop", "a.b.c"): "shop"}
    assert plan.skipped == [".oplog", "admin.system.version", "shop.$admin.system.users"]


def test_plan_follows_the_request_then_the_target_database() -> None:
    request = RestoreRequest(database="copy", options={"collections": ["a.b.c"]})
    into_request = RestorePlan.build(ARCHIVE, request, "target_db")
    into_target = RestorePlan.build(ARCHIVE, RestoreRequest(), "target_db")

    assert into_request.destinations == {("shop", "a.b.c"): "copy"}
    assert into_target.databases == ["target_db"]


def test_plan_refuses_names_the_backup_lacks_and_one_database_for_several() -> None:
    with pytest.raises(ValidationFailed) as missing:
        RestorePlan.build(ARCHIVE, RestoreRequest(options={"collections": ["orders", "nope"]}), None)
    with pytest.raises(ValidationFailed) as several:
        RestorePlan.build([("a", "x"), ("b", "x")], RestoreRequest(database="one"), None)

    assert "nope" in missing.value.message and pointers(missing) == ["/options/collections"]
    assert "2 databases" in several.value.message and pointers(several) == ["/database"]
    # several databases and a target database: each goes back to its own name
    assert RestorePlan.build([("a", "x"), ("b", "x")], RestoreRequest(), "t").databases == ["a", "b"]


@pytest.mark.parametrize("name", ["", "a.b", "has space", "dollar$", "slash/", "x" * 64])
def test_database_names_mongodb_refuses_are_refused(name: str) -> None:
    with pytest.raises(ValidationFailed):
        check_database_name(name)


def test_database_names_mongodb_takes_are_kept() -> None:
    assert check_database_name("flexdb_copy-2") == "flexdb_copy-2"


# ----------------------------------------------------------------------------- versions and errors


@pytest.mark.parametrize(
    ("build_info", "expected"),
    [
        ({"version": "7.0.12"}, "7.0.12"),
        ({"version": "8.0.0-rc1"}, "8.0.0-rc1"),  # mongorestore drops the suffix itself
        ({"version": "8.2", "versionArray": [8, 2, 0, 0]}, "8.2.0"),
    ],
)
def test_server_version_is_major_minor_patch(build_info: dict, expected: str) -> None:
    assert server_version_of(build_info) == expected


def test_an_unusable_server_version_fails_the_dump() -> None:
    with pytest.raises(DumpFailed):
        server_version_of({"version": "unknown"})


def test_errors_map_to_stable_codes_without_the_password() -> None:
    register_secret(SECRET)
    refused = ServerSelectionTimeoutError(
        f"db.example:27017: [Errno 111] Connection refused ({TARGET.uri}), Timeout: 5s, Topology Description: ..."
    )
    wrong = OperationFailure(f"Authentication failed. uri={TARGET.uri}", code=18)
    unauthorized = OperationFailure("not authorized on shop to execute command { find: ... }", code=13)

    cases = [
        (classify_error(refused, TARGET, DumpFailed), TargetUnreachable),
        (classify_error(AutoReconnect("connection closed"), TARGET, DumpFailed), TargetUnreachable),
        (classify_error(wrong, TARGET, DumpFailed), AuthenticationFailed),
        (classify_error(unauthorized, TARGET, RestoreFailed), AuthenticationFailed),
        (classify_error(OperationFailure("boom", code=2), TARGET, RestoreFailed), RestoreFailed),
    ]
    for error, expected in cases:
        assert type(error) is expected
        assert SECRET not in error.message and "orders-mongo" in error.message
    assert "Topology" not in cases[0][0].message  # pymongo's topology dump is cut off


def test_a_bulk_write_error_names_the_first_refused_document() -> None:
    exc = BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}] * 3})

    message = MongoDBEngine._bulk_message(TARGET, exc)

    assert "3 document(s)" in message and "E11000 duplicate key" in message


def test_a_malformed_uri_is_a_configuration_error() -> None:
    engine = engine_for("mongodb", Settings.from_env({}))

    with pytest.raises(ConfigurationError):
        engine.probe(Target("broken", "mongodb", "mongodb://host:notaport/db"))


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("environment", "codec"),
    [
        ({}, "zstd"),
        ({"FLEXDB_COMPRESSION": "none"}, "none"),
        # set before FLEXDB_COMPRESSION existed: still MongoDB's own default
        ({"FLEXDB_MONGO_COMPRESSION": "gzip"}, "gzip"),
        ({"FLEXDB_MONGO_COMPRESSION": "gzip", "FLEXDB_COMPRESSION": "none"}, "gzip"),
    ],
)
def test_the_default_codec_comes_from_settings(environment: dict[str, str], codec: str) -> None:
    engine = engine_for("mongodb", Settings.from_env(environment))

    assert engine.default_compression == codec
    assert engine.archive_name == "archive"  # the workflow appends the codec's extension


def test_defaults_keep_mongo_batches_bounded() -> None:
    settings = Settings.from_env({})

    assert settings.mongo_compression == "" and settings.mongo_batch_bytes == 8 * 1024 * 1024
    assert settings.mongo_read_batch_docs == 1000


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FLEXDB_MONGO_COMPRESSION", "lz4"), ("FLEXDB_MONGO_BATCH_BYTES", "1024"), ("FLEXDB_MONGO_READ_BATCH_DOCS", "-1")],
)
def test_bad_mongo_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: value})
