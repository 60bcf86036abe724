"""GET /api/v1/finance/reconciliation and its CSV: staff with the reconciliation permission
only, a month of one account or all, filters, pagination by day, exact figures, 400s in the
API's error format for bad input."""

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from metering.models import ProviderAccount, ReconciliationRow
from metering.services import api_key_create
from tests.factories import ApiKeyFactory
from tests.staff import staff_client

pytestmark = pytest.mark.django_db
URL = "/api/v1/finance/reconciliation"
CSV_URL = "/api/v1/finance/reconciliation.csv"
COMPUTED = datetime(2026, 11, 5, tzinfo=UTC)


def account(name: str, provider: str = "openai") -> ProviderAccount:
    return ProviderAccount.objects.create(name=name, provider=provider, admin_key_env="ADMIN_KEY")


def row(acct: ProviderAccount, day: date, token_class: str, **values: object) -> ReconciliationRow:
    defaults: dict[str, object] = {
        "upstream_model": "gpt-x",
        "ours": 100,
        "theirs": 100,
        "drift": 0,
        "relative_drift": Decimal(0),
        "status": "matched",
        "computed_at": COMPUTED,
    }
    return ReconciliationRow.objects.create(
        account=acct, day=day, token_class=token_class, **{**defaults, **values}
    )


@pytest.fixture
def rows() -> dict[str, ProviderAccount]:
    oa, an = account("oa-prod"), account("an-prod", "anthropic")
    for d in (1, 2, 30):
        row(oa, date(2026, 10, d), "requests")
    row(
        oa,
        date(2026, 10, 2),
        "output",
        ours=1000,
        theirs=300,
        drift=-700,
        relative_drift=Decimal("-2.333333333333"),
        status="drift",
        reasoning=700,
        drift_equals_reasoning=True,
        explain={"source": "ledger", "incomplete": {"records": 1, "output_tokens": 5}},
        report_revision=2,
    )
    row(oa, date(2026, 11, 1), "requests")  # another month
    row(
        an,
        date(2026, 10, 2),
        "requests",
        ours=3,
        theirs=None,
        drift=None,
        relative_drift=None,
        status="not_compared",
        upstream_model="claude-x",
    )
    return {"oa": oa, "an": an}


@pytest.fixture
def finance() -> APIClient:
    return staff_client("fin", "finance-read")


def test_finance_reads_a_month_of_one_account_oldest_day_first(rows, finance) -> None:  # type: ignore[no-untyped-def]
    response = finance.get(URL, {"account": "oa-prod", "period": "2026-10"})
    assert response.status_code == 200
    data = response.json()["results"]
    assert [(r["day"], r["token_class"]) for r in data] == [
        ("2026-10-01", "requests"),
        ("2026-10-02", "requests"),
        ("2026-10-02", "output"),
        ("2026-10-30", "requests"),
    ]
    output = data[2]
    assert output == {
        "account": "oa-prod",
        "day": "2026-10-02",
        "upstream_model": "gpt-x",
        "api_key_id": "",
        "token_class": "output",
        "ours": 1000,
        "theirs": 300,
        "drift": -700,
        "relative_drift": "-2.333333333333",
        "status": "drift",
        "reasoning": 700,
        "drift_equals_reasoning": True,
        "report_revision": 2,
        "computed_at": "2026-11-05T00:00:00Z",
        "explain": {"source": "ledger", "incomplete": {"records": 1, "output_tokens": 5}},
    }


def test_filters_by_status_and_model_and_all_accounts(rows, finance) -> None:  # type: ignore[no-untyped-def]
    drifting = finance.get(URL, {"period": "2026-10", "status": "drift"}).json()["results"]
    assert [(r["account"], r["token_class"]) for r in drifting] == [("oa-prod", "output")]
    every = finance.get(URL, {"period": "2026-10"}).json()["results"]
    assert {r["account"] for r in every} == {"oa-prod", "an-prod"} and len(every) == 5
    claude = finance.get(URL, {"period": "2026-10", "model": "claude-x"}).json()["results"]
    assert [(r["account"], r["theirs"], r["relative_drift"]) for r in claude] == [
        ("an-prod", None, None)
    ]


