"""The console's foundation: charts as data (JSON, table, CSV), sign-in behind the
failed-login limit, where the home page sends each kind of account, and memberships."""

import csv
import io
import json
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from api import throttling
from api.console.charts import Chart, Series, pivot
from config.errors import ApplicationError, Conflict
from metering.models import TenantMember
from metering.services import tenant_member_set
from tests.factories import TenantFactory
from tests.staff import staff_user

HOST = "127.0.0.1"


def _chart() -> Chart:
    return Chart(
        id="c",
        title="Spend",
        labels=["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"],
        series=[
            Series("output", "Visible output", [3, None]),
            Series("reasoning", "Reasoning (hidden)", [12, 40], style="hidden"),
            Series("usd", "USD", [Decimal("0.10"), Decimal("1.000000000001")]),
        ],
        unit="tokens",
    )


def test_chart_json_keeps_exact_values() -> None:
    data = _chart().as_json()
    assert data["labels"] == ["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"]
    assert [s["key"] for s in data["series"]] == ["output", "reasoning", "usd"]
    assert data["series"][0]["values"] == [3, None]
    assert data["series"][1]["style"] == "hidden"
    # Money stays a decimal string, written as the API writes it (billing decimal_text):
    # no float rounding on the way to the page, never "1E-7".
    assert data["series"][2]["values"] == ["0.1", "1.000000000001"]
    assert json.loads(json.dumps(data)) == data


def test_chart_table_and_csv_hold_the_same_cells() -> None:
    chart = _chart()
    header, rows = chart.table()
    assert header == ["Bucket", "Visible output", "Reasoning (hidden)", "USD"]
    assert rows == [
        ["2026-11-01T00:00:00Z", "3", "12", "0.1"],
        ["2026-11-02T00:00:00Z", "", "40", "1.000000000001"],
    ]
    assert list(csv.reader(io.StringIO(chart.csv()))) == [header, *rows]


def test_chart_csv_never_carries_a_formula() -> None:
    chart = Chart(
        id="x",
        title="t",
        labels=["=HYPERLINK(1)", "-12"],
        series=[Series("a", "@SUM(A1)", [1, 2])],
        unit="tokens",
    )
    rows = list(csv.reader(io.StringIO(chart.csv())))
    assert rows[0][1] == "'@SUM(A1)"
    assert rows[1][0] == "'=HYPERLINK(1)"
    assert rows[2][0] == "-12"  # a numeral stays a number


def test_chart_refuses_a_series_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 values for 1 labels"):
        Chart(id="bad", title="t", labels=["a"], series=[Series("s", "S", [1, 2])], unit="x")


def test_pivot_fills_missing_cells_with_none() -> None:
    rows = [
        {"start": "d1", "alias": "a", "n": 1},
        {"start": "d1", "alias": "b", "n": 2},
        {"start": "d2", "alias": "b", "n": 3},
    ]
    labels, groups = pivot(rows, label_key="start", group_key="alias", value_key="n")
    assert labels == ["d1", "d2"]
    assert groups == {"a": [1, None], "b": [2, 3]}


# --- memberships --------------------------------------------------------------------


@pytest.mark.django_db
def test_member_set_creates_resets_and_is_idempotent() -> None:
    tenant = TenantFactory()
    first = tenant_member_set(tenant=tenant, username="ann", role="developer")
    assert first.password and first.member.role == TenantMember.Role.DEVELOPER
    assert Client(HTTP_HOST=HOST).login(username="ann", password=first.password)
    again = tenant_member_set(tenant=tenant, username="ann", role="owner")
    assert again.password is None and again.member.pk == first.member.pk
    assert again.member.role == "owner"
    reset = tenant_member_set(tenant=tenant, username="ann", role="owner", reset_password=True)
    assert reset.password and reset.password != first.password
    client = Client(HTTP_HOST=HOST)
    assert not client.login(username="ann", password=first.password)
    assert client.login(username="ann", password=reset.password)
    assert TenantMember.objects.filter(user__username="ann").count() == 1


