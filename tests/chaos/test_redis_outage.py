"""Scenario 3: Redis stopped and started under load with every control on (spend limit,
rate limits, reasoning budget)."""

import time
from decimal import Decimal

import pytest

from tests.chaos.conftest import (
    Load,
    World,
    call,
    caller_format,
    free_port,
    report,
    status_counts,
    wait_for,
)

pytestmark = pytest.mark.chaos
OUTAGE_S = 4.0
# A call is judged on the outage when it starts this long after Redis died: the hot
# path's reply timeout (1 s) plus a lease report (50 ms) may pass before a server knows.
GRACE_S = 1.5
LIMIT_CALLS = 900  # the spend limit covers about this many calls


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_redis_outage_refuses_or_admits_as_configured_and_spend_stays_under_the_limit(
    world: World, fail_open: bool
) -> None:
    seeded = world.seed("proxy", "--simulator-url", world.simulator_url, "--controls")
    key = seeded["key"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    world.serve(port, RECKON_CONTROL_FAIL_OPEN=str(fail_open).lower())
    calibration = [
        call(base, key, w, a) for w, a in [("openai", "reasoner"), ("anthropic", "thinker")] * 2
    ]
    assert [o.status for o in calibration] == [200] * 4, calibration[0].body
    (per_call,) = world.ledger("SELECT max(spend_usd) FROM metering_usagerecord")[0]
    limit = (Decimal(per_call) * LIMIT_CALLS).quantize(Decimal("0.000001"))
    world.seed("limit", "--tenant", seeded["tenant"], "--usd", str(limit))
    time.sleep(1.5)  # past the auth cache (0.5 s): the server now sees the limit
    with Load(base, key, callers=32) as load:
        load.wait_for_ok(200)
        world.redis.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)  # the outage itself; nothing is asserted on time
        # The outage ends when Redis is started, not when start() has seen it answer a
        # PING: calls admitted in between are admitted by a Redis that is back.
        up_at = time.monotonic()
        world.redis.start()
        (spent_at_up,) = world.ledger(
            "SELECT coalesce(sum(spend_usd), 0) FROM metering_usagerecord"
        )[0]

        def after(o):  # type: ignore[no-untyped-def]
            return o.started > up_at + 1

        # on until the limit refuses calls (or long enough that it should have)
        try:
            wait_for(
                "the spend limit to refuse calls",
                lambda: load.count(lambda o: after(o) and 400 <= o.status < 500) >= 64,
                90,
            )
        except AssertionError:
            pass
    outcomes = load.outcomes
    during = [o for o in outcomes if o.started >= down_at + GRACE_S and o.ended <= up_at]
    resumed = [o for o in outcomes if o.started > up_at + 1 and o.status == 200]
    bad = [o for o in outcomes if o.status != 200 and not caller_format(o)]
    refused_in_outage_badly = [
        o for o in during if o.status != 200 and not (o.status == 503 and o.retry_after)
    ]
    (spent,) = world.ledger("SELECT coalesce(sum(spend_usd), 0) FROM metering_usagerecord")[0]
    refused_after = status_counts(
        [o for o in outcomes if o.started > up_at + 1 and o.status != 200]
    )
    report(
        f"Redis killed for {OUTAGE_S:.0f} s under 32 callers, every control on, "
        f"{'fail open' if fail_open else 'fail closed'}",
        responses=status_counts(outcomes),
        calls_started_and_ended_during_the_outage=status_counts(during),
        ok_after_restart=len(resumed),
        refusals_after_restart=refused_after,
        errors_not_in_the_callers_format=status_counts(bad),
        first_bad_error=(bad[0].status, bad[0].content_type, bad[0].body[:160]) if bad else None,
        outage_refusals_without_503_and_retry_after=status_counts(refused_in_outage_badly),
        spend_limit_usd=limit,
        ledger_spend_when_redis_came_back_usd=Decimal(spent_at_up).quantize(Decimal("0.000001")),
        ledger_spend_usd=Decimal(spent).quantize(Decimal("0.000001")),
    )
    assert during, "some calls ran entirely inside the outage"
    assert not bad, f"{len(bad)} errors not in the caller's format"
    if fail_open:
        # admitted unless a limit refuses them (fail open may spend past one meanwhile)
        assert not [o for o in during if o.status == 503], "fail open refuses nothing for Redis"
        assert [o for o in during if o.status == 200], "fail open admits calls while Redis is down"
    else:
        assert not [o for o in during if o.status == 200], "fail closed admits nothing"
        assert not refused_in_outage_badly, "refusals in the outage are 503 with Retry-After"
    if Decimal(spent_at_up) < limit:
        assert resumed, "calls are admitted again once Redis is back"
    else:  # fail open spent past the limit: rebuilt from the ledger, counters refuse
        assert not resumed, "counters rebuilt from the ledger refuse a limit already spent"
    if not fail_open:
        assert Decimal(spent) <= limit, "spend never above the limit"
