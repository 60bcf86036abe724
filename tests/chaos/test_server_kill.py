"""Scenario 1: kill -9 of a Reckon server under 32 concurrent callers."""

import pytest

from tests.chaos.conftest import Load, World, free_port, report, status_counts, wait_for

pytestmark = pytest.mark.chaos


def test_kill9_of_a_server_under_load_loses_and_doubles_no_record(world: World) -> None:
    key = world.seed("proxy", "--simulator-url", world.simulator_url)["key"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = world.serve(port)
    with Load(base, key, callers=32) as load:
        load.wait_for_ok(300)
        server.kill9()
        killed_at_ok = load.count(lambda o: o.status == 200)
        wait_for(
            "callers to see the dead server", lambda: load.count(lambda o: o.status == 0) > 32, 30
        )
        world.serve(port)
        load.wait_for_ok(300)
    ok = [o for o in load.outcomes if o.status == 200]
    answered_ids = [o.request_id for o in ok]
    ledger = {
        str(rid): n
        for rid, n in world.ledger(
            "SELECT request_id, count(*) FROM metering_usagerecord GROUP BY request_id"
        )
    }
    missing = [rid for rid in answered_ids if rid not in ledger]
    doubled = [rid for rid, n in ledger.items() if n > 1]
    after_restart = len(ok) - killed_at_ok
    report(
        "kill -9 of a server under 32 callers",
        responses=status_counts(load.outcomes),
        ok_responses=len(ok),
        ok_after_restart=after_restart,
        ledger_records=sum(ledger.values()),
        ok_without_record=len(missing),
        records_twice=len(doubled),
        records_without_an_ok_response=len(set(ledger) - set(answered_ids)),
    )
    assert all(answered_ids), "every 200 carries x-reckon-request-id"
    assert len(set(answered_ids)) == len(answered_ids), "no request id answered twice"
    assert not missing, f"{len(missing)} answered calls have no usage record, e.g. {missing[:3]}"
    assert not doubled, f"{len(doubled)} request ids recorded twice"
    assert after_restart >= 300, "calls go on after the restart"
