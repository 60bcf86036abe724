"""The Celery application and the task option presets every app's tasks share. Queue
names and routes are settings (config/settings.py, CELERY_TASK_ROUTES)."""

import os

from celery import Celery
from django.db import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("reckon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Options shared by every task that writes: ack after the work is done, requeue if the
# worker dies mid-task; the idempotency that makes this safe lives in the services.
RELIABLE_TASK = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}

# The errors a task retries by default (autoretry_for): the database or the network
# failed for a moment; anything else is a bug or a refusal and is not retried.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError, ConnectionError, TimeoutError)
