"""Stripe webhooks signed with the stripe library's scheme: valid, bad signature, stale
timestamp, duplicate, out of order."""

import json
import time
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from billing.models import Invoice, StripeEvent
from tests.billing.test_stripe_sync import closed_invoice
from tests.fakes.stripe_server import make_event, sign_webhook

pytestmark = pytest.mark.django_db
SECRET = "whsec_reckon_test"


@pytest.fixture(autouse=True)
def webhook_secret(settings):  # type: ignore[no-untyped-def]
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_API_KEY = ""


def post(event: dict, *, secret: str = SECRET, timestamp: int | None = None):  # type: ignore[no-untyped-def,type-arg]
    payload = json.dumps(event).encode()
    return APIClient().post(
        "/webhooks/stripe",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_webhook(payload, secret, timestamp),
    )


def invoice_event(kind: str, invoice: Invoice, created: int) -> dict:  # type: ignore[type-arg]
    return make_event(
        kind,
        {"id": "in_123", "object": "invoice", "metadata": {"reckon_invoice_id": str(invoice.pk)}},
        created=created,
    )


def test_valid_event_is_stored_then_applied(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    with django_capture_on_commit_callbacks(execute=True):
        response = post(invoice_event("invoice.paid", invoice, int(time.time())))
    assert response.status_code == 200 and response.json()["duplicate"] is False
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.paid_at is not None
    assert StripeEvent.objects.get().status == "processed"


@pytest.mark.parametrize("tamper", ["secret", "stale", "garbage"])
def test_bad_signatures_are_refused_and_nothing_is_stored(tamper: str) -> None:
    invoice = closed_invoice()
    event = invoice_event("invoice.paid", invoice, int(time.time()))
    if tamper == "secret":
        response = post(event, secret="whsec_wrong")
    elif tamper == "stale":
        response = post(event, timestamp=int(time.time()) - 301)
    else:
        response = APIClient().post(
            "/webhooks/stripe",
            b"{}",
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE="t=1,v1=00",
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_rejected"
    assert StripeEvent.objects.count() == 0
    invoice.refresh_from_db()
    assert invoice.status == "finalized"


def test_duplicate_delivery_is_applied_once(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    event = invoice_event("invoice.payment_failed", invoice, int(time.time()))
    with django_capture_on_commit_callbacks(execute=True):
        first = post(event)
    failed_at = Invoice.objects.get(pk=invoice.pk).payment_failed_at
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = post(event)
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert callbacks == []  # a processed duplicate is not processed again
    assert StripeEvent.objects.count() == 1
    assert Invoice.objects.get(pk=invoice.pk).payment_failed_at == failed_at is not None


def test_out_of_order_events_never_undo_a_terminal_state(
    django_capture_on_commit_callbacks,
) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    now = int(time.time())
    with django_capture_on_commit_callbacks(execute=True):
        post(invoice_event("invoice.voided", invoice, now))
        post(invoice_event("invoice.paid", invoice, now - 60))  # older, delivered late
        post(invoice_event("invoice.payment_failed", invoice, now - 120))
    invoice.refresh_from_db()
    assert invoice.status == "void"
    statuses = dict(StripeEvent.objects.values_list("type", "status"))
    assert statuses == {
        "invoice.voided": "processed",
        "invoice.paid": "ignored",
        "invoice.payment_failed": "processed",
    }


def test_uncollectible_then_paid(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    now = int(time.time())
    with django_capture_on_commit_callbacks(execute=True):
        post(invoice_event("invoice.marked_uncollectible", invoice, now))
        post(invoice_event("invoice.paid", invoice, now + 5))
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert invoice.paid_at == datetime.fromtimestamp(now + 5, tz=UTC)
