"""The margin report with a resold route (served through a provider account) beside a
route on our own accelerators: actual provider cost allocated to tenants, the difference
from the list-price estimate, the unattributed row, pending days; JSON, CSV, permissions."""

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from billing.costs.catalogue import accelerator_get, catalogue_load, deployment_set
from billing.plans import plan_create, plan_version_create, plan_version_publish
from billing.plans import subscription_create as subscribe
from billing.pricing.periods import Period
from billing.reports import margin_report, whatif
from metering.models import (
    ApiKey,
    ProviderAccount,
    ProviderCostBucket,
    ProviderReportFetch,
    ReconciliationRow,
    ServingCostRate,
)
from metering.providers.openai_reports import line_item_parts
from metering.services import api_key_create
from tests.factories import ApiKeyFactory
from tests.staff import staff_client
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db

OCT = datetime(2026, 10, 1, tzinfo=UTC)
DAY, LATE = date(2026, 10, 5), date(2026, 10, 30)
M = 1_000_000


def rate(alias: str, accelerator: str, **usd: str) -> ServingCostRate:
    prices = {"input_usd": "0", "cache_read_usd": "0", "cache_write_usd": "0"}
    prices |= {"output_usd": "0", "reasoning_usd": "0"} | usd
    return ServingCostRate.objects.create(
        alias=alias,
        accelerator=accelerator,
        effective_from=OCT - timedelta(days=30),
        **{k: Decimal(v) for k, v in prices.items()},
    )


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def recon(
    account: ProviderAccount, day: date, token_class: str, ours: int, theirs: int, status: str
) -> None:
    ReconciliationRow.objects.create(
        account=account,
        day=day,
        upstream_model="o4-mini",
        token_class=token_class,
        ours=ours,
        theirs=theirs,
        drift=theirs - ours,
        status=status,
        computed_at=datetime(2026, 11, 9, tzinfo=UTC),
    )


def cost(account: ProviderAccount, day: date, line_item: str, amount: str) -> None:
    fetch = ProviderReportFetch.objects.create(
        account=account,
        report="cost",
        run_id=uuid.uuid4(),
        query="/v1/organization/costs",
        http_status=200,
        body="{}",
        body_sha256="0" * 64,
        fetched_at=datetime(2026, 11, 9, tzinfo=UTC),
    )
    ProviderCostBucket.objects.create(
        account=account,
        bucket_start=datetime(day.year, day.month, day.day, tzinfo=UTC),
        bucket_width="1d",
        line_item=line_item,
        model=line_item_parts(line_item)[0],
        token_type=line_item_parts(line_item)[1],
        amount_text=amount,
        amount_usd=Decimal(amount),
        fetch=fetch,
        content_hash=line_item,
        changed_at=datetime(2026, 11, 9, tzinfo=UTC),
    )


