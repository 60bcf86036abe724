"""Enqueueing billing's Celery tasks from services.

billing/tasks.py imports the services (each task calls one service), so a service never
imports billing.tasks: it names the task here, by its registered name. When the task is
registered in this process (Django's admin autodiscovery imports billing.tasks through
billing.admin) it is sent as that task, so eager mode runs it in-process; otherwise the
message is sent by name for a worker. The names never change (queued messages and the
beat schedule use them); billing/tasks.py registers each task under the constant below.
"""

from typing import Any

from django.db import transaction

from config.celery import app

SYNC_INVOICE_TO_STRIPE = "billing.tasks.sync_invoice_to_stripe"
VOID_INVOICE_IN_STRIPE = "billing.tasks.void_invoice_in_stripe"
ALERT_DELIVER = "billing.alert_deliver"


def enqueue(task_name: str, *args: Any) -> None:
    """Send one task now."""
    app.signature(task_name, args=args).delay()


def enqueue_on_commit(task_name: str, *args: Any) -> None:
    """Send one task once the current transaction commits (nothing if it rolls back)."""
    transaction.on_commit(lambda: enqueue(task_name, *args))
