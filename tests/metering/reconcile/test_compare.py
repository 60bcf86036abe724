"""The pure comparison (metering.reconcile.compare): the class mapping per provider, drift
and its exact relative value, the statuses and their precedence, the reasoning signature."""

from decimal import Context, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.reconcile.compare import (
    Comparison,
    Ours,
    Provider,
    Status,
    Theirs,
    TokenClass,
    Tolerance,
    compare_group,
    relative_drift,
    worst_status,
)

EXACT = Tolerance(tokens=0, relative=Decimal("0.001"))
OURS = Ours(
    requests=3,
    input_tokens=1000,
    cached_input_tokens=200,
    cache_write_tokens=50,
    output_tokens=300,
    reasoning_tokens=700,
)


def by_class(rows: list[Comparison]) -> dict[TokenClass, Comparison]:
    assert [r.token_class for r in rows] == list(TokenClass)  # one row per class, in order
    return {r.token_class: r for r in rows}


def test_openai_counts_cache_write_as_uncached_input_and_output_with_reasoning() -> None:
    theirs = Theirs(requests=3, input_uncached=1050, cache_read=200, cache_write=None, output=1000)
    rows = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
        )
    )
    assert {c: (r.ours, r.theirs, r.drift, r.status) for c, r in rows.items()} == {
        TokenClass.REQUESTS: (3, 3, 0, Status.MATCHED),
        TokenClass.INPUT_UNCACHED: (1050, 1050, 0, Status.MATCHED),
        TokenClass.CACHE_READ: (200, 200, 0, Status.MATCHED),
        TokenClass.CACHE_WRITE: (50, None, None, Status.NOT_COMPARED),
        TokenClass.OUTPUT: (1000, 1000, 0, Status.MATCHED),
    }
    assert rows[TokenClass.OUTPUT].reasoning == 700
    assert rows[TokenClass.INPUT_UNCACHED].reasoning == 0
    assert rows[TokenClass.OUTPUT].relative_drift == Decimal(0)


def test_anthropic_compares_cache_write_and_not_requests() -> None:
    theirs = Theirs(requests=None, input_uncached=1000, cache_read=200, cache_write=50, output=1000)
    rows = by_class(
        compare_group(
            provider=Provider.ANTHROPIC, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
        )
    )
    assert rows[TokenClass.REQUESTS].status is Status.NOT_COMPARED
    assert rows[TokenClass.REQUESTS].theirs is None and rows[TokenClass.REQUESTS].ours == 3
    assert {c: r.status for c, r in rows.items() if c is not TokenClass.REQUESTS} == {
        TokenClass.INPUT_UNCACHED: Status.MATCHED,
        TokenClass.CACHE_READ: Status.MATCHED,
        TokenClass.CACHE_WRITE: Status.MATCHED,
        TokenClass.OUTPUT: Status.MATCHED,
    }
    # a requests figure an Anthropic report might carry is still not compared
    rows = by_class(
        compare_group(
            provider=Provider.ANTHROPIC,
            ours=OURS,
            theirs=Theirs(
                requests=99, input_uncached=1000, cache_read=200, cache_write=50, output=1000
            ),
            settled=True,
            tolerance=EXACT,
        )
    )
    assert rows[TokenClass.REQUESTS].status is Status.NOT_COMPARED


def test_a_report_without_reasoning_drifts_by_exactly_the_reasoning() -> None:
    theirs = Theirs(requests=3, input_uncached=1050, cache_read=200, output=300)
    output = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
        )
    )[TokenClass.OUTPUT]
    assert (output.ours, output.theirs, output.drift) == (1000, 300, -700)
    assert output.status is Status.DRIFT and output.drift_equals_reasoning
    assert output.relative_drift == Decimal("-2.333333333333")  # -700/300, half-even


def test_drift_of_another_size_is_not_the_reasoning_signature() -> None:
    theirs = Theirs(requests=3, input_uncached=1050, cache_read=200, output=301)
    output = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
        )
    )[TokenClass.OUTPUT]
    assert output.status is Status.DRIFT and not output.drift_equals_reasoning


def test_a_report_counting_the_reasoning_twice_is_not_the_dropped_reasoning_signature() -> None:
    # drift == +reasoning (the provider counts 700 more) is not "the report drops it"
    theirs = Theirs(requests=3, input_uncached=1050, cache_read=200, output=1700)
    output = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
        )
    )[TokenClass.OUTPUT]
    assert output.drift == OURS.reasoning_tokens == 700
    assert output.status is Status.DRIFT and not output.drift_equals_reasoning


