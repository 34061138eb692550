"""Names of the Celery tasks: the contract between the API, beat and the workers. Each task
takes only ids as arguments (never a URI or a password: Flower and the broker show them)."""

BACKUP_TASK = "flexdb.backup"
RESTORE_TASK = "flexdb.restore"
SCHEDULED_BACKUP_TASK = "flexdb.scheduled_backup"
RETENTION_TASK = "flexdb.retention"
CALLBACK_TASK = "flexdb.callback"
QUEUE = "flexdb"
