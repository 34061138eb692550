"""The backup catalog: what storage holds, read from the manifests (survives a Redis loss)."""

from __future__ import annotations

from shared.domain.backups import BackupManifest, validate_backup_id
from shared.domain.jobs import Page
from shared.domain.ports import Storage


class BackupCatalog:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def get(self, backup_id: str) -> BackupManifest:
        return self._storage.read_manifest(validate_backup_id(backup_id))

    def list(self, target: str | None, limit: int, cursor: str | None) -> Page:
        before = validate_backup_id(cursor) if cursor else None
        items: list[BackupManifest] = []
        for manifest in self._storage.iter_manifests(before_id=before):
            if target is None or manifest.target == target:
                items.append(manifest)
                if len(items) > limit:
                    break
        has_more = len(items) > limit
        items = items[:limit]
        return Page(items, items[-1].id if has_more else None)
