"""The key a route declares, over time (`UpstreamKeyPeriod`, review B2): one service keeps
the history (route_set, the route admin), and reconciliation attributes each day to the key
in force then, so a rotation is not a leak while usage on the old key after it is one."""

import io
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command

from billing.models import Alert
from metering.models import Alias, ProviderAccount, ReconciliationRow, Route, UpstreamKeyPeriod
from metering.reconcile import hooks
from metering.reconcile.service import reconcile_account_days
from metering.services import route_provider_account_set, route_set
from tests.metering.reconcile.test_service import bucket, rows, use

pytestmark = pytest.mark.django_db

DAY = date(2026, 10, 7)
ROTATED = datetime(2026, 10, 9, 15, 30, tzinfo=UTC)  # mid-window, mid-day
SETTLED = datetime(2026, 10, 20, tzinfo=UTC)


@pytest.fixture
def openai() -> ProviderAccount:
    return ProviderAccount.objects.create(name="oa", provider="openai", admin_key_env="OA_ADMIN")


def linked(account: ProviderAccount, key_id: str, alias: str = "reasoner") -> Route:
    return route_set(
        alias=alias,
        provider="openai",
        base_url="https://api.openai.com/v1",
        upstream_model="gpt-r",
        provider_account=account.name,
        upstream_key_id=key_id,
    )


def rotate(alias: str, key_id: str, at: datetime) -> None:
    with time_machine.travel(at, tick=False):
        route_provider_account_set(alias=alias, provider_account=None, upstream_key_id=key_id)


def day_usage(account: ProviderAccount, day: date, key_id: str, *, hour: int = 9) -> None:
    at = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    use(account, "reasoner", "gpt-r", at=at, input_tokens=100, output_tokens=30)
    bucket(account, "gpt-r", key_id, at=at, requests=1, input_uncached_tokens=100, output_tokens=30)


def periods(route: Route) -> list[tuple[str, datetime | None, datetime | None]]:
    return list(
        UpstreamKeyPeriod.objects.filter(route=route)
        .order_by("pk")
        .values_list("upstream_key_id", "valid_from", "valid_until")
    )


def test_one_service_keeps_the_history_and_a_repeat_writes_nothing(openai) -> None:  # type: ignore[no-untyped-def]
    route = linked(openai, "key_a")
    linked(openai, "key_a")  # the same again
    assert periods(route) == [("key_a", None, None)]  # a new route: from the beginning
    rotate("reasoner", "key_b", ROTATED)
    rotate("reasoner", "key_b", ROTATED + timedelta(hours=1))
    assert periods(route) == [("key_a", None, ROTATED), ("key_b", ROTATED, None)]


def test_a_route_made_without_history_keeps_its_old_key_when_rotated(openai) -> None:  # type: ignore[no-untyped-def]
    route = Route.objects.create(
        alias=Alias.objects.get_or_create(name="reasoner")[0],
        provider="openai",
        base_url="https://api.openai.com/v1",
        upstream_model="gpt-r",
        provider_account=openai,
        upstream_key_id="key_a",
    )
    rotate("reasoner", "key_b", ROTATED)
    assert periods(route) == [("key_a", None, ROTATED), ("key_b", ROTATED, None)]


def test_the_route_admin_records_the_history(openai, admin_client) -> None:  # type: ignore[no-untyped-def]
    route = linked(openai, "key_a")
    with time_machine.travel(ROTATED, tick=False):
        answer = admin_client.post(
            f"/admin/metering/route/{route.pk}/change/",
            {
                "alias": "reasoner",
                "provider": "openai",
                "base_url": "https://api.openai.com/v1",
                "upstream_model": "gpt-r",
                "api_key_env": "",
                "accelerator": "",
                "provider_account": openai.pk,
                "upstream_key_id": "key_b",
                "is_active": "on",
            },
        )
    assert answer.status_code == 302
    assert periods(route) == [("key_a", None, ROTATED), ("key_b", ROTATED, None)]


