"""Learning the plausible output size per tenant and alias (p99), on PostgreSQL and in
the Python fallback used on SQLite."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from metering.control.holdcaps import _learned_in_python, hold_caps, hold_caps_learn, percentile
from metering.models import HoldCap
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_percentile_is_an_observed_value() -> None:
    assert percentile(list(range(1, 101))) == 99
    assert percentile(list(range(1, 201))) == 198
    assert percentile([7]) == 7


@override_settings(RECKON_HOLD_CAP_MIN_SAMPLES=10, RECKON_HOLD_CAP_DAYS=7)
def test_caps_per_tenant_and_alias_fall_back_to_the_alias() -> None:
    big, small = ApiKeyFactory(), ApiKeyFactory()
    for i in range(100):  # output + reasoning = 100 .. 199 (reasoning 10x the visible)
        write_usage(big, NOW - timedelta(hours=1), output_tokens=10, reasoning_tokens=90 + i)
    for _ in range(5):  # too few calls to learn this tenant on its own
        write_usage(small, NOW - timedelta(hours=1), output_tokens=1, reasoning_tokens=4)
    write_usage(big, NOW - timedelta(days=8), reasoning_tokens=10_000)  # outside the window
    write_usage(big, NOW - timedelta(hours=1), reasoning_tokens=10_000, status="incomplete")

    assert hold_caps_learn(as_of=NOW) == 2  # (big, reasoner) and (all tenants, reasoner)
    assert hold_caps(big.tenant_id, ["reasoner"]) == {"reasoner": 198}
    # the small tenant gets the alias's cap across tenants: p99 of 105 values
    expected = percentile([100 + i for i in range(100)] + [5] * 5)
    assert hold_caps(small.tenant_id, ["reasoner"]) == {"reasoner": expected}
    assert hold_caps(big.tenant_id, ["chat"]) == {} == hold_caps(big.tenant_id, [])  # only these
    # PostgreSQL's percentile_disc and the Python fallback agree
    python = sorted(
        (str(t), a, p, n) for t, a, p, n in _learned_in_python(NOW - timedelta(days=7), NOW, 10)
    )
    stored = sorted(
        (str(c.tenant_id), c.alias, c.p99_output_tokens, c.samples) for c in HoldCap.objects.all()
    )
    assert python == stored
    assert hold_caps_learn(as_of=NOW) == 2 and HoldCap.objects.count() == 2  # run twice: same


@pytest.mark.django_db(transaction=True)
@override_settings(RECKON_HOLD_CAP_MIN_SAMPLES=1, RECKON_HOLD_CAP_DAYS=7)
def test_overlapping_runs_take_turns() -> None:
    import threading

    from django.db import connection

    key = ApiKeyFactory()
    for i in range(20):
        write_usage(key, NOW - timedelta(hours=1), output_tokens=10, reasoning_tokens=i)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait()
            hold_caps_learn(as_of=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert HoldCap.objects.count() == 2
