"""Names of the Celery tasks: the contract between the API, beat and the workers. Each task
takes only ids as arguments (never a URI or a password: Flower and the broker show them)."""

BACKUP_TASK = "flexdb.backup"
RESTORE_TASK = "flexdb.restore"
SCHEDULED_BACKUP_TASK = "flexdb.scheduled_backup"
RETENTION_TASK = "flexdb.retention"
CALLBACK_TASK = "flexdb.callback"
# Takes a backup id (no secret either): copy that backup to the mirror store.
MIRROR_TASK = "flexdb.mirror"
QUEUE = "flexdb"


def task_for(kind: str) -> str:
    """The task that runs a job of ``kind`` (a JobKind value): backups and restores have their own."""
    return {"backup": BACKUP_TASK, "restore": RESTORE_TASK}[kind]
