"""The backup catalog over a blob store, written once for every backend.

With encryption keys configured, archives are encrypted on their way into the store and
decrypted on their way out (:mod:`shared.storage.crypto`): everything above sees plain archives,
checksums are of the plain archive, and the manifest says which key an archive needs.

A backup is the blobs under ``<backup id>/``: its archive and ``manifest.json``. The manifest
is written last, so a backup exists (is listed, can be restored) only once it is complete. A
manifest is believed only when it names its own folder and a plain archive name in it, so a
planted or edited manifest can neither list nor restore a foreign blob. Sweeping removes what
dead attempts left (blobs without a manifest, untouched for long enough).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from collections.abc import Iterator
from typing import BinaryIO

from shared.core.errors import BackupNotFound, FlexDBError, StorageError
from shared.core.logs import get_logger
from shared.domain.backups import BackupManifest, validate_backup_id
from shared.domain.jobs import iso_utc, utcnow
from shared.domain.ports import ArchiveSink, BlobInfo, BlobMissing, BlobStore, Storage
from shared.domain.streams import Window
from shared.storage.crypto import DecryptingReader, EncryptingSink, Keyring

MANIFEST = "manifest.json"
log = get_logger(__name__)


def blob_key(backup_id: str, name: str) -> str:
    """``<backup id>/<name>``: a name is one plain path segment."""
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise BackupNotFound(f"No backup file named {name!r}.")
    return f"{validate_backup_id(backup_id)}/{name}"


class BlobCatalog(Storage):
    def __init__(
        self,
        blobs: BlobStore,
        keyring: Keyring | None = None,
        chunk_bytes: int = 1024 * 1024,
        mirror: BlobStore | None = None,
    ) -> None:
        self.blobs = blobs
        self._keyring = keyring or Keyring()
        self._chunk_bytes = chunk_bytes
        # A second store that receives a copy of every backup (3-2-1); restores fall back to it.
        self.mirror: BlobCatalog | None = BlobCatalog(mirror, self._keyring, chunk_bytes) if mirror is not None else None
        # Manifests already read, by backup id, with the (size, time) of the manifest blob they
        # were read from: a listing (and a metrics scrape) reads only new or changed ones.
        self._read: dict[str, tuple[tuple[int, float], BackupManifest]] = {}

    # ------------------------------------------------------------------ writing

    def open_sink(self, backup_id: str, name: str) -> ArchiveSink:
        sink = self.blobs.writer(blob_key(backup_id, name))
        key = self._keyring.current
        if key is None:
            return sink
        return EncryptingSink(sink, key.key_id, key.key, self._chunk_bytes)

    def write_manifest(self, manifest: BackupManifest) -> None:
        if self.mirror is not None and not manifest.copies:
            manifest = replace(manifest, copies=[{"storage": "mirror", "status": "pending", "at": None}])
        body = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
        with self.blobs.writer(blob_key(manifest.id, MANIFEST)) as sink:
            sink.write(body)
            sink.commit()

    # ------------------------------------------------------------------ reading

    def read_manifest(self, backup_id: str) -> BackupManifest:
        manifest = self._load(backup_id)
        # Listed while any copy has the archive: a restore falls back to the mirror's.
        if not any(copy.blobs.stat(blob_key(backup_id, manifest.archive_name)) for copy in self.copies()):  # type: ignore[attr-defined]
            self._refuse(backup_id, f"its archive {manifest.archive_name!r} is missing or not a plain file")
        return manifest

    def open_archive(self, manifest: BackupManifest, start: int = 0, length: int | None = None) -> BinaryIO:
        self._check(manifest, manifest.id)
        key = blob_key(manifest.id, manifest.archive_name)
        try:
            if not manifest.encryption:  # a range is the store's own (S3: a ranged GET)
                return self.blobs.open(key, start, length)
            stored = self.blobs.open(key)
        except BlobMissing:
            raise BackupNotFound(f"Backup {manifest.id} has a manifest but its archive is missing.") from None
        try:
            plain = DecryptingReader(stored, self._keyring)
        except BaseException:
            stored.close()
            raise
        if start == 0 and length is None:
            return plain  # type: ignore[return-value]
        return Window(plain, start, length, self._chunk_bytes)  # type: ignore[return-value, arg-type]

    def iter_manifests(self, before_id: str | None = None) -> Iterator[BackupManifest]:
        folders = self._folders()
        for gone in set(self._read) - set(folders):
            self._read.pop(gone, None)
        for backup_id in sorted(folders, reverse=True):
            blobs = {info.key.split("/", 1)[1]: info for info in folders[backup_id]}
            if MANIFEST not in blobs or (before_id is not None and backup_id >= before_id):
                continue
            version = (blobs[MANIFEST].size, blobs[MANIFEST].modified)
            cached = self._read.get(backup_id)
            if cached is not None and cached[0] == version:
                manifest = cached[1]
            else:
                try:
                    manifest = self._load(backup_id)
                except (BackupNotFound, StorageError):
                    continue  # a foreign or refused folder: not a backup
                self._read[backup_id] = (version, manifest)
            if manifest.archive_name in blobs:
                yield manifest

    def _load(self, backup_id: str) -> BackupManifest:
        try:
            with self.blobs.open(blob_key(backup_id, MANIFEST)) as handle:
                data = json.loads(handle.read())
            manifest = BackupManifest.from_dict(data)
        except BlobMissing:
            raise BackupNotFound(f"No backup with id {backup_id!r}.") from None
        except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not a manifest's fields
            raise StorageError(f"The manifest of backup {backup_id} is unreadable: {exc}") from None
        self._check(manifest, backup_id)
        return manifest

    def _check(self, manifest: BackupManifest, folder: str) -> None:
        problem = manifest.confinement_problem(folder)
        if problem is not None:
            self._refuse(folder, problem)

    @staticmethod
    def _refuse(folder: str, problem: str) -> None:
        log.warning("backup.manifest_refused", folder=folder, reason=problem)
        raise BackupNotFound(f"No backup with id {folder!r}: the manifest in that folder is refused ({problem}).")

    # ------------------------------------------------------------------ removing

    def delete(self, backup_id: str) -> None:
        prefix = validate_backup_id(backup_id) + "/"
        self.blobs.delete(prefix + MANIFEST)  # first: a half-deleted backup is never listed
        for info in list(self.blobs.list(prefix)):
            self.blobs.delete(info.key)
        if self.mirror is not None:
            self.mirror.delete(backup_id)

    def remove_incomplete(self, older_than_seconds: float) -> list[str]:
        if self.mirror is not None:
            self.mirror.remove_incomplete(older_than_seconds)
        cutoff = time.time() - older_than_seconds
        removed = []
        for backup_id, infos in self._folders().items():
            if any(info.key.endswith("/" + MANIFEST) for info in infos):
                continue
            if max(info.modified for info in infos) < cutoff:  # nobody wrote here for that long
                for info in infos:
                    self.blobs.delete(info.key)
                removed.append(backup_id)
        return sorted(removed)

    def _folders(self) -> dict[str, list[BlobInfo]]:
        folders: dict[str, list[BlobInfo]] = defaultdict(list)
        for info in self.blobs.list(""):
            folder, sep, _name = info.key.partition("/")
            if sep:
                folders[folder].append(info)
        return folders

    # ------------------------------------------------------------------ the mirror

    def copy_to_mirror(self, backup_id: str) -> BackupManifest:
        """Copy the backup's stored blobs (still encrypted, if they are) to the mirror, the
        manifest last, and record the outcome in the manifest of both copies."""
        if self.mirror is None:
            raise StorageError("No mirror is configured (FLEXDB_STORAGE_MIRROR_URL).")
        manifest = self.read_manifest(backup_id)
        try:
            with self.blobs.open(blob_key(backup_id, manifest.archive_name)) as source:
                with self.mirror.blobs.writer(blob_key(backup_id, manifest.archive_name)) as sink:
                    while chunk := source.read(self._chunk_bytes):
                        sink.write(chunk)
                    sink.commit()
            copy = {"storage": "mirror", "status": "copied", "at": iso_utc(utcnow())}
            done = replace(manifest, copies=[copy])
            self.mirror.write_manifest(done)
        except (FlexDBError, BlobMissing, OSError) as exc:
            reason = exc.message if isinstance(exc, FlexDBError) else type(exc).__name__
            done = replace(manifest, copies=[{"storage": "mirror", "status": "failed", "at": iso_utc(utcnow()), "error": reason}])
            self.write_manifest(done)
            raise
        self.write_manifest(done)
        log.info("backup.mirrored", backup_id=backup_id, mirror=self.mirror.describe())
        return done

    # ------------------------------------------------------------------ health

    def describe(self) -> str:
        return self.blobs.describe()

    def problem(self) -> str | None:
        return self.blobs.problem()