def test_a_group_whose_only_records_were_unanswered_is_not_missing_in_ledger() -> None:
    # every request of the day got an upstream error: no answered request, no token, but
    # records of ours; the provider counts them (0116 open question 1)
    unanswered = Ours(records=4)
    theirs = Theirs(requests=4, input_uncached=120, cache_read=0, output=0)
    rows = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=unanswered, theirs=theirs, settled=True, tolerance=EXACT
        )
    )
    assert rows[TokenClass.REQUESTS].status is Status.DRIFT
    assert rows[TokenClass.INPUT_UNCACHED].status is Status.DRIFT
    assert Status.MISSING_IN_LEDGER not in {r.status for r in rows.values()}
    nothing = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=Ours(), theirs=theirs, settled=True, tolerance=EXACT
        )
    )
    assert nothing[TokenClass.REQUESTS].status is Status.MISSING_IN_LEDGER


@pytest.mark.parametrize(
    ("theirs", "tolerance", "status"),
    [
        (1000, Tolerance(0, Decimal("0.001")), Status.MATCHED),
        (1001, Tolerance(0, Decimal("0.001")), Status.MATCHED),  # 1 <= 1.001
        (1002, Tolerance(0, Decimal("0")), Status.DRIFT),
        (1002, Tolerance(2, Decimal("0")), Status.MATCHED),
        (1003, Tolerance(2, Decimal("0")), Status.DRIFT),
        (999, Tolerance(0, Decimal("0.001")), Status.DRIFT),  # 1 > 0.999
        (1010, Tolerance(0, Decimal("0.01")), Status.MATCHED),  # 10 <= 10.10
        (1011, Tolerance(0, Decimal("0.01")), Status.DRIFT),  # 11 > 10.11
    ],
)
def test_tolerance_is_the_larger_of_tokens_and_relative(
    theirs: int, tolerance: Tolerance, status: Status
) -> None:
    ours = Ours(requests=1, output_tokens=1000)
    output = by_class(
        compare_group(
            provider=Provider.OPENAI,
            ours=ours,
            theirs=Theirs(requests=1, input_uncached=0, cache_read=0, output=theirs),
            settled=True,
            tolerance=tolerance,
        )
    )[TokenClass.OUTPUT]
    assert output.status is status


def test_the_tolerance_check_is_exact_at_the_boundary() -> None:
    # 1/3 of a token tolerance must not be rounded up: |drift| 1 against 3 * 0.333...
    tolerance = Tolerance(0, Decimal("0.3333333333333333333333333333"))
    assert not tolerance.allows(drift=1, theirs=3)
    assert tolerance.allows(drift=1, theirs=4)
    assert Tolerance(0, Decimal("0.25")).allows(drift=-1, theirs=4)


def test_usage_on_a_group_we_never_proxied_is_missing_in_ledger_even_while_pending() -> None:
    theirs = Theirs(requests=2, input_uncached=10, cache_read=0, output=5)
    rows = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=Ours(), theirs=theirs, settled=False, tolerance=EXACT
        )
    )
    assert rows[TokenClass.REQUESTS].status is Status.MISSING_IN_LEDGER
    assert rows[TokenClass.INPUT_UNCACHED].status is Status.MISSING_IN_LEDGER
    assert rows[TokenClass.OUTPUT].status is Status.MISSING_IN_LEDGER
    # a class both sides have at 0 matched; the unreported class is still not compared
    assert rows[TokenClass.CACHE_READ].verdict is Status.MATCHED
    assert rows[TokenClass.CACHE_READ].status is Status.PENDING
    assert rows[TokenClass.CACHE_WRITE].status is Status.NOT_COMPARED
    assert rows[TokenClass.OUTPUT].relative_drift == Decimal(1)


def test_usage_the_report_lacks_is_missing_in_report_once_settled() -> None:
    for theirs in (None, Theirs(requests=0, input_uncached=0, cache_read=0, output=0)):
        rows = by_class(
            compare_group(
                provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
            )
        )
        assert rows[TokenClass.OUTPUT].status is Status.MISSING_IN_REPORT
        assert (rows[TokenClass.OUTPUT].theirs, rows[TokenClass.OUTPUT].drift) == (0, -1000)
        assert rows[TokenClass.OUTPUT].relative_drift is None  # theirs is 0
        pending = by_class(
            compare_group(
                provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=False, tolerance=EXACT
            )
        )
        assert pending[TokenClass.OUTPUT].status is Status.PENDING
        assert pending[TokenClass.OUTPUT].verdict is Status.MISSING_IN_REPORT


