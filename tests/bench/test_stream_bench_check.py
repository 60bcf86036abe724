"""The streaming benchmark's records check fails loudly: a record lost, counted twice or
carrying other tokens than the upstream reported makes the run's verdict a MISMATCH."""

import pytest

from bench.stream_bench import Phase, Point, check_records, report

SERVED_BEFORE = {
    "started": 20,
    "completed": 20,
    "prompt_tokens": 280,
    "completion_tokens": 480,
    "reasoning_tokens": 240,
}
SERVED_AFTER = {
    "started": 120,
    "completed": 120,
    "prompt_tokens": 1680,
    "completion_tokens": 10080,
    "reasoning_tokens": 4880,
}
LEDGER_BEFORE = {"records": 20, "completed": 20, "reasoning": 240, "visible": 240}
LEDGER_EXACT = {"records": 120, "completed": 120, "reasoning": 4880, "visible": 5200}


def checked(ledger_after: dict[str, int], complete: int = 100) -> Point:
    point = Point(streams=100, chunks=50, interval=0.2, rounds=1)
    phase = Phase(name="reckon", pid=0, host="127.0.0.1", port=0, model="m", key="k")
    phase.complete = complete
    point.phases["reckon"].append(phase)
    check_records(phase, point, LEDGER_BEFORE, ledger_after, SERVED_BEFORE, SERVED_AFTER)
    return point


def test_an_exact_ledger_passes(capsys: pytest.CaptureFixture[str]) -> None:
    point = checked(LEDGER_EXACT)
    assert point.mismatches == []
    assert report(point, ["reckon"], "") == 0
    assert "records: every stream through Reckon saw data: [DONE]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "ledger_after",
    [
        {**LEDGER_EXACT, "records": 119, "completed": 119},  # a record lost
        {**LEDGER_EXACT, "records": 121, "completed": 121},  # one counted twice
        {**LEDGER_EXACT, "completed": 119},  # one recorded as failed
        {**LEDGER_EXACT, "reasoning": 4879},  # tokens that differ from the usage
        {**LEDGER_EXACT, "visible": 5201},
    ],
)
def test_a_ledger_that_differs_fails(
    ledger_after: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    point = checked(ledger_after)
    assert point.mismatches
    assert report(point, ["reckon"], "") == 1
    assert "MISMATCH: reckon: ledger gained" in capsys.readouterr().out


def test_a_stream_the_client_did_not_see_end_fails() -> None:
    point = checked(LEDGER_EXACT, complete=99)
    assert point.mismatches == ["reckon: client saw 99/100 streams complete"]