@pytest.fixture
def resold() -> tuple[ApiKey, ApiKey]:
    """Tenants a and b call the resold alias "mini" (o4-mini via openai-main); a also calls
    "reasoner" on our own H100s. Both pay 4 USD per 1M output (reasoning included)."""
    account = ProviderAccount.objects.create(
        name="openai-main", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    mini = rate("mini", "", input_usd="1", output_usd="4", reasoning_usd="4")
    reasoner = rate("reasoner", "nvidia-h100-sxm", output_usd="2")
    key_a, key_b = ApiKeyFactory(tenant__name="a"), ApiKeyFactory(tenant__name="b")
    plan = plan_create(code="p", name="P")
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=OCT,
            components=[{"token_class": "output", "charge_model": "per_unit", "unit_price": "4"}],
        )
    )
    for key in (key_a, key_b):
        subscribe(tenant=key.tenant, plan_version=version, starts_at=OCT)
    via = {"alias": "mini", "upstream_model": "o4-mini", "provider_account_id": account.pk}
    # a: estimate 1 + 0.8 + 3.2 = 5; b: 1 + 4 = 5 on DAY, and 4 more on LATE
    write_usage(
        key_a,
        at(DAY),
        mini,
        input_tokens=M,
        output_tokens=M // 5,
        reasoning_tokens=4 * M // 5,
        **via,
    )  # type: ignore[arg-type]
    write_usage(key_b, at(DAY), mini, input_tokens=M, output_tokens=M, **via)  # type: ignore[arg-type]
    write_usage(key_b, at(LATE), mini, output_tokens=M, **via)  # type: ignore[arg-type]
    write_usage(key_a, at(DAY), reasoner, output_tokens=M, alias="reasoner")  # type: ignore[arg-type]
    # DAY is settled: input matches, the report has 500k output tokens we never forwarded
    recon(account, DAY, "input_uncached", 2 * M, 2 * M, "matched")
    recon(account, DAY, "output", 2 * M, 5 * M // 2, "drift")
    recon(account, LATE, "output", M, M, "pending")
    cost(account, DAY, "o4-mini, input", "2.00")
    cost(account, DAY, "o4-mini, output", "10.00")  # a 4, b 4, 2 unattributed
    cost(account, DAY, "o4-mini, web search", "0.50")  # by list price 5:5
    return key_a, key_b


def test_margin_report_rows_carry_the_actual_provider_cost(resold: tuple[ApiKey, ApiKey]) -> None:
    key_a, key_b = resold
    a, b = str(key_a.tenant_id), str(key_b.tenant_id)
    rows = {r.key: r for r in margin_report(period=Period(OCT, datetime(2026, 11, 1, tzinfo=UTC)))}
    mine = rows[(a, "mini", "")]
    assert (mine.cost_usd, mine.provider_cost_usd) == (Decimal(5), Decimal("5.25"))
    assert mine.provider_cost_difference_usd == Decimal("0.25")
    assert mine.revenue_usd == Decimal(4)  # 1M output + reasoning at 4/M
    own = rows[(a, "reasoner", "nvidia-h100-sxm")]
    assert own.cost_usd == Decimal(2)  # the hardware cost basis, unchanged
    assert own.provider_cost_usd is None and own.provider_cost_difference_usd is None
    # b's month has a pending day: its actual cost is not known yet
    theirs = rows[(b, "mini", "")]
    assert theirs.cost_usd == Decimal(9) and theirs.provider_cost_usd is None
    unattributed = rows[
        ("(unattributed)", "(unattributed) openai-main", "(unattributed) openai-main")
    ]
    assert unattributed.provider_cost_usd == Decimal(2)
    assert unattributed.revenue_usd == 0 and unattributed.cost_usd == 0

    by_tenant = {
        r.key: r
        for r in margin_report(
            period=Period(OCT, datetime(2026, 11, 1, tzinfo=UTC)), group_by=("tenant",)
        )
    }
    # the tenant's row: the difference is that of its resold part only
    assert by_tenant[(a,)].cost_usd == Decimal(7)
    assert by_tenant[(a,)].provider_cost_usd == Decimal("5.25")
    assert by_tenant[(a,)].provider_cost_difference_usd == Decimal("0.25")
    assert by_tenant[("(unattributed)",)].provider_cost_usd == Decimal(2)


def test_the_what_if_leaves_unattributed_cost_out(resold: tuple[ApiKey, ApiKey]) -> None:
    """The what-if re-prices usage; the unattributed row is no alias and no usage (with
    it, the what-if would look for a deployment of "(unattributed) openai-main")."""
    catalogue_load()
    for alias in ("mini", "reasoner"):
        deployment_set(
            alias=alias,
            accelerator=accelerator_get("nvidia-h100-sxm"),
            effective_from=OCT,
            decode_tokens_per_s=Decimal(3913),
            prefill_tokens_per_s=Decimal(11739),
        )
    result = whatif(
        period=Period(OCT, datetime(2026, 11, 1, tzinfo=UTC)), accelerator_key="amd-mi300x"
    )
    assert result.actual_cost_usd == Decimal(16)  # 5 + 9 + 2: estimates, as stamped
    assert result.tokens["input"] == 2 * M


def test_margin_api_and_csv_show_the_provider_columns(resold: tuple[ApiKey, ApiKey]) -> None:
    key_a, _ = resold
    a = str(key_a.tenant_id)
    staff = staff_client("cfo", "finance-read")
    body = staff.get("/api/v1/finance/margins", {"period": "2026-10"}).json()
    rows = {tuple(r["key"]): r for r in body["rows"]}
    assert rows[(a, "mini", "")]["provider_cost_usd"] == "5.25"
    assert rows[(a, "mini", "")]["provider_cost_difference_usd"] == "0.25"
    assert rows[(a, "reasoner", "nvidia-h100-sxm")]["provider_cost_usd"] is None
    csv_body = staff.get("/api/v1/finance/margins.csv", {"period": "2026-10", "group_by": "tenant"})
    lines = {
        line["tenant"]: line for line in csv.DictReader(io.StringIO(csv_body.content.decode()))
    }
    assert lines[a]["provider_cost_usd"] == "5.25" and lines[a]["cost_usd"] == "7"
    assert lines["(unattributed)"]["provider_cost_difference_usd"] == "2"
    assert list(lines[a])[-2:] == ["provider_cost_usd", "provider_cost_difference_usd"]
    schema = staff.get("/api/v1/schema", {"format": "json"})
    assert schema.status_code == 200 and b"provider_cost_difference_usd" in schema.content


def test_provider_costs_are_staff_only(resold: tuple[ApiKey, ApiKey]) -> None:
    key_a, _ = resold
    tenant = APIClient()
    tenant.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=key_a.tenant).raw_key}")
    assert tenant.get("/api/v1/finance/margins", {"period": "2026-10"}).status_code == 403
    assert tenant.get("/api/v1/finance/margins.csv", {"period": "2026-10"}).status_code == 403
    operator = staff_client("ops", "operator")  # runs the service, does not read margins
    refused = operator.get("/api/v1/finance/margins", {"period": "2026-10"})
    assert refused.status_code == 403 and b"5.25" not in refused.content