def test_a_class_one_side_lacks_within_a_group_both_have_is_drift() -> None:
    # we saw no cache reads, the provider reports some: drift, not a leaked key
    theirs = Theirs(requests=3, input_uncached=1050, cache_read=200, output=1000)
    ours = Ours(requests=3, input_tokens=1000, cache_write_tokens=50, output_tokens=1000)
    rows = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=ours, theirs=theirs, settled=True, tolerance=EXACT
        )
    )
    assert rows[TokenClass.CACHE_READ].status is Status.DRIFT
    assert rows[TokenClass.CACHE_READ].relative_drift == Decimal(1)


def test_a_class_the_report_has_no_value_for_is_not_compared() -> None:
    theirs = Theirs(requests=3, input_uncached=1050, cache_read=None, output=1000)
    rows = by_class(
        compare_group(
            provider=Provider.OPENAI, ours=OURS, theirs=theirs, settled=True, tolerance=EXACT
        )
    )
    assert rows[TokenClass.CACHE_READ].status is Status.NOT_COMPARED
    assert rows[TokenClass.OUTPUT].status is Status.MATCHED


def test_worst_status_orders_by_severity() -> None:
    assert worst_status([]) is None
    assert worst_status(["matched", "not_compared"]) is Status.MATCHED
    assert worst_status(["matched", "pending"]) is Status.PENDING
    assert worst_status(["pending", "missing_in_report", "drift"]) is Status.DRIFT
    assert worst_status(["drift", "missing_in_ledger"]) is Status.MISSING_IN_LEDGER


def test_bad_tolerances_are_refused() -> None:
    with pytest.raises(ValueError):
        Tolerance(-1, Decimal(0))
    with pytest.raises(ValueError):
        Tolerance(0, Decimal("NaN"))
    with pytest.raises(ValueError):
        Tolerance(0, Decimal("-0.1"))


counts = st.integers(min_value=0, max_value=2**62)


@given(drift=st.integers(min_value=-(2**62), max_value=2**62), theirs=counts)
def test_relative_drift_is_the_exact_quotient_rounded_once(drift: int, theirs: int) -> None:
    value = relative_drift(drift=drift, theirs=theirs)
    if theirs == 0:
        assert value is None
        return
    assert value is not None
    # within half a unit of the 12th place of the exact quotient: |value*theirs - drift|
    # <= theirs / 2e12, checked in integers
    scaled = int(value.scaleb(12, context=Context(prec=100)))
    assert abs(scaled * theirs - drift * 10**12) * 2 <= theirs


@given(
    ours=st.builds(
        Ours,
        requests=counts,
        input_tokens=counts,
        cached_input_tokens=counts,
        cache_write_tokens=counts,
        output_tokens=counts,
        reasoning_tokens=counts,
    ),
    theirs=st.none()
    | st.builds(
        Theirs,
        requests=st.none() | counts,
        input_uncached=st.none() | counts,
        cache_read=st.none() | counts,
        cache_write=st.none() | counts,
        output=st.none() | counts,
    ),
    provider=st.sampled_from(Provider),
    settled=st.booleans(),
    tokens=st.integers(min_value=0, max_value=1000),
    relative=st.decimals(min_value=0, max_value=1, places=6),
)
def test_rows_are_consistent_whatever_the_counts(
    ours: Ours,
    theirs: Theirs | None,
    provider: Provider,
    settled: bool,
    tokens: int,
    relative: Decimal,
) -> None:
    tolerance = Tolerance(tokens, relative)
    for row in compare_group(
        provider=provider, ours=ours, theirs=theirs, settled=settled, tolerance=tolerance
    ):
        if row.theirs is None:
            assert row.status is Status.NOT_COMPARED and row.drift is None
            continue
        assert row.drift == row.theirs - row.ours
        if row.verdict is Status.MATCHED:
            assert abs(row.drift) <= max(tokens, relative * row.theirs)
        if row.verdict is Status.DRIFT:
            assert abs(row.drift) > max(tokens, relative * row.theirs)
        if row.verdict is Status.MISSING_IN_LEDGER:
            assert ours.is_empty and row.theirs > 0
        if row.status is Status.PENDING:
            assert not settled
        if settled:
            assert row.status is row.verdict
        if row.drift_equals_reasoning:
            assert row.token_class is TokenClass.OUTPUT and row.drift == -ours.reasoning_tokens
