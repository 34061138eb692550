from __future__ import annotations

import base64

from flask import Blueprint, Response, jsonify, request, url_for

from api.http import UploadStream, page_body, page_limit, parse_body, parse_query, present_backup, services
from api.openapi import operation
from api.schemas import (
    BackupImportQuerySchema,
    BackupListQuerySchema,
    BackupPageSchema,
    BackupSchema,
    BackupUpdateSchema,
)
from shared.core.errors import ArchiveCorrupt, ArchiveTooLarge, BackupInUse, BackupPinned, EngineUnavailable, RangeNotSatisfiable, TargetNotFound
from shared.domain.ranges import ByteRange
from shared.services.catalog import ArchiveDownload

bp = Blueprint("backups", __name__)
_backup = BackupSchema()


@bp.get("/backups")
@operation(
    summary="Complete, checksummed backups, newest first (read from the manifests in storage)",
    query=BackupListQuerySchema,
    responses={200: ("A page of backups", BackupPageSchema)},
    tag="backups",
)
def list_backups():
    query = parse_query(BackupListQuerySchema())
    page = services().catalog.list(query["target"], page_limit(query["limit"]), query["cursor"])
    items = [_backup.dump(present_backup(manifest)) for manifest in page.items]
    return jsonify(page_body(page, items, "backups.list_backups", target=query["target"], limit=query["limit"]))


@bp.get("/backups/<backup:backup_id>")
@operation(summary="One backup's manifest", responses={200: ("The backup", BackupSchema)}, tag="backups")
def get_backup(backup_id: str):
    return jsonify(_backup.dump(present_backup(services().catalog.get(backup_id))))


@bp.patch("/backups/<backup:backup_id>")
@operation(
    summary="Pin a backup (retention never deletes it) or unpin it",
    body=BackupUpdateSchema,
    responses={200: ("The backup, with its pin", BackupSchema)},
    tag="backups",
)
def update_backup(backup_id: str):
    body = parse_body(BackupUpdateSchema())
    return jsonify(_backup.dump(present_backup(services().catalog.set_pinned(backup_id, body["pinned"]))))


@bp.delete("/backups/<backup:backup_id>")
@operation(
    summary="Delete a backup: its manifest first, then its archive",
    responses={204: ("Deleted; no body", None)},
    errors=(BackupPinned, BackupInUse),
    tag="backups",
)
def delete_backup(backup_id: str):
    services().catalog.delete(backup_id)
    return "", 204


@bp.get("/backups/<backup_id>/archive")
@operation(
    summary="Download a backup's archive, as pg_restore or mongorestore read it; one byte range with Range",
    headers={"Range": "One byte range: bytes=first-last, bytes=first- or bytes=-count (answer 206)"},
    responses={
        200: ("The archive; its sha256 in Repr-Digest and X-FlexDB-SHA256", None),
        206: ("The range asked for, with Content-Range", None),
    },
    errors=(RangeNotSatisfiable,),
    media_type="application/octet-stream",
    tag="backups",
)
def download_archive(backup_id: str):
    download = services().catalog.download(backup_id, ByteRange.parse(request.headers.get("Range")))
    return _archive_response(download, services().settings.stream_chunk_bytes)


@bp.post("/backups/import")
@operation(
    summary="Import an archive made elsewhere (pg_dump -Fc, or mongodump --archive, gzipped or not) as a backup",
    query=BackupImportQuerySchema,
    raw_body="application/octet-stream",
    responses={201: ("The new backup (source: import); Location: /api/v1/backups/<id>", BackupSchema)},
    errors=(TargetNotFound, ArchiveTooLarge, ArchiveCorrupt, EngineUnavailable),
    tag="backups",
)
def import_backup():
    query = parse_query(BackupImportQuerySchema())
    body = UploadStream(services().settings.import_max_bytes, "FLEXDB_IMPORT_MAX_BYTES")
    manifest = services().catalog.import_archive(query["target"], body, request.content_length)
    location = url_for("backups.get_backup", backup_id=manifest.id)
    return jsonify(_backup.dump(present_backup(manifest))), 201, {"Location": location}


class _Chunks:
    """The archive's bytes in chunks as the response body; closing it closes the archive, also
    when the client goes away or the request is a HEAD that reads nothing."""

    def __init__(self, download: ArchiveDownload, chunk_size: int) -> None:
        self._stream, self._chunk_size = download.stream, chunk_size

    def __iter__(self):
        while chunk := self._stream.read(self._chunk_size):
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _archive_response(download: ArchiveDownload, chunk_size: int) -> Response:
    manifest = download.manifest
    digest = base64.b64encode(bytes.fromhex(manifest.sha256)).decode()
    headers = {
        "Content-Length": str(download.length),
        "Content-Disposition": f'attachment; filename="{manifest.id}-{manifest.archive_name}"',
        "Accept-Ranges": "bytes",
        # RFC 9530: the digest of the whole archive, also on a range answer.
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-FlexDB-SHA256": manifest.sha256,
    }
    if download.partial:
        last = download.start + download.length - 1
        headers["Content-Range"] = f"bytes {download.start}-{last}/{download.size}"
    return Response(
        _Chunks(download, chunk_size),
        status=206 if download.partial else 200,
        headers=headers,
        mimetype="application/octet-stream",
        direct_passthrough=True,
    )
