from __future__ import annotations

from flask import Blueprint, jsonify

from api.http import page_body, page_limit, parse_query, present_backup, services
from api.openapi import operation
from api.schemas import BackupListQuerySchema, BackupPageSchema, BackupSchema

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


@bp.get("/backups/<backup_id>")
@operation(summary="One backup's manifest", responses={200: ("The backup", BackupSchema)}, tag="backups")
def get_backup(backup_id: str):
    return jsonify(_backup.dump(present_backup(services().catalog.get(backup_id))))
