"""Reconciliation per target (decision 0117): records that name the target that served
them are attributed to the key that target declared, so one alias served by two
deployments on one provider account, a key each, is compared per key; records from
before routing keep the alias rule (compared summed when the alias has several targets);
an attempt that failed over to another target adds no drift."""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from metering.models import Alias, ProviderAccount, ReconciliationRow, Route
from metering.reconcile.compare import Tolerance
from metering.reconcile.ours import ForwardedRow, ForwardedTargetRow, forwarded_usage_by_target
from metering.reconcile.service import KeyPeriod, reconcile_account_days, rows_compute
from tests.metering.reconcile.test_service import bucket, use

pytestmark = pytest.mark.django_db

DAY = date(2026, 10, 7)
T0 = datetime(2026, 10, 7, 9, tzinfo=UTC)
SETTLED = datetime(2026, 10, 12, tzinfo=UTC)


@pytest.fixture
def openai() -> ProviderAccount:
    return ProviderAccount.objects.create(name="oa", provider="openai", admin_key_env="OA_ADMIN")


def target(account: ProviderAccount, name: str, key_id: str) -> Route:
    """A target of the alias "reasoner" on `account` (no key history: one open period)."""
    return Route.objects.create(
        alias=Alias.objects.get_or_create(name="reasoner")[0],
        name=name,
        provider="openai",
        base_url=f"https://{name}.example.com/v1",
        upstream_model="gpt-r",
        provider_account=account,
        upstream_key_id=key_id,
    )


def statuses(account: ProviderAccount, token_class: str) -> dict[str, tuple[int, int, str]]:
    return {
        r.api_key_id: (r.ours, r.theirs, r.status)
        for r in ReconciliationRow.objects.filter(account=account, token_class=token_class)
    }


def test_two_targets_of_one_alias_reconcile_per_key_and_a_failover_adds_no_drift(
    openai,
) -> None:  # type: ignore[no-untyped-def]
    a, b = target(openai, "default", "key_a"), target(openai, "b", "key_b")
    use(openai, "reasoner", "gpt-r", route_id=a.pk, input_tokens=100, output_tokens=10)
    use(openai, "reasoner", "gpt-r", route_id=a.pk, input_tokens=50, output_tokens=5)
    # a call whose first attempt on A failed (no answer, no tokens), answered by B
    use(
        openai,
        "reasoner",
        "gpt-r",
        route_id=a.pk,
        attempt=1,
        failed_over=True,
        status="failed",
        upstream_status=0,
    )
    use(
        openai,
        "reasoner",
        "gpt-r",
        route_id=b.pk,
        attempt=2,
        failed_over=False,
        input_tokens=7,
        output_tokens=3,
    )
    bucket(openai, "gpt-r", "key_a", at=T0, requests=2, input_uncached_tokens=150, output_tokens=15)
    bucket(openai, "gpt-r", "key_b", at=T0, requests=1, input_uncached_tokens=7, output_tokens=3)
    forwarded = forwarded_usage_by_target(
        account_id=openai.pk, start=DAY, end=DAY + timedelta(1), primary=True
    )
    per_target: dict[int, list[int]] = {}
    for r in forwarded:  # (one row per tenant: each `use` is a key of its own)
        counts = per_target.setdefault(r.route_id, [0, 0])
        counts[0] += r.records
        counts[1] += r.requests
    assert per_target == {
        a.pk: [3, 2],  # the failed-over attempt is a record, not an answered request
        b.pk: [1, 1],
    }
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert statuses(openai, "requests") == {
        "key_a": (2, 2, "matched"),
        "key_b": (1, 1, "matched"),
    }
    assert statuses(openai, "input_uncached") == {
        "key_a": (150, 150, "matched"),
        "key_b": (7, 7, "matched"),
    }


def test_records_from_before_routing_keep_the_alias_rule(openai) -> None:  # type: ignore[no-untyped-def]
    """No route stamp: which target served them is not known, so an alias with two
    targets on the account is compared summed over keys (not a leak on either key)."""
    target(openai, "default", "key_a"), target(openai, "b", "key_b")
    use(openai, "reasoner", "gpt-r", input_tokens=100)
    bucket(openai, "gpt-r", "key_a", at=T0, requests=1, input_uncached_tokens=60)
    bucket(openai, "gpt-r", "key_b", at=T0, requests=0, input_uncached_tokens=40)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert statuses(openai, "input_uncached") == {"": (100, 100, "matched")}


def test_a_target_rotated_mid_day_makes_its_model_summed() -> None:
    """Pure (`rows_compute`): a target with two keys that day cannot be told apart."""
    account = ProviderAccount(provider="openai", name="x")
    rotated = datetime(2026, 10, 7, 12, tzinfo=UTC)
    periods = [
        KeyPeriod("reasoner", "gpt-r", "key_a", None, None, route_id=1),
        KeyPeriod("reasoner", "gpt-r", "key_b", None, rotated, route_id=2),
        KeyPeriod("reasoner", "gpt-r", "key_c", rotated, None, route_id=2),
        KeyPeriod("other", "gpt-o", "key_o", None, None, route_id=3),
    ]

    def ours(route_id: int, model: str, alias: str) -> ForwardedRow | ForwardedTargetRow:
        values = (DAY, model, uuid.UUID(int=1), alias, "", 1, 1, 10, 0, 0, 1, 0, Decimal(0))
        return ForwardedTargetRow(*values, route_id) if route_id else ForwardedRow(*values)

    computed = rows_compute(
        account=account,
        days=[DAY],
        forwarded=[
            ours(1, "gpt-r", "reasoner"),
            ours(2, "gpt-r", "reasoner"),
            ours(3, "gpt-o", "other"),
        ],
        periods=periods,
        buckets=[],
        settled={DAY: True},
        tolerance=Tolerance(tokens=0, relative=Decimal(0)),
    )
    keys = {(row.key[1], row.key[2]) for row in computed}
    assert keys == {("gpt-r", ""), ("gpt-o", "key_o")}  # target 2 rotated: gpt-r summed
    computed = rows_compute(
        account=account,
        days=[DAY],
        forwarded=[ours(1, "gpt-r", "reasoner"), ours(3, "gpt-o", "other")],
        periods=periods[:1] + periods[3:],
        buckets=[],
        settled={DAY: True},
        tolerance=Tolerance(tokens=0, relative=Decimal(0)),
    )
    assert {(row.key[1], row.key[2]) for row in computed} == {
        ("gpt-r", "key_a"),
        ("gpt-o", "key_o"),
    }