def test_a_rotation_mid_window_is_no_leak_and_the_old_key_after_it_is(
    openai, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    linked(openai, "key_a")
    for n in range(0, 2):  # 7th, 8th on key_a
        day_usage(openai, DAY + timedelta(days=n), "key_a")
    rotate("reasoner", "key_b", ROTATED)  # the 9th: half on each key
    day_usage(openai, date(2026, 10, 9), "key_a", hour=9)
    day_usage(openai, date(2026, 10, 9), "key_b", hour=18)
    day_usage(openai, date(2026, 10, 10), "key_b")
    # the 12th: ours on key_b as declared, and the provider bills the OLD key again
    day_usage(openai, date(2026, 10, 12), "key_b")
    bucket(
        openai,
        "gpt-r",
        "key_a",
        at=datetime(2026, 10, 12, 11, tzinfo=UTC),
        requests=3,
        input_uncached_tokens=900,
        output_tokens=50,
    )
    days = [DAY + timedelta(days=n) for n in range(6)]
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_account_days(account=openai, days=days, now=SETTLED)
    output = {
        (r.day, r.api_key_id): r.status
        for r in ReconciliationRow.objects.filter(account=openai, token_class="output")
    }
    assert output == {
        (date(2026, 10, 7), "key_a"): "matched",
        (date(2026, 10, 8), "key_a"): "matched",
        (date(2026, 10, 9), ""): "matched",  # two keys that day: compared summed
        (date(2026, 10, 10), "key_b"): "matched",
        (date(2026, 10, 12), "key_b"): "matched",
        (date(2026, 10, 12), "key_a"): "missing_in_ledger",  # a real leak
    }
    leaks = Alert.objects.filter(kind="reconciliation", details__status="missing_in_ledger")
    assert list(leaks.values_list("details__day", "details__api_key_id")) == [
        ("2026-10-12", "key_a")
    ]


def test_a_rotation_at_midnight_leaves_the_old_key_an_edge_hour(openai) -> None:  # type: ignore[no-untyped-def]
    linked(openai, "key_a")
    midnight = datetime(2026, 10, 8, tzinfo=UTC)
    rotate("reasoner", "key_b", midnight)
    day_usage(openai, date(2026, 10, 8), "key_b", hour=9)
    # a request begun before midnight that the provider reports in the 8th's first bucket
    bucket(openai, "gpt-r", "key_a", at=midnight, requests=1, input_uncached_tokens=7)
    reconcile_account_days(account=openai, days=[date(2026, 10, 8)], now=SETTLED)
    keys = {(r.api_key_id, r.status) for r in rows(openai).values() if r.token_class == "requests"}
    assert keys == {("", "drift")}  # summed over keys: not a leak of key_a


def test_a_model_with_an_unkeyed_route_is_compared_summed_even_without_usage(openai) -> None:  # type: ignore[no-untyped-def]
    # the route serving gpt-r declares no key and had no traffic; the report bills a key
    # on gpt-r: the key may be that route's, so the rows are summed, not per that key
    route_set(
        alias="plain",
        provider="openai",
        base_url="https://api.openai.com/v1",
        upstream_model="gpt-r",
        provider_account=openai.name,
    )
    bucket(openai, "gpt-r", "key_x", requests=1, input_uncached_tokens=10, output_tokens=1)
    reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert {k[1] for k in rows(openai)} == {""}


def test_an_alert_lost_to_a_failed_handler_fires_on_the_reconcile_command(
    openai, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    linked(openai, "key_a")
    bucket(openai, "gpt-r", "key_leak", requests=2, input_uncached_tokens=10, output_tokens=1)
    real = list(hooks._handlers)

    def fails(account_id: int, days: list[date]) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(hooks, "_handlers", [fails])
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_account_days(account=openai, days=[DAY], now=SETTLED)
    assert not Alert.objects.filter(kind="reconciliation").exists()
    monkeypatch.setattr(hooks, "_handlers", real)
    with time_machine.travel(SETTLED), django_capture_on_commit_callbacks(execute=True):
        call_command("reconcile", account="oa", period="2026-10", stdout=io.StringIO())
    leaks = Alert.objects.filter(kind="reconciliation", details__api_key_id="key_leak")
    assert list(leaks.values_list("details__status", flat=True)) == ["missing_in_ledger"]
