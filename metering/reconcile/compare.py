"""The comparison of one account x day x upstream model (x key): pure, no ORM, no I/O.

Ours are the ledger's five disjoint classes plus answered requests; theirs are the report's
counts already in Reckon's classes (uncached input, cache read, cache write, output = visible
+ reasoning; `metering.providers` converts them on import). Which classes compare depends
on the provider (decision 0116, "What compares"):

| class          | ours                                   | OpenAI       | Anthropic    |
|----------------|----------------------------------------|--------------|--------------|
| requests       | answered requests                      | compared     | not_compared |
| input_uncached | input (+ cache write on OpenAI)        | compared     | compared     |
| cache_read     | cached input                           | compared     | compared     |
| cache_write    | cache write                            | not_compared | compared     |
| output         | visible output + reasoning             | compared     | compared     |

Invariants:
- `drift = theirs - ours`; positive means the provider counts more than we forwarded.
  `relative_drift = drift / theirs` rounded half-even to 12 places (null when theirs is 0
  or not reported). The status never reads the rounded value: the tolerance check
  `|drift| <= max(tokens, relative x theirs)` is exact Decimal arithmetic.
- Statuses, in order of precedence:
  1. `not_compared`: the provider does not report the class (or sent no value for it).
  2. `missing_in_ledger`: the group has no record of ours at all (answered or not) and
     theirs > 0: the provider billed a model or key we never proxied. It shows at once,
     even while the day settles, because settling can add usage but never explain it
     away. A group whose only records got an upstream error or failed is compared.
  3. `pending`: the day has not settled (`metering.reconcile.service.day_settled`);
     `verdict` keeps what the status would be.
  4. `missing_in_report`: ours > 0 and the report has nothing for the whole group (no
     bucket, or every compared class 0).
  5. `matched` within the tolerance, else `drift`.
  A class with ours 0 and theirs 0 is matched.
- `drift_equals_reasoning` (output rows only): we forwarded reasoning and the provider's
  output is short by exactly it: the signature of a report that drops reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum

# Places kept of a relative drift (ReconciliationRow.relative_drift: NUMERIC(30, 12)).
RELATIVE_PLACES = Decimal("1e-12")
# Enough digits that products and quotients of bigint token counts are exact before the
# one rounding to RELATIVE_PLACES.
_EXACT = Context(prec=100)


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class TokenClass(StrEnum):
    """The compared classes, in the order rows are listed (ReconciliationRow.TokenClass)."""

    REQUESTS = "requests"
    INPUT_UNCACHED = "input_uncached"
    CACHE_READ = "cache_read"
    CACHE_WRITE = "cache_write"
    OUTPUT = "output"


class Status(StrEnum):
    """ReconciliationRow.Status, most severe first (a day's status is its worst row)."""

    MISSING_IN_LEDGER = "missing_in_ledger"
    DRIFT = "drift"
    MISSING_IN_REPORT = "missing_in_report"
    PENDING = "pending"
    MATCHED = "matched"
    NOT_COMPARED = "not_compared"


SEVERITY: tuple[Status, ...] = tuple(Status)

# The classes each provider's usage report does not give (decision 0116).
NOT_REPORTED: dict[Provider, frozenset[TokenClass]] = {
    Provider.OPENAI: frozenset({TokenClass.CACHE_WRITE}),
    Provider.ANTHROPIC: frozenset({TokenClass.REQUESTS}),
}


@dataclass(frozen=True)
class Ours:
    """What the ledger forwarded for one group, in its own disjoint classes."""

    requests: int = 0  # answered: neither an upstream error nor a failure
    input_tokens: int = 0  # uncached input
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0  # visible only
    reasoning_tokens: int = 0
    # every record forwarded, answered or not (an upstream error or failure is a record
    # of ours even with no tokens)
    records: int = 0

    def __add__(self, other: Ours) -> Ours:
        return Ours(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.records + other.records,
        )

    @property
    def is_empty(self) -> bool:
        """No record of ours at all: not even one the upstream did not answer (review
        S10: a group whose only usage is unanswered requests is not a leak)."""
        return not any(
            (
                self.records,
                self.requests,
                self.input_tokens,
                self.cached_input_tokens,
                self.cache_write_tokens,
                self.output_tokens,
                self.reasoning_tokens,
            )
        )


@dataclass(frozen=True)
class Theirs:
    """What the report says for one group, in Reckon's classes; None: not reported."""

    requests: int | None = None
    input_uncached: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    output: int | None = None

    def __add__(self, other: Theirs) -> Theirs:
        return Theirs(
            _plus(self.requests, other.requests),
            _plus(self.input_uncached, other.input_uncached),
            _plus(self.cache_read, other.cache_read),
            _plus(self.cache_write, other.cache_write),
            _plus(self.output, other.output),
        )

    def of(self, token_class: TokenClass) -> int | None:
        return {
            TokenClass.REQUESTS: self.requests,
            TokenClass.INPUT_UNCACHED: self.input_uncached,
            TokenClass.CACHE_READ: self.cache_read,
            TokenClass.CACHE_WRITE: self.cache_write,
            TokenClass.OUTPUT: self.output,
        }[token_class]


def _plus(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True)
class Tolerance:
    """A row matches when |drift| <= max(tokens, relative x theirs)."""

    tokens: int = 0
    relative: Decimal = Decimal("0.001")

    def __post_init__(self) -> None:
        if self.tokens < 0 or not self.relative.is_finite() or self.relative < 0:
            raise ValueError("Tolerances are finite and not negative.")

    def allows(self, *, drift: int, theirs: int) -> bool:
        if abs(drift) <= self.tokens:
            return True
        return Decimal(abs(drift)) <= _EXACT.multiply(self.relative, Decimal(theirs))


@dataclass(frozen=True)
class Comparison:
    """One class of one group: the values of a ReconciliationRow."""

    token_class: TokenClass
    ours: int
    theirs: int | None
    drift: int | None
    relative_drift: Decimal | None
    status: Status
    # What the status would be on a settled day (equal to `status` unless pending).
    verdict: Status
    reasoning: int  # our reasoning tokens (output rows; 0 otherwise)
    drift_equals_reasoning: bool


def ours_of(provider: Provider, ours: Ours, token_class: TokenClass) -> int:
    """Our count of a class in the provider's terms (OpenAI counts a cache write as
    uncached input and has no class of its own for it)."""
    if token_class is TokenClass.REQUESTS:
        return ours.requests
    if token_class is TokenClass.INPUT_UNCACHED:
        if provider is Provider.OPENAI:
            return ours.input_tokens + ours.cache_write_tokens
        return ours.input_tokens
    if token_class is TokenClass.CACHE_READ:
        return ours.cached_input_tokens
    if token_class is TokenClass.CACHE_WRITE:
        return ours.cache_write_tokens
    return ours.output_tokens + ours.reasoning_tokens


def relative_drift(*, drift: int, theirs: int) -> Decimal | None:
    if theirs == 0:
        return None
    quotient = _EXACT.divide(Decimal(drift), Decimal(theirs))
    return quotient.quantize(RELATIVE_PLACES, ROUND_HALF_EVEN, context=_EXACT)


def compare_group(
    *,
    provider: Provider,
    ours: Ours,
    theirs: Theirs | None,
    settled: bool,
    tolerance: Tolerance,
) -> list[Comparison]:
    """One row per class for a group (day x model x key). `theirs` None: the report has
    no bucket for the group."""
    not_reported = NOT_REPORTED[provider]
    theirs = theirs or Theirs()
    compared = [c for c in TokenClass if c not in not_reported and theirs.of(c) is not None]
    report_empty = all(not theirs.of(c) for c in compared)
    out = []
    for token_class in TokenClass:
        mine = ours_of(provider, ours, token_class)
        reasoning = ours.reasoning_tokens if token_class is TokenClass.OUTPUT else 0
        reported = None if token_class in not_reported else theirs.of(token_class)
        if token_class in not_reported or (reported is None and not report_empty):
            # The provider never reports the class, or this report has the group but not
            # the class: not a figure we can check.
            out.append(_row(token_class, mine, None, Status.NOT_COMPARED, reasoning, settled))
            continue
        # No bucket at all for the group counts as a report of nothing.
        theirs_count = reported or 0
        if ours.is_empty and theirs_count > 0:
            verdict = Status.MISSING_IN_LEDGER
        elif report_empty and mine > 0:
            verdict = Status.MISSING_IN_REPORT
        elif tolerance.allows(drift=theirs_count - mine, theirs=theirs_count):
            verdict = Status.MATCHED
        else:
            verdict = Status.DRIFT
        out.append(_row(token_class, mine, theirs_count, verdict, reasoning, settled))
    return out


def _row(
    token_class: TokenClass,
    mine: int,
    theirs: int | None,
    verdict: Status,
    reasoning: int,
    settled: bool,
) -> Comparison:
    status = verdict
    if not settled and verdict not in (Status.NOT_COMPARED, Status.MISSING_IN_LEDGER):
        status = Status.PENDING
    drift = None if theirs is None else theirs - mine
    return Comparison(
        token_class=token_class,
        ours=mine,
        theirs=theirs,
        drift=drift,
        relative_drift=None
        if drift is None or theirs is None
        else relative_drift(drift=drift, theirs=theirs),
        status=status,
        verdict=verdict,
        reasoning=reasoning,
        drift_equals_reasoning=drift is not None and reasoning > 0 and drift == -reasoning,
    )


def worst_status(statuses: list[Status] | list[str]) -> Status | None:
    """The most severe of some rows' statuses (a day's status), None for no rows."""
    present = {Status(s) for s in statuses}
    return next((s for s in SEVERITY if s in present), None)


# --- our usage in the provider's classes (billing's cost allocation reads these) ---------

# A class the provider has none of counts in another (the table in the module doc).
FOLDED_INTO: dict[Provider, dict[TokenClass, TokenClass]] = {
    Provider.OPENAI: {TokenClass.CACHE_WRITE: TokenClass.INPUT_UNCACHED},
    Provider.ANTHROPIC: {},
}


def provider_class(provider: str, token_class: str) -> TokenClass:
    """The class the provider counts `token_class` in (OpenAI: a cache write is uncached
    input); otherwise the class itself."""
    cls = TokenClass(token_class)
    return FOLDED_INTO[Provider(provider)].get(cls, cls)


def provider_tokens(provider: str, ours: Ours) -> dict[TokenClass, int]:
    """Our tokens per class the provider counts in its own right (requests left out), as
    `ours_of` counts them: every token of `ours` is in exactly one class."""
    vendor = Provider(provider)
    return {
        cls: ours_of(vendor, ours, cls)
        for cls in TokenClass
        if cls is not TokenClass.REQUESTS and provider_class(vendor, cls) is cls
    }
