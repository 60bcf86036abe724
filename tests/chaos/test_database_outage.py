"""Scenario 2: the database stopped and started under load."""

import time
from pathlib import Path

import pytest

from tests.chaos.conftest import (
    Load,
    World,
    caller_format,
    free_port,
    report,
    status_counts,
    wait_for,
)

pytestmark = pytest.mark.chaos
OUTAGE_S = 6.0


def test_database_outage_loses_nothing_and_answers_in_the_callers_format(world: World) -> None:
    key = world.seed("proxy", "--simulator-url", world.simulator_url)["key"]
    port = free_port()
    world.serve(port)
    with Load(f"http://127.0.0.1:{port}", key, callers=32) as load:
        load.wait_for_ok(300)
        world.pg.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)  # the outage itself; nothing is asserted on time
        world.pg.start()
        up_at = time.monotonic()
        load.wait_for_ok(300, timeout=120)
    outcomes = load.outcomes
    ok = [o for o in outcomes if o.status == 200]
    during = [o for o in outcomes if o.started >= down_at and o.ended <= up_at]
    errors = [o for o in outcomes if o.status != 200]
    bad = [o for o in errors if not (o.status == 503 and o.retry_after and caller_format(o))]

    def recorded() -> set[str]:
        return {str(r) for (r,) in world.ledger("SELECT request_id FROM metering_usagerecord")}

    answered = {o.request_id for o in ok}
    try:
        replay_s: float | str = round(
            wait_for("every answered call in the ledger", lambda: answered <= recorded(), 90, 1), 1
        )
    except AssertionError:
        replay_s = "not within 90 s"
    missing = answered - recorded()
    doubled = world.ledger(
        "SELECT count(*) - count(DISTINCT request_id) FROM metering_usagerecord"
    )[0][0]
    spool = sorted(p.name for p in Path(world.dir / "spool").glob("*") if p.stat().st_size)
    report(
        f"PostgreSQL stopped for {OUTAGE_S:.0f} s under 32 callers",
        responses=status_counts(outcomes),
        calls_started_and_ended_during_the_outage=status_counts(during),
        errors_not_503_json_with_retry_after=status_counts(bad),
        first_bad_error=(bad[0].status, bad[0].content_type, bad[0].body[:160]) if bad else None,
        ok_responses=len(ok),
        seconds_until_every_ok_was_in_the_ledger_after_restart=replay_s,
        ok_without_record=len(missing),
        records_twice=doubled,
        spool_files_left=spool,
    )
    assert not bad, f"{len(bad)} errors not in the caller's format (503 JSON + Retry-After)"
    assert not missing, f"{len(missing)} answered calls never reached the ledger (no replay)"
    assert doubled == 0
