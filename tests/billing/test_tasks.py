"""Celery task names never change (queued messages and the beat schedule use them), and
every task a service enqueues by name (billing/enqueue.py) is registered under it."""

import pytest

from billing import enqueue, tasks
from config.celery import app

LEGACY_NAMES = {
    tasks.close_due_periods: "billing.tasks.close_due_periods",
    tasks.close_periods: "billing.tasks.close_periods",
    tasks.close_period: "billing.tasks.close_period",
    tasks.sync_invoice_to_stripe: "billing.tasks.sync_invoice_to_stripe",
    tasks.sync_pending_invoices: "billing.tasks.sync_pending_invoices",
    tasks.process_stripe_event: "billing.tasks.process_stripe_event",
    tasks.void_invoice_in_stripe: "billing.tasks.void_invoice_in_stripe",
    tasks.expire_credits: "billing.tasks.expire_credits",
    tasks.alerts_evaluate_task: "billing.alerts_evaluate",
    tasks.alerts_sweep: "billing.alerts_sweep",
    tasks.alert_deliver_task: "billing.alert_deliver",
}


def test_task_names_are_unchanged() -> None:
    assert {task.name: name for task, name in LEGACY_NAMES.items()} == {
        name: name for name in LEGACY_NAMES.values()
    }


def test_every_name_services_enqueue_is_a_registered_task() -> None:
    for name in (
        enqueue.SYNC_INVOICE_TO_STRIPE,
        enqueue.VOID_INVOICE_IN_STRIPE,
        enqueue.ALERT_DELIVER,
    ):
        assert app.tasks[name].name == name


@pytest.mark.django_db
def test_a_service_enqueues_by_name_once_committed(
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        tasks.sync_invoice_to_stripe,
        "apply_async",
        lambda args=None, kwargs=None, **options: sent.append(tuple(args or ())),
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        enqueue.enqueue_on_commit(enqueue.SYNC_INVOICE_TO_STRIPE, 42)
    assert sent == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert sent == [(42,)]
