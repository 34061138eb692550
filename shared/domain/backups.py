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
# An archive is a plain file in its backup's folder: no separator, so no way out of it.
ARCHIVE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


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
    # The schedule whose run made it (None: a manual backup); its retention policy governs it.
    schedule_id: str | None = None
    # A subset of the target (some collections or tables): ``scope`` holds the options that
    # narrowed it. Retention never counts a partial backup as one of the newest to keep.
    partial: bool = False
    scope: dict[str, Any] = field(default_factory=dict)
    # Kept whatever retention says, until unpinned (PATCH /backups/<id>).
    pinned: bool = False
    # How it came into the catalog: "backup" (made by this service) or "import" (uploaded with
    # POST /backups/import).
    source: str = "backup"
    # {"algorithm", "key_id"} when the stored archive is encrypted (size and sha256 are of the
    # plain archive, as a restore or a download reads it).
    encryption: dict[str, str] | None = None
    # Other copies of this backup: [{"storage": "mirror", "status": "pending|copied|failed",
    # "at": ISO time, "error": message}] (FLEXDB_STORAGE_MIRROR_URL).
    copies: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def confinement_problem(self, folder_name: str) -> str | None:
        """Why this manifest may not stand for the backup in ``folder_name``, or None.

        A manifest names its own folder and a plain file inside it: one edited, copied or planted
        to point at another backup's archive, or at a file elsewhere, must not be listed or restored."""
        if self.id != folder_name:
            return f"its id {self.id!r} is not the name of its folder {folder_name!r}"
        name = self.archive_name
        if not isinstance(name, str) or not ARCHIVE_NAME_PATTERN.match(name) or name in {".", ".."}:
            return f"its archive name {name!r} is not a plain file name inside the backup's folder"
        return None
