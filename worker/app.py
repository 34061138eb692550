"""The module the Celery CLI loads: ``celery -A worker.app worker`` / ``celery -A worker.app beat``."""

from worker import create_celery

app = create_celery()