def test_pages_follow_by_day(rows, finance) -> None:  # type: ignore[no-untyped-def]
    seen = []
    page = finance.get(URL, {"account": "oa-prod", "period": "2026-10", "limit": 1}).json()
    while True:
        seen += [(r["day"], r["token_class"]) for r in page["results"]]
        if not page["next"]:
            break
        page = finance.get(page["next"]).json()
    assert len(seen) == 4 and len(set(seen)) == 4
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_forged_cursor_is_not_found(rows, finance) -> None:  # type: ignore[no-untyped-def]
    import base64

    forged = base64.b64encode(b"p=2026-10-02%27%3B--&o=0").decode()
    response = finance.get(URL, {"period": "2026-10", "cursor": forged})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_csv_text_cells_never_run_as_formulas_and_numbers_stay_numbers(finance) -> None:  # type: ignore[no-untyped-def]
    """Model names and key ids come from provider reports, account names from staff: a
    cell starting like a formula is written as text; a negative drift stays a number."""
    acct = account("@acct")
    row(
        acct,
        date(2026, 10, 2),
        "output",
        upstream_model='=HYPERLINK("http://x.invalid","y")',
        api_key_id="+key\t",
        ours=1000,
        theirs=300,
        drift=-700,
        relative_drift=Decimal("-2.333333333333"),
        status="drift",
    )
    response = finance.get(CSV_URL, {"period": "2026-10"})
    [line] = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert line["account"] == "'@acct"
    assert line["upstream_model"] == """'=HYPERLINK("http://x.invalid","y")"""
    assert line["api_key_id"] == "'+key\t"
    assert (line["drift"], line["relative_drift"], line["ours"]) == (
        "-700",
        "-2.333333333333",
        "1000",
    )


def test_csv_has_every_row_of_the_month_with_exact_figures(rows, finance) -> None:  # type: ignore[no-untyped-def]
    response = finance.get(CSV_URL, {"account": "oa-prod", "period": "2026-10"})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    assert 'filename="reconciliation-oa-prod-2026-10.csv"' in response["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(table) == 4
    output = next(r for r in table if r["token_class"] == "output")
    assert (output["ours"], output["theirs"], output["drift"], output["relative_drift"]) == (
        "1000",
        "300",
        "-700",
        "-2.333333333333",
    )
    assert output["drift_equals_reasoning"] == "True"
    assert output["explain"] == '{"incomplete":{"output_tokens":5,"records":1},"source":"ledger"}'
    # a client that accepts only CSV is served
    assert finance.get(CSV_URL, {"period": "2026-10"}, HTTP_ACCEPT="text/csv").status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"account": "oa-prod"}, "period"),
        ({"period": "2026-13"}, "period"),
        ({"period": "October"}, "period"),
        ({"period": "2026-10", "account": "nobody"}, "account"),
        ({"period": "2026-10", "status": "fine"}, "status"),
        ({"period": "2026-10", "account": "x" * 101}, "account"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(rows, finance, query, field) -> None:  # type: ignore[no-untyped-def]
    for url in (URL, CSV_URL):
        response = finance.get(url, query)
        assert response.status_code == 400, (url, query)
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and field in error["detail"]


def test_tenant_keys_and_staff_without_the_permission_are_refused(rows) -> None:  # type: ignore[no-untyped-def]
    tenant = APIClient()
    tenant.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=ApiKeyFactory().tenant).raw_key}"
    )
    nobody = staff_client("nobody")
    for client in (tenant, nobody):
        for url in (URL, CSV_URL):
            response = client.get(url, {"period": "2026-10"})
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "permission_denied"
    assert APIClient().get(URL, {"period": "2026-10"}).status_code in (401, 403)
    missing = nobody.get(URL, {"period": "2026-10"}).json()["error"]["detail"]
    assert missing == {"required_permission": "metering.view_reconciliationrow"}


@pytest.mark.parametrize("role", ["operator", "finance-read", "finance-write"])
def test_the_roles_that_read_it(rows, role) -> None:  # type: ignore[no-untyped-def]
    client = staff_client(f"user-{role}", role)
    assert client.get(URL, {"period": "2026-10"}).status_code == 200


def test_the_schema_documents_the_endpoints(finance) -> None:  # type: ignore[no-untyped-def]
    paths = finance.get("/api/v1/schema", {"format": "json"}).json()["paths"]
    listing = paths["/api/v1/finance/reconciliation"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "account",
        "period",
        "status",
        "model",
        "cursor",
    }
    assert "get" in paths["/api/v1/finance/reconciliation.csv"]


def test_the_admin_lists_rows_read_only_with_filters(rows) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    from tests.staff import staff_user

    client = Client()
    client.force_login(staff_user("reader", "finance-read"))
    base = "/admin/metering/reconciliationrow/"
    listing = client.get(base)
    assert listing.status_code == 200 and b"oa-prod" in listing.content
    for query in (
        {"status__exact": "drift"},
        {"account__id__exact": rows["oa"].pk},
        {"day__gte": "2026-10-02", "day__lt": "2026-10-03"},
        {"upstream_model": "gpt-x"},
        {"token_class__exact": "output"},
    ):
        filtered = client.get(base, query)
        assert filtered.status_code == 200, query
    drifting = client.get(base, {"status__exact": "drift"})
    assert drifting.context["cl"].result_count == 1
    some = ReconciliationRow.objects.filter(status="drift").get()
    page = client.get(f"{base}{some.pk}/change/")
    assert page.status_code == 200 and b'name="ours"' not in page.content  # read-only
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{some.pk}/delete/", {"post": "yes"}).status_code == 403
    outsider = Client()
    outsider.force_login(staff_user("outsider"))
    assert outsider.get(base).status_code == 403
