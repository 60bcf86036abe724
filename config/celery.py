"""The Celery application. Queue names and task option presets live here, in one place."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("reckon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

QUEUE_DEFAULT = "default"
QUEUE_BILLING = "billing"
QUEUE_WEBHOOKS = "webhooks"

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
