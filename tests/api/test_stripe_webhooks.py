"""Stripe webhooks signed with the stripe library's scheme: valid, bad signature, stale
or future timestamp, duplicate, out of order, malformed, and events for another invoice."""

import json
import time
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from billing.models import Invoice, StripeEvent
from billing.stripe import invoice_sync_stripe
from tests import stripe_helpers
from tests.billing.test_stripe import closed_invoice
from tests.fakes.stripe_server import FakeStripe, make_event, sign_webhook

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


def pushed_invoice(stripe_invoice_id: str = "in_123") -> Invoice:
    """A closed invoice as the push leaves it: its Stripe invoice id stored."""
    invoice = closed_invoice()
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_invoice_id)
    invoice.refresh_from_db()
    return invoice


def invoice_event(kind: str, invoice: Invoice, created: int) -> dict:  # type: ignore[type-arg]
    return make_event(
        kind,
        {
            "id": invoice.stripe_invoice_id,
            "object": "invoice",
            "metadata": {"reckon_invoice_id": str(invoice.pk)},
        },
        created=created,
    )


def test_valid_event_is_stored_then_applied(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    invoice = pushed_invoice()
    with django_capture_on_commit_callbacks(execute=True):
        response = post(invoice_event("invoice.paid", invoice, int(time.time())))
    assert response.status_code == 200 and response.json()["duplicate"] is False
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.paid_at is not None
    assert StripeEvent.objects.get().status == "processed"


@pytest.mark.parametrize("tamper", ["secret", "stale", "garbage"])
def test_bad_signatures_are_refused_and_nothing_is_stored(tamper: str) -> None:
    invoice = pushed_invoice()
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
    invoice = pushed_invoice()
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


def test_redelivery_of_an_event_whose_processing_failed_applies_it(
    django_capture_on_commit_callbacks,
) -> None:  # type: ignore[no-untyped-def]
    invoice = pushed_invoice()
    event = invoice_event("invoice.paid", invoice, int(time.time()))
    with django_capture_on_commit_callbacks(execute=False):
        post(event)  # stored; its processing never ran (as if the task failed for good)
    StripeEvent.objects.update(status=StripeEvent.Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = post(event)
    assert again.json()["duplicate"] is True and len(callbacks) == 1
    assert StripeEvent.objects.get().status == "processed"
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"


def test_out_of_order_events_never_undo_a_terminal_state(
    django_capture_on_commit_callbacks,
) -> None:  # type: ignore[no-untyped-def]
    invoice = pushed_invoice()
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
    invoice = pushed_invoice()
    now = int(time.time())
    with django_capture_on_commit_callbacks(execute=True):
        post(invoice_event("invoice.marked_uncollectible", invoice, now))
        post(invoice_event("invoice.paid", invoice, now + 5))
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert invoice.paid_at == datetime.fromtimestamp(now + 5, tz=UTC)


def test_future_timestamp_is_refused_like_a_stale_one() -> None:
    invoice = pushed_invoice()
    event = invoice_event("invoice.paid", invoice, int(time.time()))
    response = post(event, timestamp=int(time.time()) + 3600)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_rejected"
    assert StripeEvent.objects.count() == 0
    invoice.refresh_from_db()
    assert invoice.status == "finalized"


def test_future_timestamp_is_read_as_the_stripe_library_reads_it() -> None:
    """The library takes the first exact ``t=`` item and the text before a second "="."""
    invoice = pushed_invoice()
    payload = json.dumps(invoice_event("invoice.paid", invoice, int(time.time()))).encode()
    future = int(time.time()) + 3600
    digest = sign_webhook(payload, SECRET, future).split("v1=")[1]
    for header in (f" t=1,t={future},v1={digest}", f"t={future}=x,v1={digest}"):
        response = APIClient().post(
            "/webhooks/stripe",
            payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        )
        assert response.status_code == 400, header
    assert StripeEvent.objects.count() == 0


def _now_event(**overrides: object) -> dict:  # type: ignore[type-arg]
    """A well-formed invoice.paid event for in_123, with fields replaced or removed."""
    event = make_event(
        "invoice.paid",
        {"id": "in_123", "object": "invoice", "metadata": {}},
        created=int(time.time()),
    )
    for key, value in overrides.items():
        if value is _DROP:
            del event[key]
        else:
            event[key] = value
    return event


_DROP = object()


def _with_object(obj: object) -> dict:  # type: ignore[type-arg]
    return _now_event(data={"object": obj})


MALFORMED = {
    "no id": lambda pk: _now_event(id=_DROP),
    "id not a string": lambda pk: _now_event(id=12),
    "id too long": lambda pk: _now_event(id="evt_" + "x" * 200),
    "no created": lambda pk: _now_event(created=_DROP),
    "created a string": lambda pk: _now_event(created="yesterday"),
    "created out of range": lambda pk: _now_event(created=10**18),
    "no type": lambda pk: _now_event(type=_DROP),
    "list body": lambda pk: [_now_event()],
    "scalar body": lambda pk: 42,
    "no data": lambda pk: _now_event(data=_DROP),
    "data.object a string": lambda pk: _with_object("in_123"),
    "invoice without id": lambda pk: _with_object({"object": "invoice"}),
    "metadata a list": lambda pk: _with_object({"id": "in_123", "metadata": ["x"]}),
    "reckon_invoice_id not numeric": lambda pk: _with_object(
        {"id": "in_123", "metadata": {"reckon_invoice_id": f"{pk}abc"}}
    ),
    "reckon_invoice_id huge": lambda pk: _with_object(
        {"id": "in_123", "metadata": {"reckon_invoice_id": "9" * 40}}
    ),
    "NUL in a string": lambda pk: _with_object(
        {"id": "in_123", "metadata": {"reckon_invoice_id": str(pk), "note": "a\x00b"}}
    ),
    "NaN amount": lambda pk: _with_object({"id": "in_123", "amount_paid": float("nan")}),
    "infinite amount": lambda pk: _with_object({"id": "in_123", "amount_paid": float("inf")}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_signed_malformed_event_is_stored_rejected_and_acknowledged(
    case: str, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    invoice = pushed_invoice()
    body = MALFORMED[case](invoice.pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(body)
        again = post(body)
    assert response.status_code == 200, response.content
    stored = StripeEvent.objects.get()
    assert stored.status == "rejected" and stored.error
    assert stored.raw_payload  # the body as signed, kept
    assert response.json()["status"] == "rejected"
    assert again.status_code == 200 and again.json()["duplicate"] is True
    invoice.refresh_from_db()
    assert invoice.status == "finalized" and invoice.paid_at is None


def test_signed_body_that_is_not_json_is_stored_rejected() -> None:
    payload = b"not json at all"
    response = APIClient().post(
        "/webhooks/stripe",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_webhook(payload, SECRET),
    )
    assert response.status_code == 200
    stored = StripeEvent.objects.get()
    assert (stored.status, stored.raw_payload, stored.payload) == (
        "rejected",
        "not json at all",
        None,
    )


def test_malformed_event_stored_before_the_check_is_rejected_when_processed() -> None:
    from billing.stripe_webhooks import stripe_event_process

    invoice = pushed_invoice()
    stored = StripeEvent.objects.create(
        event_id="evt_old",
        type="invoice.paid",
        created=datetime.now(tz=UTC),
        payload=_with_object({"id": "in_123", "metadata": {"reckon_invoice_id": "x1"}}),
    )
    assert stripe_event_process(event_pk=stored.pk).status == "rejected"
    invoice.refresh_from_db()
    assert invoice.status == "finalized"


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("in_ours", "in_other"), ("", "in_other"), ("in_ours", "")],
    ids=["another stripe invoice", "ours not pushed yet", "event object id empty"],
)
def test_paid_event_for_another_stripe_invoice_does_not_mark_ours_paid(
    ours: str, theirs: str, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    invoice = pushed_invoice(ours)
    event = make_event(
        "invoice.paid",
        {"id": theirs, "object": "invoice", "metadata": {"reckon_invoice_id": str(invoice.pk)}},
        created=int(time.time()),
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = post(event)
    assert response.status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "finalized" and invoice.paid_at is None
    assert StripeEvent.objects.get().status in ("ignored", "rejected")


def test_paid_event_whose_metadata_names_another_invoice_is_ignored(
    django_capture_on_commit_callbacks,
) -> None:  # type: ignore[no-untyped-def]
    invoice = pushed_invoice("in_ours")
    event = make_event(
        "invoice.paid",
        {"id": "in_ours", "object": "invoice", "metadata": {"reckon_invoice_id": "999999"}},
        created=int(time.time()),
    )
    with django_capture_on_commit_callbacks(execute=True):
        post(event)
    invoice.refresh_from_db()
    assert invoice.status == "finalized"
    stored = StripeEvent.objects.get()
    assert stored.status == "ignored" and "another invoice" in stored.error


# --- with the fake Stripe server: the events Stripe itself would send ------------------


fake = stripe_helpers.fake  # the fake Stripe server, one per module
stripe_on = stripe_helpers.stripe_on


def _emitted(fake: FakeStripe, kind: str, stripe_invoice_id: str) -> dict:  # type: ignore[type-arg]
    (event,) = [
        e
        for e in fake.events
        if e["type"] == kind and e["data"]["object"]["id"] == stripe_invoice_id
    ]
    return event


def test_stripes_own_paid_event_for_the_pushed_invoice_marks_it_paid(
    stripe_on, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    invoice = invoice_sync_stripe(invoice_id=closed_invoice().pk)
    assert invoice is not None
    stripe_on.client().v1.invoices.pay(invoice.stripe_invoice_id, {"paid_out_of_band": True})
    with django_capture_on_commit_callbacks(execute=True):
        response = post(_emitted(stripe_on, "invoice.paid", invoice.stripe_invoice_id))
    assert response.status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "paid"


@pytest.mark.parametrize("pushed", [True, False], ids=["ours pushed", "ours not pushed yet"])
def test_a_stray_stripe_invoice_naming_ours_in_metadata_does_not_pay_it(
    pushed: bool, stripe_on, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    invoice = closed_invoice()
    if pushed:
        invoice_sync_stripe(invoice_id=invoice.pk)
    client = stripe_on.client()
    customer = client.v1.customers.create({"name": "someone else"})
    stray = client.v1.invoices.create(
        {"customer": customer.id, "metadata": {"reckon_invoice_id": str(invoice.pk)}}
    )
    client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": stray.id, "amount": 2000, "currency": "usd"}
    )
    client.v1.invoices.finalize_invoice(stray.id)
    client.v1.invoices.pay(stray.id, {"paid_out_of_band": True})
    with django_capture_on_commit_callbacks(execute=True):
        response = post(_emitted(stripe_on, "invoice.paid", stray.id))
    assert response.status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "finalized" and invoice.paid_at is None
    assert StripeEvent.objects.get().status == "ignored"
