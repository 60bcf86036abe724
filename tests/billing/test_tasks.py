"""Celery task names never change (queued messages and the beat schedule use them), and
every task is registered under its name as soon as Django has started, so eager mode
(the embedded default) runs each in-process and never sends one to a broker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from billing import alert_delivery, stripe, stripe_webhooks, tasks
from billing.invoicing import lifecycle
from billing.models import Invoice
from metering import tasks as metering_tasks
from tests.billing.test_stripe import closed_invoice

LEGACY_NAMES = {
    tasks.close_due_periods: "billing.tasks.close_due_periods",
    tasks.close_periods: "billing.tasks.close_periods",
    tasks.close_period: "billing.tasks.close_period",
    stripe.sync_invoice_to_stripe: "billing.tasks.sync_invoice_to_stripe",
    tasks.sync_pending_invoices: "billing.tasks.sync_pending_invoices",
    stripe_webhooks.process_stripe_event: "billing.tasks.process_stripe_event",
    stripe.void_invoice_in_stripe: "billing.tasks.void_invoice_in_stripe",
    tasks.expire_credits: "billing.tasks.expire_credits",
    tasks.alerts_evaluate_task: "billing.alerts_evaluate",
    tasks.alerts_sweep: "billing.alerts_sweep",
    alert_delivery.alert_deliver_task: "billing.alert_deliver",
    metering_tasks.learn_hold_caps: "metering.tasks.learn_hold_caps",
    metering_tasks.control_counters_rebuild: "metering.tasks.control_counters_rebuild",
    metering_tasks.ledger_partitions_ensure: "metering.tasks.ledger_partitions_ensure",
}

# What services and start-up hooks enqueue (once committed, or from the proxy's thread).
ENQUEUED_BY_SERVICES = {
    "billing.tasks.sync_invoice_to_stripe",  # billing.invoicing.close.invoice_finalize
    "billing.tasks.void_invoice_in_stripe",  # billing.invoicing.lifecycle.invoice_transition
    "billing.tasks.process_stripe_event",  # billing.stripe_webhooks.stripe_event_receive
    "billing.alert_deliver",  # billing.alerts.alerts_evaluate / alerts_evaluate_all
    "billing.alerts_evaluate",  # metering's alert handler (billing.tasks.alerts_evaluate_soon)
}

ROOT = Path(__file__).resolve().parents[2]


def test_task_names_are_unchanged() -> None:
    assert {task.name: name for task, name in LEGACY_NAMES.items()} == {
        name: name for name in LEGACY_NAMES.values()
    }


def test_every_task_is_registered_once_django_has_started() -> None:
    """In a fresh process that only sets Django up (what a web process does), every task
    services enqueue and every task of the beat schedule is already registered."""
    probe = (
        "import json, django; django.setup(); from config.celery import app; "
        "print(json.dumps(sorted(app.tasks)))"
    )
    env = os.environ | {"DJANGO_SETTINGS_MODULE": "config.settings"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    registered = set(json.loads(out.stdout.strip().splitlines()[-1]))
    beat = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert ENQUEUED_BY_SERVICES <= registered
    assert beat <= registered
    assert set(LEGACY_NAMES.values()) <= registered


@pytest.mark.django_db
def test_voiding_enqueues_the_stripe_void_task_once_committed(
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        stripe.void_invoice_in_stripe,
        "apply_async",
        lambda args=None, kwargs=None, **options: sent.append(tuple(args or ())),
    )
    invoice = closed_invoice()
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="in_123")
    invoice.refresh_from_db()
    with override_settings(STRIPE_API_KEY="sk_test_x"):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            lifecycle.invoice_transition(invoice=invoice, to=Invoice.Status.VOID)
    assert sent == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert sent == [(invoice.pk,)]
