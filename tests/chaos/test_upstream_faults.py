"""Scenario 5: an upstream that resets mid-stream, stalls, or answers garbage."""

import time

import pytest

from tests.chaos.conftest import World, call, caller_format, free_port, report, wait_for

pytestmark = pytest.mark.chaos
READ_TIMEOUT_S = 3
KINDS = ("reset-mid-stream", "stall", "garbage")
# Statuses a proxy may give for its upstream's failure, in the caller's format: the
# upstream's fault (502 bad gateway, 504 timeout). A 500 is Reckon's own failure.
GATEWAY = (502, 504)


def test_upstream_faults_leave_marked_records_and_no_5xx_of_ours(world: World) -> None:
    key = world.seed("proxy", "--simulator-url", world.simulator_url)["key"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    world.serve(port, RECKON_UPSTREAM_READ_TIMEOUT=str(READ_TIMEOUT_S))
    rows, violations = [], []
    for kind in KINDS:
        for wire in ("openai", "anthropic"):
            for stream in (False, True):
                before = world.ledger("SELECT count(*) FROM metering_usagerecord")[0][0]
                started = time.monotonic()
                o = call(base, key, wire, f"{kind}-{wire}", stream=stream)
                took = time.monotonic() - started
                try:
                    wait_for(
                        "its record",
                        lambda b=before: (
                            world.ledger("SELECT count(*) FROM metering_usagerecord")[0][0] > b
                        ),
                        10,
                    )
                except AssertionError:
                    pass
                records = world.ledger(
                    "SELECT request_id::text, status, flags::text FROM metering_usagerecord "
                    "ORDER BY id OFFSET %s",
                    before,
                )
                case = f"{kind} {wire} {'stream' if stream else 'json'}"
                rows.append((case, o.status, round(took, 1), [r[1] for r in records]))
                if o.status >= 500 and not (o.status in GATEWAY and caller_format(o)):
                    violations.append(f"{case}: {o.status} {o.content_type} {o.body[:120]!r}")
                elif not stream and o.status != 200 and not caller_format(o):
                    violations.append(f"{case}: error not in the caller's format {o.body[:120]!r}")
                if o.status == 0:
                    violations.append(f"{case}: connection dropped with no answer")
                if took > READ_TIMEOUT_S + 10:
                    violations.append(f"{case}: took {took:.1f} s")
                if len(records) != 1:
                    violations.append(f"{case}: {len(records)} usage records, want 1")
                elif records[0][1] == "completed" and records[0][2] == "[]":
                    violations.append(f"{case}: record not marked (completed, no flags)")
    report(
        "upstream faults, one call each (case, our status, seconds, record status)",
        **{f"case_{i}": row for i, row in enumerate(rows)},
    )
    for v in violations:
        print(f"[chaos]   VIOLATION {v}")
    assert not violations, violations[0]