def test_a_resold_alias_on_two_accelerators_gets_each_its_own_share(
    resold: tuple[ApiKey, ApiKey],
) -> None:
    """An alias served on two accelerator labels of the account in a month: each row gets
    the cost of what it forwarded (by tokens of the line's class, fees by list price),
    and the rows add up to the alias's figures exactly."""
    key_a, _ = resold
    a = str(key_a.tenant_id)
    account = ProviderAccount.objects.get()
    moved = rate("mini", "moved", output_usd="4")
    via = {"alias": "mini", "upstream_model": "o4-mini", "provider_account_id": account.pk}
    write_usage(key_a, at(DAY), moved, output_tokens=M, **via)  # type: ignore[arg-type]
    period = Period(OCT, datetime(2026, 11, 1, tzinfo=UTC))
    rows = {r.key: r for r in margin_report(period=period)}
    here, there = rows[(a, "mini", "")], rows[(a, "mini", "moved")]
    [alias] = [
        r
        for r in margin_report(period=period, group_by=("tenant", "alias"))
        if r.key == (a, "mini")
    ]
    assert (here.cost_usd, there.cost_usd) == (Decimal(5), Decimal(4))
    assert here.provider_cost_usd is not None and there.provider_cost_usd is not None
    assert here.provider_cost_usd + there.provider_cost_usd == alias.provider_cost_usd
    # output $10 over 3M output tokens (theirs 2.5M < ours 3M: normalised to ours), input
    # $2 over a's and b's 1M each, web search $0.50 by list price 5:4:5
    near = Decimal("1e-22")
    assert abs(there.provider_cost_usd - (Decimal(10) / 3 + Decimal("0.5") * 4 / 14)) < near
    assert abs(here.provider_cost_usd - (Decimal(10) / 3 + 1 + Decimal("0.5") * 5 / 14)) < near
    assert here.provider_cost_difference_usd is not None
    assert there.provider_cost_difference_usd is not None
    assert (
        here.provider_cost_difference_usd + there.provider_cost_difference_usd
        == alias.provider_cost_difference_usd
    )


def test_an_alias_also_served_on_our_own_accelerator_keeps_its_hardware_cost_basis(
    resold: tuple[ApiKey, ApiKey],
) -> None:
    """The route moved from our own H100s to the provider in the month: the provider's
    cost goes to the provider rows only; the hardware row has no provider cost at all."""
    key_a, _ = resold
    a = str(key_a.tenant_id)
    own = rate("mini", "nvidia-h100-sxm", output_usd="3")
    write_usage(key_a, at(DAY), own, output_tokens=M, alias="mini", upstream_model="o4-mini")  # type: ignore[arg-type]
    rows = {r.key: r for r in margin_report(period=Period(OCT, datetime(2026, 11, 1, tzinfo=UTC)))}
    hardware, resold_row = rows[(a, "mini", "nvidia-h100-sxm")], rows[(a, "mini", "")]
    assert hardware.cost_usd == Decimal(3) and not hardware.resold
    assert hardware.provider_cost_usd is None and hardware.provider_cost_difference_usd is None
    assert (resold_row.cost_usd, resold_row.provider_cost_usd) == (Decimal(5), Decimal("5.25"))


def test_the_margin_csv_never_writes_a_formula_and_keeps_negative_numbers(
    resold: tuple[ApiKey, ApiKey],
) -> None:
    """An alias or accelerator label that starts like a formula is written as text
    (leading '); a negative margin stays a number."""
    key_a, _ = resold
    evil = rate("=2+3", "-h100", output_usd="9")
    write_usage(key_a, at(DAY), evil, output_tokens=M, alias="=2+3")  # type: ignore[arg-type]
    staff = staff_client("fin", "finance-read")
    body = staff.get("/api/v1/finance/margins.csv", {"period": "2026-10"}).content.decode()
    lines = {(r["alias"], r["accelerator"]): r for r in csv.DictReader(io.StringIO(body))}
    line = lines[("'=2+3", "'-h100")]
    assert (line["revenue_usd"], line["cost_usd"], line["gross_margin"]) == ("4", "9", "-1.25")
    assert all(
        not cell.startswith(("=", "+", "@")) for row in lines.values() for cell in row.values()
    )
