import csv
import io
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from billing.invoicing.close import period_close
from billing.plans import subscription_create
from metering.services import api_key_create
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, use, version
from tests.staff import staff_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoices():  # type: ignore[no-untyped-def]
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
    return made


def tenant_client(tenant) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=tenant).raw_key}")
    return client


@pytest.fixture
def finance() -> APIClient:
    return staff_client("finance", "finance-write")


def test_tenants_read_only_their_invoices(invoices) -> None:  # type: ignore[no-untyped-def]
    acme, globex = invoices
    client = tenant_client(acme.tenant)
    listed = client.get("/api/v1/invoices").json()["results"]
    assert [i["number"] for i in listed] == [acme.number]
    assert client.get(f"/api/v1/invoices/{globex.pk}").status_code == 404
    detail = client.get(f"/api/v1/invoices/{acme.pk}").json()
    assert detail["total_minor"] == 1000 + 400 + 50
    assert [line["amount_minor"] for line in detail["lines"]] == [1000, 0, 400, 50]
    assert detail["lines"][2]["tiers"][0]["unit_price"] == "4"
    assert (
        client.post(f"/api/v1/invoices/{acme.pk}/credit-notes", {"reason": "x"}).status_code == 403
    )


def test_finance_reads_all_with_filters(invoices, finance: APIClient) -> None:  # type: ignore[no-untyped-def]
    assert len(finance.get("/api/v1/invoices").json()["results"]) == 2
    assert (
        len(
            finance.get("/api/v1/invoices", {"period": "2026-09", "status": "finalized"}).json()[
                "results"
            ]
        )
        == 2
    )
    assert finance.get("/api/v1/invoices", {"period": "2026-10"}).json()["results"] == []
    assert finance.get("/api/v1/invoices", {"status": "nope"}).status_code == 400
    only = finance.get("/api/v1/invoices", {"tenant": str(invoices[1].tenant_id)}).json()["results"]
    assert [i["number"] for i in only] == [invoices[1].number]


def test_pdf_csv_recompute_and_credit_note(invoices, finance: APIClient) -> None:  # type: ignore[no-untyped-def]
    acme = invoices[0]
    pdf = finance.get(f"/api/v1/invoices/{acme.pk}/pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    rows = list(
        csv.DictReader(
            io.StringIO(
                finance.get("/api/v1/invoices/export.csv", {"period": "2026-09"}).content.decode()
            )
        )
    )
    assert sorted(r["number"] for r in rows) == sorted(i.number for i in invoices)
    assert {r["total_minor"] for r in rows} == {"1450"}
    lines = list(
        csv.DictReader(
            io.StringIO(
                finance.get(
                    "/api/v1/invoices/export.csv", {"period": "2026-09", "kind": "lines"}
                ).content.decode()
            )
        )
    )
    assert len(lines) == 8 and {r["amount_minor"] for r in lines} == {"1000", "0", "400", "50"}
    recompute = finance.get(f"/api/v1/invoices/{acme.pk}/recompute").json()
    assert recompute["reproducible"] is True and recompute["differences"] == []
    note = finance.post(
        f"/api/v1/invoices/{acme.pk}/credit-notes",
        {"reason": "SLA breach", "amount_minor": 450},
        format="json",
    )
    assert note.status_code == 201 and note.json()["number"].startswith("RKCN-")
    too_much = finance.post(
        f"/api/v1/invoices/{acme.pk}/credit-notes",
        {"reason": "again", "amount_minor": 1001},
        format="json",
    )
    assert too_much.status_code == 400


def test_export_invoices_command(invoices, tmp_path) -> None:  # type: ignore[no-untyped-def]
    call_command(
        "export_invoices", "--period", "2026-09", "--out", str(tmp_path), stdout=io.StringIO()
    )
    assert len((tmp_path / "invoices-2026-09.csv").read_text().splitlines()) == 3
    assert len((tmp_path / "invoice-lines-2026-09.csv").read_text().splitlines()) == 9
    out = io.StringIO()
    call_command("invoice_recompute", invoices[0].number, stdout=out)
    assert "reproducible from the ledger" in out.getvalue()
