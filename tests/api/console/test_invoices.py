"""The invoice and balance pages show what the REST API returns for the same tenant
(numbers compared exactly, from the pages' data attributes); a member without the billing
capability cannot open them; another tenant's invoice is a 404; the PDF is the API's."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from billing.balances import balance_credit
from billing.invoicing.close import period_close
from billing.invoicing.lifecycle import credit_note_issue
from billing.plans import subscription_create
from tests.api.console.helpers import attr_values, member_client, tenant_api
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, at, use, version

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoices():  # type: ignore[no-untyped-def]
    """September invoices of acme and globex ($10 base + $4 per 1M output tokens), acme's
    with a credit note."""
    standard = version("standard", base="10", output="4.00")
    made = []
    for name in ("acme", "globex"):
        key = ApiKeyFactory(tenant__name=name)
        subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
        use(
            key, datetime(2026, 9, 5, tzinfo=UTC), output_tokens=1_000_000, reasoning_tokens=250_000
        )
        made.append(
            period_close(
                tenant_id=key.tenant_id, period_start=SEP, as_of=datetime(2026, 10, 3, tzinfo=UTC)
            )
        )
    credit_note_issue(invoice=made[0], reason="SLA breach", amount_minor=450)
    return made


def _line_values(line: dict[str, Any]) -> list[str]:
    """A REST line's numbers in the order the page's line row shows them."""
    values = [
        str(line[f])
        for f in ("tokens", "reasoning_tokens", "allowance_tokens", "billable_tokens", "quantity")
    ]
    for tier in line["tiers"]:
        values += [tier["quantity"], tier["unit_price"], tier["flat_fee"], tier["amount"]]
    return values


def test_the_invoice_pages_equal_the_rest_api(invoices) -> None:  # type: ignore[no-untyped-def]
    acme = invoices[0]
    client = member_client(acme.tenant, "ann", "billing")
    rest = tenant_api(acme.tenant)

    listed = rest.get("/api/v1/invoices").json()["results"]
    page = client.get("/console/invoices").content.decode()
    assert attr_values(page, "data-invoice-id") == [str(i["id"]) for i in listed]
    assert attr_values(page, "data-minor", "invoices-table") == [
        str(i["total_minor"]) for i in listed
    ]
    assert "14.50 USD" in page and "RKCN-" in page

    detail = rest.get(f"/api/v1/invoices/{acme.pk}").json()
    assert [line["amount_minor"] for line in detail["lines"]] == [1000, 0, 400, 50]
    html = client.get(f"/console/invoices/{acme.pk}").content.decode()
    assert attr_values(html, "data-position", "invoice-lines") == [
        str(line["position"]) for line in detail["lines"]
    ]
    assert attr_values(html, "data-minor", "invoice-lines") == [
        *(str(line["amount_minor"]) for line in detail["lines"]),
        str(detail["subtotal_minor"]),
        str(detail["tax_minor"]),
        str(detail["total_minor"]),
    ]
    assert attr_values(html, "data-value", "invoice-lines") == [
        v for line in detail["lines"] for v in _line_values(line)
    ]
    assert attr_values(html, "data-minor", "invoice-credit-notes") == [
        *(str(n["amount_minor"]) for n in detail["credit_notes"]),
        str(detail["total_minor"] - 450),
    ]
    assert "4.00 USD" in html and "10.00 USD" in html and "not sent to Stripe" in html

    pdf = client.get(f"/console/invoices/{acme.pk}/pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    assert pdf.content == rest.get(f"/api/v1/invoices/{acme.pk}/pdf").content


def test_another_tenants_invoice_is_not_found(invoices) -> None:  # type: ignore[no-untyped-def]
    acme, globex = invoices
    client = member_client(acme.tenant, "boss", "owner")
    assert client.get(f"/console/invoices/{globex.pk}").status_code == 404
    assert client.get(f"/console/invoices/{globex.pk}/pdf").status_code == 404
    assert client.get(f"/console/invoices/{acme.pk}").status_code == 200
    assert globex.number.encode() not in client.get("/console/invoices").content


@pytest.mark.parametrize(
    "path",
    [
        "/console/invoices",
        "/console/invoices/{id}",
        "/console/invoices/{id}/pdf",
        "/console/balance",
    ],
)
def test_a_developer_cannot_open_invoices_or_the_balance(invoices, path: str) -> None:  # type: ignore[no-untyped-def]
    acme = invoices[0]
    client = member_client(acme.tenant, "dev", "developer")
    response = client.get(path.format(id=acme.pk))
    assert response.status_code == 403
    assert acme.number.encode() not in response.content
    assert b'href="/console/invoices"' not in client.get("/console/keys").content  # not in the nav


@pytest.fixture
def prepaid():  # type: ignore[no-untyped-def]
    """A 5.00 top-up and a 20.00 grant; September's 14.00 invoice drawn from the grant;
    2.00 of October usage (the balance API test's story)."""
    key = ApiKeyFactory(tenant__name="acme")
    subscription_create(
        tenant=key.tenant, plan_version=version("standard", base="10", output="4.00"), starts_at=SEP
    )
    for kind, amount, idem, expires in (
        ("top_up", "5.00", "top", None),
        ("grant", "20.00", "promo", at(2026, 10, 15)),
    ):
        balance_credit(
            tenant_id=key.tenant_id,
            kind=kind,
            amount=Decimal(amount),
            idempotency_key=idem,
            effective_at=SEP,
            expires_at=expires,
        )
    use(key, at(2026, 9, 3), output_tokens=1_000_000, spend_usd=Decimal("4"))
    period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    use(key, at(2026, 10, 2), output_tokens=500_000, spend_usd=Decimal("2"))
    return key.tenant


def test_the_balance_page_equals_the_rest_api(prepaid) -> None:  # type: ignore[no-untyped-def]
    client = member_client(prepaid, "ann", "billing")
    rest = tenant_api(prepaid)
    with time_machine.travel(at(2026, 10, 10), tick=False):
        balance = rest.get("/api/v1/balance").json()
        html = client.get("/console/balance").content.decode()
    entries = rest.get("/api/v1/balance/entries").json()["results"]
    assert balance["remaining"] == "9.000000000000"
    for figure in ("remaining", "available", "uninvoiced"):
        field = "uninvoiced_spend" if figure == "uninvoiced" else figure
        assert attr_values(html, "data-value", f"balance-{figure}") == [balance[field]]
    assert attr_values(html, "data-value", "balance-credits") == [
        v for c in balance["credits"] for v in (c["amount"], c["remaining"])
    ]
    assert attr_values(html, "data-entry-id") == [str(e["id"]) for e in entries]
    assert attr_values(html, "data-value", "balance-entries") == [e["amount"] for e in entries]
    assert "9.00 USD" in html and "-14.00 USD" in html


def test_balance_entries_page_newest_first(prepaid) -> None:  # type: ignore[no-untyped-def]
    for n in range(50):
        balance_credit(
            tenant_id=prepaid.pk,
            kind="top_up",
            amount=Decimal("1.25"),
            idempotency_key=f"more-{n}",
            effective_at=SEP,
        )
    client = member_client(prepaid, "boss", "owner")
    first = client.get("/console/balance").content.decode()
    ids = [int(i) for i in attr_values(first, "data-entry-id")]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True)
    more = attr_values(first, "href", None)
    nexts = [h for h in more if h.startswith("?before=")]
    assert nexts == [f"?before={ids[-1]}"]
    second = client.get(f"/console/balance{nexts[0]}").content.decode()
    rest_ids = [int(i) for i in attr_values(second, "data-entry-id")]
    assert rest_ids and max(rest_ids) < ids[-1] and not set(rest_ids) & set(ids)
    assert not [h for h in attr_values(second, "href") if h.startswith("?before=")]
    assert client.get("/console/balance?before=x1").status_code == 404


def test_a_tenant_without_a_balance_is_told_so(invoices) -> None:  # type: ignore[no-untyped-def]
    client = member_client(invoices[0].tenant, "ann", "billing")
    html = client.get("/console/balance").content.decode()
    assert 'id="balance-none"' in html
