"""Backups as the catalog knows them: the manifest written beside each archive."""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from shared.core.errors import BackupNotFound

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A database to restore into: a name every engine accepts and no shell or SQL reads as syntax.
DATABASE_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
DATABASE_NAME_RULE = "1-63 letters, digits, '_', '$' or '-', starting with a letter or '_'"
MANIFEST_VERSION = 1


def new_backup_id(now: datetime) -> str:
    """Time-ordered ids: sorting ids newest-first sorts backups newest-first."""
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def validate_backup_id(backup_id: str) -> str:
    # A bare ".." would otherwise route into a storage path.
    if not ID_PATTERN.match(backup_id or ""):
        raise BackupNotFound(f"No backup with id {backup_id!r}: ids use letters, digits, '_' and '-'.")
    return backup_id


@dataclass(frozen=True)
class BackupManifest:
    """Everything needed to list, verify and restore one backup. Never holds a secret."""

    id: str
    target: str
    engine: str
    format: str
    archive_name: str
    created_at: str
    finished_at: str
    duration_seconds: float
    size_bytes: int
    sha256: str
    database: str | None = None
    job_id: str | None = None
    tool_version: str | None = None
    server_version: str | None = None
    compression: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    manifest_version: int = MANIFEST_VERSION
    status: str = "complete"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