@pytest.mark.django_db
def test_member_set_refuses_staff_other_tenants_and_unknown_roles() -> None:
    tenant, other = TenantFactory(), TenantFactory()
    staff_user("ops", "operator")
    with pytest.raises(Conflict, match="staff"):
        tenant_member_set(tenant=tenant, username="ops", role="owner")
    tenant_member_set(tenant=other, username="bob", role="billing")
    with pytest.raises(Conflict, match="another tenant"):
        tenant_member_set(tenant=tenant, username="bob", role="billing")
    with pytest.raises(ApplicationError, match="Unknown member role"):
        tenant_member_set(tenant=tenant, username="cy", role="admin")
    assert not get_user_model().objects.filter(username="cy").exists()


# --- sign-in and home ---------------------------------------------------------------


@pytest.fixture
def address(settings, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    settings.RECKON_AUTH_FAILURE_LIMIT = 3
    settings.RECKON_AUTH_FAILURE_WINDOW_SECONDS = 30
    monkeypatch.setattr(throttling, "local_counter", throttling.LocalFailureCounter())
    octets = uuid.uuid4().bytes
    return f"10.{octets[0]}.{octets[1]}.{octets[2]}"


@pytest.mark.django_db
def test_sign_in_sends_a_member_to_the_overview(address: str) -> None:
    password = tenant_member_set(tenant=TenantFactory(), username="ann", role="owner").password
    client = Client(HTTP_HOST=HOST, REMOTE_ADDR=address)
    page = client.get("/console/login")
    assert page.status_code == 200 and b"Sign in" in page.content
    signed = client.post("/console/login", {"username": "ann", "password": password})
    assert signed.status_code == 302 and signed["Location"] == "/console/"
    assert client.get("/console/")["Location"] == "/console/overview"
    out = client.post("/console/logout")
    assert out.status_code == 302 and out["Location"] == "/console/login"
    assert client.get("/console/")["Location"] == "/console/login"


@pytest.mark.django_db
def test_failed_sign_ins_are_limited_per_address(address: str) -> None:
    tenant_member_set(tenant=TenantFactory(), username="ann", role="owner")
    client = Client(HTTP_HOST=HOST, REMOTE_ADDR=address)
    for _ in range(3):
        wrong = client.post("/console/login", {"username": "ann", "password": "wrong"})
        assert wrong.status_code == 200
        assert b"enter a correct username and password" in wrong.content
    limited = client.post("/console/login", {"username": "ann", "password": "wrong"})
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert b"Too many failed sign-ins" in limited.content


@pytest.mark.django_db
def test_home_sends_staff_to_their_first_page_and_refuses_a_roleless_account() -> None:
    staff_user("fin", "finance-read", password="pw-fin-123")
    client = Client(HTTP_HOST=HOST)
    assert client.login(username="fin", password="pw-fin-123")
    assert client.get("/console/")["Location"] == "/console/staff/margins"
    get_user_model().objects.create_user("nobody", password="pw-nobody-1")
    client = Client(HTTP_HOST=HOST)
    assert client.login(username="nobody", password="pw-nobody-1")
    refused = client.get("/console/")
    assert refused.status_code == 403
    assert b"neither a tenant member nor staff" in refused.content


@pytest.mark.django_db
def test_an_anonymous_visitor_is_sent_to_sign_in_from_any_page() -> None:
    client = Client(HTTP_HOST=HOST)
    for path in ("/console/", "/console/overview", "/console/staff/margins"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/console/login"), path


@pytest.mark.django_db
def test_a_missing_console_page_is_the_consoles_own_404() -> None:
    password = tenant_member_set(tenant=TenantFactory(), username="ann", role="owner").password
    client = Client(HTTP_HOST=HOST)
    assert client.login(username="ann", password=password)
    for path in ("/console/invoices/987654321", "/console/no-such-page"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"There is no such page for this account." in response.content
        assert b'rel="icon"' in response.content  # Chromium asks for no /favicon.ico
