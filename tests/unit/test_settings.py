from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.core.errors import ConfigurationError
from shared.core.redaction import redact
from shared.core.settings import Settings


def test_defaults_match_the_documented_contract() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.storage_dir == Path("./var/backups")
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.log_format == "json"
    assert settings.targets == {}
    assert settings.task_time_limit < settings.broker_visibility_timeout


def test_every_bad_variable_is_named_in_one_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"FLEXDB_API_PORT": "http", "FLEXDB_LOG_FORMAT": "xml", "FLEXDB_REDIS_URL": "mysql://x"})
    message = caught.value.message
    assert "FLEXDB_API_PORT: 'http' is not a whole number" in message
    assert "FLEXDB_LOG_FORMAT: 'xml' is not one of json, console" in message
    assert "FLEXDB_REDIS_URL" in message


def test_time_limits_must_stay_below_the_visibility_timeout() -> None:
    with pytest.raises(ConfigurationError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings.from_env({"FLEXDB_TASK_TIME_LIMIT": "9000", "FLEXDB_BROKER_VISIBILITY_TIMEOUT": "8000"})
    with pytest.raises(ConfigurationError, match="SOFT_TIME_LIMIT"):
        Settings.from_env({"FLEXDB_TASK_SOFT_TIME_LIMIT": "100", "FLEXDB_TASK_TIME_LIMIT": "50"})


def test_running_jobs_get_their_shutdown_grace_before_a_stop_kills_them() -> None:
    with pytest.raises(ConfigurationError, match="SHUTDOWN_GRACE_SECONDS .* must be below .*STOP_GRACE_SECONDS"):
        Settings.from_env({"FLEXDB_SHUTDOWN_GRACE_SECONDS": "30", "FLEXDB_STOP_GRACE_SECONDS": "30"})
    settings = Settings.from_env({})
    assert settings.shutdown_grace_seconds < settings.stop_grace_seconds
    assert settings.lock_wait_seconds == 3600, "a busy target means waiting an hour by default, not failing"


def test_targets_come_from_json_and_their_passwords_are_redacted_everywhere() -> None:
    targets = {"orders": {"engine": "postgresql", "uri": "postgresql://app:Very-Secret-1@db:5432/orders"}}
    settings = Settings.from_env({"FLEXDB_TARGETS": json.dumps(targets)})
    target = settings.targets["orders"]
    assert target.engine == "postgresql"
    assert target.masked_uri == "postgresql://app:***@db:5432/orders"
    assert "Very-Secret-1" not in repr(target)
    assert redact("login failed for Very-Secret-1") == "login failed for ***"


def test_targets_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"m": {"engine": "mongodb", "uri": "mongodb://127.0.0.1:27017/app"}}))
    assert Settings.from_env({"FLEXDB_TARGETS_FILE": str(path)}).targets["m"].engine == "mongodb"
    with pytest.raises(ConfigurationError, match="cannot read"):
        Settings.from_env({"FLEXDB_TARGETS_FILE": str(tmp_path / "missing.json")})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"bad name!": {"engine": "postgresql", "uri": "postgresql://h/db"}}', "target name"),
        ('{"t": {"engine": "postgresql"}}', 'needs string fields "engine" and "uri"'),
        ('{"t": {"engine": "postgresql", "uri": "postgresql://h/db", "colour": 1}}', "unknown fields"),
    ],
)
def test_bad_targets_say_what_to_fix(raw: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        Settings.from_env({"FLEXDB_TARGETS": raw})
