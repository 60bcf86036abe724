"""Tests of the fake Stripe server itself, driven by the real ``stripe`` SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import stripe

from tests.fakes.stripe_server import FakeStripe, decode_params, make_event, sign_webhook

API_KEY = "sk_test_fake_reckon"
WHSEC = "whsec_test_secret"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeStripe) -> FakeStripe:
    fake_server.reset()
    return fake_server


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": fake.url}, max_network_retries=0)


def _customer(client: stripe.StripeClient, **params: object) -> stripe.Customer:
    return client.v1.customers.create({"name": "Acme", **params})


# --------------------------------------------------------------------------- lifecycle


def test_start_stop_binds_loopback_and_releases_port() -> None:
    fake = FakeStripe().start()
    try:
        assert fake.url.startswith("http://127.0.0.1:")
        client = fake.client()
        assert client.v1.customers.create({"name": "x"}).id.startswith("cus_")
    finally:
        fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(stripe.APIConnectionError):
        stripe.StripeClient(
            "sk_test_fake", base_addresses={"api": fake.url}, max_network_retries=0
        ).v1.customers.create({"name": "y"})


def test_module_level_configuration(fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "api_key", API_KEY)
    monkeypatch.setattr(stripe, "api_base", fake.url)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    cus = stripe.Customer.create(name="Global")
    assert stripe.Customer.retrieve(cus.id).name == "Global"
    assert set(fake.customers) == {cus.id}


# --------------------------------------------------------------------------- customers


def test_create_retrieve_update_customer(fake: FakeStripe, client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create(
        {
            "name": "Acme",
            "email": "billing@acme.test",
            "metadata": {"tenant_id": "42", "plan": "pro"},
            "address": {"country": "US", "postal_code": "94107"},
        }
    )
    assert cus.id.startswith("cus_")
    assert cus.object == "customer"
    assert cus.livemode is False
    assert cus.metadata.to_dict() == {"tenant_id": "42", "plan": "pro"}
    assert cus.address is not None and cus.address.country == "US"
    assert cus.address.line1 is None
    assert cus.next_invoice_sequence == 1

    updated = client.v1.customers.update(
        cus.id, {"name": "Acme Inc", "metadata": {"plan": "", "region": "eu"}, "email": ""}
    )
    assert updated.id == cus.id
    assert updated.name == "Acme Inc"
    assert updated.email is None  # "" unsets, like Stripe
    assert updated.metadata.to_dict() == {"tenant_id": "42", "region": "eu"}  # merged, "" deletes

    fetched = client.v1.customers.retrieve(cus.id)
    assert fetched.name == "Acme Inc"
    assert fake.customers[cus.id]["metadata"] == {"tenant_id": "42", "region": "eu"}
    assert [e["type"] for e in fake.events] == ["customer.created", "customer.updated"]
    assert fake.events[1]["data"]["previous_attributes"]["name"] == "Acme"

    update_call = fake.calls_to("POST", f"/v1/customers/{cus.id}")[0]
    assert update_call.params == {
        "name": "Acme Inc",
        "metadata": {"plan": "", "region": "eu"},
        "email": "",
    }


def test_missing_customer_is_404_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.retrieve("cus_doesnotexist")
    assert exc.value.http_status == 404
    assert exc.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.update("cus_doesnotexist", {"name": "x"})
    assert exc.value.http_status == 404


# --------------------------------------------------------------------------- invoices


def test_invoice_with_items_attached_and_pending_items_excluded(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    cus = _customer(client)
    pending = client.v1.invoice_items.create(
        {"customer": cus.id, "amount": 999, "currency": "usd", "description": "stray"}
    )
    inv = client.v1.invoices.create(
        {
            "customer": cus.id,
            "auto_advance": False,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "currency": "usd",
            "metadata": {"reckon_invoice_id": "inv-1"},
            "pending_invoice_items_behavior": "exclude",
        }
    )
    assert inv.id.startswith("in_")
    assert inv.status == "draft"
    assert inv.number is None
    assert inv.lines.data == []
    assert inv.total == 0
    assert inv.collection_method == "send_invoice"
    assert inv.due_date == inv.created + 30 * 86400
    assert inv.metadata.to_dict() == {"reckon_invoice_id": "inv-1"}

    first = client.v1.invoice_items.create(
        {
            "customer": cus.id,
            "invoice": inv.id,
            "amount": 1500,
            "currency": "usd",
            "description": "Base fee",
            "metadata": {"line": "1"},
            "period": {"start": 1_700_000_000, "end": 1_702_592_000},
        }
    )
    second = client.v1.invoice_items.create(
        {
            "customer": cus.id,
            "invoice": inv.id,
            "unit_amount_decimal": "0.0125",
            "quantity": 100_000,
            "currency": "usd",
            "description": "Reasoning tokens",
        }
    )
    assert first.id.startswith("ii_") and first.object == "invoiceitem"
    assert first.invoice == inv.id
    assert first.period.start == 1_700_000_000 and first.period.end == 1_702_592_000
    assert second.amount == 1250
    assert second.quantity == 100_000
    assert str(second.pricing.unit_amount_decimal) == "0.0125"

    listed = client.v1.invoice_items.list({"invoice": inv.id})
    assert {i.id for i in listed.data} == {first.id, second.id}
    assert listed.data[0].id == second.id  # newest first
    assert pending.id not in {i.id for i in listed.data}
    assert fake.invoice_items[pending.id]["invoice"] is None

    fetched = client.v1.invoices.retrieve(inv.id)
    assert [line.parent.invoice_item_details.invoice_item for line in fetched.lines.data] == [
        first.id,
        second.id,
    ]
    assert fetched.lines.data[0].id.startswith("il_")
    assert fetched.lines.data[0].object == "line_item"
    assert fetched.subtotal == fetched.total == 2750  # drafts keep totals current

    create_call = fake.calls_to("POST", "/v1/invoices")[0]
    assert create_call.params["pending_invoice_items_behavior"] == "exclude"
    assert create_call.params["metadata"] == {"reckon_invoice_id": "inv-1"}
    assert create_call.params["auto_advance"] == "false"
    assert create_call.idempotency_key  # the SDK sends one on every POST


def test_pending_items_included_when_asked(client: stripe.StripeClient) -> None:
    cus = _customer(client)
    a = client.v1.invoice_items.create({"customer": cus.id, "amount": 100, "currency": "usd"})
    b = client.v1.invoice_items.create({"customer": cus.id, "amount": 200, "currency": "usd"})
    eur = client.v1.invoice_items.create({"customer": cus.id, "amount": 300, "currency": "eur"})
    inv = client.v1.invoices.create(
        {"customer": cus.id, "pending_invoice_items_behavior": "include", "currency": "usd"}
    )
    line_items = [line.parent.invoice_item_details.invoice_item for line in inv.lines.data]
    assert line_items == [b.id, a.id]  # pending items: newest first, like Stripe
    assert inv.total == 300
    pending = client.v1.invoice_items.list({"customer": cus.id, "pending": True})
    assert [i.id for i in pending.data] == [eur.id]


def test_finalize_computes_totals_and_assigns_sequential_numbers(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    cus = client.v1.customers.create({"name": "Acme", "invoice_prefix": "ACME"})
    numbers = []
    for amounts in ([1000, 234], [5]):
        inv = client.v1.invoices.create(
            {"customer": cus.id, "pending_invoice_items_behavior": "exclude"}
        )
        for amount in amounts:
            client.v1.invoice_items.create(
                {"customer": cus.id, "invoice": inv.id, "amount": amount, "currency": "usd"}
            )
        final = client.v1.invoices.finalize_invoice(inv.id)
        assert final.status == "open"
        assert final.subtotal == final.total == final.amount_due == sum(amounts)
        assert final.amount_remaining == sum(amounts)
        assert final.amount_paid == 0
        assert final.status_transitions.finalized_at is not None
        assert len(final.lines.data) == len(amounts)
        assert fake.invoices[inv.id]["status"] == "open"
        numbers.append(final.number)
    assert numbers == ["ACME-0001", "ACME-0002"]
    assert fake.customers[cus.id]["next_invoice_sequence"] == 3
    assert "invoice.finalized" in [e["type"] for e in fake.events]


def test_zero_total_invoice_is_paid_on_finalize(client: stripe.StripeClient) -> None:
    cus = _customer(client)
    inv = client.v1.invoices.create({"customer": cus.id})
    final = client.v1.invoices.finalize_invoice(inv.id)
    assert final.status == "paid"
    assert final.number is not None
    assert final.status_transitions.paid_at is not None


def test_status_transitions(fake: FakeStripe, client: stripe.StripeClient) -> None:
    cus = _customer(client)

    def open_invoice() -> str:
        inv = client.v1.invoices.create({"customer": cus.id})
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": inv.id, "amount": 700, "currency": "usd"}
        )
        return client.v1.invoices.finalize_invoice(inv.id).id

    draft = client.v1.invoices.create({"customer": cus.id})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.void_invoice(draft.id)
    assert exc.value.http_status == 400
    assert exc.value.code == "invoice_not_editable"
    assert exc.value.json_body["error"]["type"] == "invalid_request_error"
    assert fake.invoices[draft.id]["status"] == "draft"

    voided = client.v1.invoices.void_invoice(open_invoice())
    assert voided.status == "void" and voided.status_transitions.voided_at is not None
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(voided.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.finalize_invoice(voided.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(voided.id)
    assert fake.invoices[voided.id]["status"] == "void"

    paid = client.v1.invoices.pay(open_invoice())
    assert paid.status == "paid" and paid.amount_paid == 700 and paid.amount_remaining == 0
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(paid.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.mark_uncollectible(paid.id)

    bad = client.v1.invoices.mark_uncollectible(open_invoice())
    assert bad.status == "uncollectible"
    assert client.v1.invoices.pay(bad.id, {"paid_out_of_band": True}).status == "paid"

    open_id = open_invoice()
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": open_id, "amount": 1, "currency": "usd"}
        )
    assert exc.value.code == "invoice_not_editable"
    assert fake.invoices[open_id]["total"] == 700


def test_invoice_lines_are_capped_and_pageable(client: stripe.StripeClient) -> None:
    cus = _customer(client)
    inv = client.v1.invoices.create({"customer": cus.id})
    items = [
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": inv.id, "amount": n, "currency": "usd"}
        ).id
        for n in range(1, 13)
    ]
    final = client.v1.invoices.finalize_invoice(inv.id)
    assert final.total == sum(range(1, 13))
    assert len(final.lines.data) == 10
    assert final.lines.has_more is True
    all_lines = list(client.v1.invoices.line_items.list(inv.id).auto_paging_iter())
    assert [line.parent.invoice_item_details.invoice_item for line in all_lines] == items
    paged = client.v1.invoice_items.list({"invoice": inv.id, "limit": 5})
    assert len(paged.data) == 5 and paged.has_more
    assert [i.id for i in paged.auto_paging_iter()] == list(reversed(items))


def test_validation_errors(fake: FakeStripe, client: stripe.StripeClient) -> None:
    cus = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoice_items.create({"customer": "cus_nope", "amount": 1, "currency": "usd"})
    assert exc.value.code == "resource_missing" and exc.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.create({})
    assert exc.value.code == "parameter_missing" and exc.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoices.create({"customer": cus.id, "bogus": "1"})
    assert exc.value.code == "parameter_unknown" and exc.value.param == "bogus"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.invoice_items.create({"customer": cus.id, "amount": "ten", "currency": "usd"})
    assert exc.value.code == "parameter_invalid_integer"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create({"customer": cus.id, "days_until_due": 30})
    # Known to the SDK but not modelled: accepted, ignored, and reported.
    item = client.v1.invoice_items.create(
        {"customer": cus.id, "amount": 5, "currency": "usd", "tax_rates": ["txr_1"]}
    )
    assert item.tax_rates == []
    assert fake.calls[-1].ignored_params == ["tax_rates"]


def test_unknown_path_is_404(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.raw_request("get", "/v1/charges")
    assert exc.value.http_status == 404
    assert exc.value.json_body["error"]["type"] == "invalid_request_error"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.raw_request("post", "/v1/invoices/in_123/send")
    assert exc.value.http_status == 404


# --------------------------------------------------------------------------- auth


def test_wrong_api_key_is_authentication_error(fake: FakeStripe) -> None:
    bad = stripe.StripeClient(
        "sk_test_wrong_key_123456", base_addresses={"api": fake.url}, max_network_retries=0
    )
    with pytest.raises(stripe.AuthenticationError) as exc:
        bad.v1.customers.create({"name": "x"})
    assert exc.value.http_status == 401
    assert fake.customers == {}
    assert [(c.method, c.path, c.status) for c in fake.calls] == [("POST", "/v1/customers", 401)]


# --------------------------------------------------------------------------- idempotency


def test_idempotent_replay_returns_same_object_without_side_effect(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    params = {"name": "Acme", "metadata": {"tenant_id": "7"}}
    first = client.v1.customers.create(params, {"idempotency_key": "cust-7"})
    again = client.v1.customers.create(params, {"idempotency_key": "cust-7"})
    assert again.id == first.id
    assert again.to_dict() == first.to_dict()
    assert list(fake.customers) == [first.id]
    assert [e["type"] for e in fake.events] == ["customer.created"]
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert first.last_response is not None
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert [(c.idempotency_key, c.replayed, c.status) for c in fake.calls] == [
        ("cust-7", False, 200),
        ("cust-7", True, 200),
    ]

    inv = client.v1.invoices.create({"customer": first.id})
    item_params = {"customer": first.id, "invoice": inv.id, "amount": 10, "currency": "usd"}
    one = client.v1.invoice_items.create(item_params, {"idempotency_key": "ii-1"})
    two = client.v1.invoice_items.create(item_params, {"idempotency_key": "ii-1"})
    assert one.id == two.id
    assert len(fake.invoice_items) == 1
    assert fake.invoices[inv.id]["total"] == 10


def test_idempotency_key_reuse_with_different_params(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    client.v1.customers.create({"name": "Acme"}, {"idempotency_key": "k1"})
    with pytest.raises(stripe.IdempotencyError) as exc:
        client.v1.customers.create({"name": "Other"}, {"idempotency_key": "k1"})
    assert exc.value.http_status == 400
    assert exc.value.json_body["error"]["type"] == "idempotency_error"
    assert len(fake.customers) == 1
    assert [c.status for c in fake.calls] == [200, 400]


# --------------------------------------------------------------------------- failures


def test_fail_next_makes_one_call_fail_without_side_effect(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.fail_next()
    with pytest.raises(stripe.APIError) as exc:
        client.v1.customers.create({"name": "Acme"}, {"idempotency_key": "k"})
    assert exc.value.http_status == 500
    assert fake.customers == {}
    # Not stored under the key: the retry executes for real.
    cus = client.v1.customers.create({"name": "Acme"}, {"idempotency_key": "k"})
    assert list(fake.customers) == [cus.id]
    assert [(c.status, c.injected_failure, c.replayed) for c in fake.calls] == [
        (500, True, False),
        (200, False, False),
    ]


def test_sdk_retry_after_500_reuses_the_idempotency_key(fake: FakeStripe) -> None:
    fake.fail_next(1, status=503)
    client = fake.client(max_network_retries=1)
    cus = client.v1.customers.create({"name": "Acme"})
    assert list(fake.customers) == [cus.id]
    first, second = fake.calls
    assert (first.status, second.status) == (503, 200)
    assert first.idempotency_key == second.idempotency_key is not None


def test_fail_next_commit_simulates_lost_response(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    cus = _customer(client)
    inv = client.v1.invoices.create({"customer": cus.id})
    client.v1.invoice_items.create(
        {"customer": cus.id, "invoice": inv.id, "amount": 50, "currency": "usd"}
    )
    fake.fail_next(commit=True)
    with pytest.raises(stripe.APIError):
        client.v1.invoices.finalize_invoice(inv.id, options={"idempotency_key": "fin-1"})
    assert fake.invoices[inv.id]["status"] == "open"  # it did happen
    final = client.v1.invoices.finalize_invoice(inv.id, options={"idempotency_key": "fin-1"})
    assert final.status == "open" and final.number is not None
    assert fake.calls[-1].replayed is True
    # A retry under a fresh key hits the real state machine instead.
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.finalize_invoice(inv.id)


def test_fail_next_status_zero_drops_connection(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.fail_next(status=0)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "Acme"})
    assert fake.customers == {}
    assert client.v1.customers.create({"name": "Acme"}).id in fake.customers


def test_fail_next_other_statuses(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.fail_next(2, status=429)
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError):
            client.v1.customers.create({"name": "Acme"})
    fake.fail_next(status=402)
    with pytest.raises(stripe.CardError):
        client.v1.customers.create({"name": "Acme"})
    assert fake.customers == {}
    with pytest.raises(ValueError):
        fake.fail_next(status=200)


def test_reset_clears_everything(fake: FakeStripe, client: stripe.StripeClient) -> None:
    client.v1.customers.create({"name": "Acme"}, {"idempotency_key": "k"})
    fake.fail_next()
    fake.reset()
    assert (fake.calls, fake.customers, fake.events) == ([], {}, [])
    # The pending failure and the stored key are gone too.
    client.v1.customers.create({"name": "Other"}, {"idempotency_key": "k"})
    assert [c.status for c in fake.calls] == [200]


def test_concurrent_requests(fake: FakeStripe) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            client = fake.client()
            for i in range(5):
                client.v1.customers.create({"name": f"{n}-{i}"})
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(fake.customers) == 40
    assert len(fake.calls) == 40


# --------------------------------------------------------------------------- helpers


def test_decode_params_nested_and_lists() -> None:
    decoded = decode_params(
        "customer=cus_1&metadata[0]=a&metadata[k]=v&period[start]=1&period[end]=2"
        "&lines[0][amount]=5&lines[1][amount]=6&expand[]=x&expand[]=y&name=A+B"
    )
    assert decoded == {
        "customer": "cus_1",
        "metadata": {"0": "a", "k": "v"},
        "period": {"start": "1", "end": "2"},
        "lines": [{"amount": "5"}, {"amount": "6"}],
        "expand": ["x", "y"],
        "name": "A B",
    }


# --------------------------------------------------------------------------- webhooks


def test_signed_webhook_is_accepted_by_the_sdk() -> None:
    event = make_event("invoice.paid", {"id": "in_123", "object": "invoice", "status": "paid"})
    payload = json.dumps(event).encode()
    header = sign_webhook(payload, WHSEC)
    assert header.startswith("t=") and ",v1=" in header

    constructed = stripe.Webhook.construct_event(payload, header, WHSEC)
    assert constructed.id == event["id"] and constructed.id.startswith("evt_")
    assert constructed.type == "invoice.paid"
    assert constructed.object == "event"
    assert constructed.livemode is False
    assert constructed.api_version == stripe.api_version
    assert constructed.data.object.id == "in_123"
    # str payloads and the SDK's own signer agree with ours.
    ts = int(time.time())
    assert sign_webhook(payload.decode(), WHSEC, ts) == sign_webhook(payload, WHSEC, ts)
    assert sign_webhook(payload, WHSEC, ts) == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), WHSEC, ts
    )


def test_make_event_fields() -> None:
    event = make_event("customer.created", {"id": "cus_1"}, event_id="evt_fixed", created=123)
    assert event["id"] == "evt_fixed"
    assert event["created"] == 123
    assert event["data"] == {"object": {"id": "cus_1"}}


def test_tampered_or_stale_webhook_is_rejected() -> None:
    payload = json.dumps(make_event("invoice.paid", {"id": "in_1", "amount_paid": 100})).encode()
    header = sign_webhook(payload, WHSEC)
    tampered = payload.replace(b'"amount_paid": 100', b'"amount_paid": 999')
    assert tampered != payload
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, header, WHSEC)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other")

    stale = sign_webhook(payload, WHSEC, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, stale, WHSEC)
    recent = sign_webhook(payload, WHSEC, timestamp=int(time.time()) - 240)
    assert stripe.Webhook.construct_event(payload, recent, WHSEC).type == "invoice.paid"


def test_fake_records_events_that_can_be_delivered_as_webhooks(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    cus = _customer(client)
    inv = client.v1.invoices.create({"customer": cus.id})
    client.v1.invoice_items.create(
        {"customer": cus.id, "invoice": inv.id, "amount": 42, "currency": "usd"}
    )
    client.v1.invoices.finalize_invoice(inv.id, options={"idempotency_key": "fin"})
    client.v1.invoices.pay(inv.id)
    types = [e["type"] for e in fake.events]
    assert types == [
        "customer.created",
        "invoice.created",
        "invoiceitem.created",
        "invoice.finalized",
        "invoice.paid",
    ]
    finalized = fake.events[3]
    assert finalized["request"]["idempotency_key"] == "fin"
    assert finalized["data"]["object"]["status"] == "open"  # snapshot at emission time
    payload = json.dumps(fake.events[-1]).encode()
    event = stripe.Webhook.construct_event(payload, sign_webhook(payload, WHSEC), WHSEC)
    assert event.data.object.id == inv.id and event.data.object.status == "paid"
