"""Actual provider cost allocated to tenants: the exact split, the token-type mapping,
normalisation, unattributed usage, list-price split of untyped lines, pending days."""

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billing.costs.provider_costs import (
    CostLine,
    Shares,
    Use,
    account_costs,
    allocate,
    split_exact,
    tenant_class_tokens,
    token_class_of,
)
from metering.models import (
    ProviderAccount,
    ProviderCostBucket,
    ProviderReportFetch,
    ReconciliationRow,
)
from metering.providers.openai_reports import line_item_parts
from metering.reconcile.compare import Ours, Provider, TokenClass, ours_of

INPUT_UNCACHED, CACHE_READ = TokenClass.INPUT_UNCACHED, TokenClass.CACHE_READ
CACHE_WRITE, OUTPUT = TokenClass.CACHE_WRITE, TokenClass.OUTPUT
UNIT = Decimal("1e-24")
# Wide enough that sums of 44-digit amounts are exact (the default context keeps 28).
WIDE = Context(prec=100)
T1, T2, T3 = (uuid.UUID(int=n) for n in (1, 2, 3))


# --- the exact split ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "weights", "expected"),
    [
        (
            "1",
            [1, 1, 1],
            [
                "0.333333333333333333333334",
                "0.333333333333333333333333",
                "0.333333333333333333333333",
            ],
        ),
        ("10", [3, 1], ["7.5", "2.5"]),
        ("0", [5, 7], ["0", "0"]),
        ("-1", [1, 2], ["-0.333333333333333333333333", "-0.666666666666666666666667"]),
        ("0.000000000000000000000001", [1, 1], ["0.000000000000000000000001", "0"]),
        ("5", [0, 2], ["0", "5"]),
        (
            "3",
            [Decimal("0.5"), Decimal("1.25")],
            ["0.857142857142857142857143", "2.142857142857142857142857"],
        ),
    ],
)
def test_split_exact_examples(amount: str, weights: list[int], expected: list[str]) -> None:
    parts = split_exact(Decimal(amount), weights)
    assert parts == [Decimal(e) for e in expected]
    assert sum(parts) == Decimal(amount)


def test_split_exact_refuses_what_it_cannot_split() -> None:
    with pytest.raises(ValueError, match="decimal places"):
        split_exact(Decimal("1e-25"), [1])
    with pytest.raises(ValueError, match="all be zero"):
        split_exact(Decimal("1"), [0, 0])
    with pytest.raises(ValueError, match="negative"):
        split_exact(Decimal("1"), [2, -1])


amounts = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=24, allow_nan=False
)
token_counts = st.integers(min_value=0, max_value=10**12)


@given(amount=amounts, weights=st.lists(token_counts, min_size=1, max_size=12))
def test_split_exact_sums_exactly_and_keeps_the_sign(amount: Decimal, weights: list[int]) -> None:
    assume(any(weights))
    parts = split_exact(amount, weights)
    with localcontext(WIDE):
        _check_split(amount, weights, parts)


def _check_split(amount: Decimal, weights: list[int], parts: list[Decimal]) -> None:
    assert sum(parts) == amount
    assert all(p >= 0 for p in parts) if amount >= 0 else all(p <= 0 for p in parts)
    for part, weight in zip(parts, weights, strict=True):
        # each part within one unit of its exact share, zero weight gets nothing
        exact = amount * Decimal(weight) / Decimal(sum(weights))
        assert abs(part - exact) < UNIT
        if weight == 0:
            assert part == 0


# --- allocation of one (day, model) -------------------------------------------------------------


def use(payer: uuid.UUID, list_cost: str = "0", **tokens: int) -> Use:
    return Use(payer=(payer, "reasoner", ""), tokens=tokens, list_cost_usd=Decimal(list_cost))


@given(
    amount=st.decimals(min_value=0, max_value=Decimal("1e9"), places=24, allow_nan=False),
    ours=st.lists(token_counts, min_size=1, max_size=6),
    extra=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_allocation_sums_exactly_never_negative_and_unattributes_only_theirs_beyond_ours(
    amount: Decimal, ours: list[int], extra: int
) -> None:
    total = sum(ours)
    theirs = max(total + extra, 0)
    uses = [use(uuid.UUID(int=i + 1), output=n) for i, n in enumerate(ours)]
    shares = allocate(lines=[CostLine(amount, OUTPUT)], uses=uses, theirs={OUTPUT: theirs})
    with localcontext(WIDE):
        _check_allocation(amount, ours, theirs, uses, shares)


def _check_allocation(
    amount: Decimal, ours: list[int], theirs: int, uses: list[Use], shares: Shares
) -> None:
    total = sum(ours)
    assert sum(shares.parts.values()) + shares.unattributed == amount
    assert all(p >= 0 for p in shares.parts.values()) and shares.unattributed >= 0
    if total == 0:
        assert shares.unattributed == amount  # nobody forwarded the class
    elif theirs <= total:
        # normalised to ours: each tenant pays amount x tokens / ours
        assert shares.unattributed == 0
        for u, n in zip(uses, ours, strict=True):
            assert abs(shares.parts[u.payer] - amount * n / total) < UNIT
    else:
        # theirs beyond ours stays unattributed; tenants pay amount x tokens / theirs
        assert abs(shares.unattributed - amount * (theirs - total) / theirs) < UNIT
        for u, n in zip(uses, ours, strict=True):
            assert abs(shares.parts[u.payer] - amount * n / theirs) < UNIT


def test_allocation_worked_example() -> None:
    """$12.34 of output, theirs 1200 tokens, ours 1000 (600 + 400): 200 tokens' worth
    unattributed. $0.50 of web search split by list-price cost 1:3."""
    uses = [use(T1, "1", output=600, input_uncached=10), use(T2, "3", output=400)]
    shares = allocate(
        lines=[CostLine(Decimal("12.34"), OUTPUT), CostLine(Decimal("0.5"), None)],
        uses=uses,
        theirs={OUTPUT: 1200},
    )
    assert shares.parts[(T1, "reasoner", "")] == Decimal("6.17") + Decimal("0.125")
    assert shares.parts[(T2, "reasoner", "")] == Decimal("4.113333333333333333333333") + Decimal(
        "0.375"
    )
    assert shares.unattributed == Decimal(
        "2.056666666666666666666667"
    )  # the last unit: largest remainder
    assert sum(shares.parts.values()) + shares.unattributed == Decimal("12.84")


def test_untyped_lines_fall_back_to_tokens_then_to_unattributed() -> None:
    by_tokens = allocate(
        lines=[CostLine(Decimal("1"), None)],
        uses=[use(T1, output=1), use(T2, output=3)],
        theirs={},
    )
    assert by_tokens.parts == {
        (T1, "reasoner", ""): Decimal("0.25"),
        (T2, "reasoner", ""): Decimal("0.75"),
    }
    nobody = allocate(lines=[CostLine(Decimal("1"), None)], uses=[], theirs={})
    assert nobody.unattributed == Decimal("1") and not nobody.parts


@pytest.mark.parametrize(
    ("token_type", "expected"),
    [
        ("uncached_input_tokens", INPUT_UNCACHED),
        ("output_tokens", OUTPUT),
        ("cache_read_input_tokens", CACHE_READ),
        ("cache_creation.ephemeral_5m_input_tokens", CACHE_WRITE),
        ("cache_creation.ephemeral_1h_input_tokens", CACHE_WRITE),
        ("cache_creation_5m_input_tokens", CACHE_WRITE),
        ("input", INPUT_UNCACHED),
        ("Input", INPUT_UNCACHED),
        ("cached input", CACHE_READ),
        ("Cached Input Tokens", CACHE_READ),
        ("output", OUTPUT),
        ("completion tokens", OUTPUT),
        ("audio input", None),
        ("web_search", None),
        ("", None),
    ],
)
def test_token_types_map_liberally(token_type: str, expected: str | None) -> None:
    assert token_class_of(token_type) == expected


# --- reading the account's rows -------------------------------------------------------------------


@dataclass(frozen=True)
class Fwd:
    """A forwarded row as `metering.reconcile.ours.forwarded_usage` returns it."""

    day: date
    upstream_model: str
    tenant_id: uuid.UUID
    alias: str
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 1
    serving_cost_usd: Decimal = Decimal(0)
    accelerator: str = ""
    records: int = 1


D1, D2 = date(2026, 10, 5), date(2026, 10, 6)


def _fetch(account: ProviderAccount) -> ProviderReportFetch:
    return ProviderReportFetch.objects.create(
        account=account,
        report="cost",
        run_id=uuid.uuid4(),
        query="/v1/organizations/cost_report",
        http_status=200,
        body="{}",
        body_sha256="0" * 64,
        fetched_at=datetime(2026, 10, 9, tzinfo=UTC),
    )


def cost(account: ProviderAccount, day: date, amount_text: str, **group: str) -> None:
    """A cost row as the importer stores it (OpenAI: model and token type read from the
    line item by the importer's parser; blank when it cannot read it)."""
    cents = account.provider == "anthropic"
    if "line_item" in group and "model" not in group:
        group["model"], group["token_type"] = line_item_parts(group["line_item"])
    ProviderCostBucket.objects.create(
        account=account,
        bucket_start=datetime(day.year, day.month, day.day, tzinfo=UTC),
        bucket_width="1d",
        amount_text=amount_text,
        amount_usd=Decimal(amount_text) / 100 if cents else Decimal(amount_text),
        fetch=_fetch(account),
        content_hash="h",
        changed_at=datetime(2026, 10, 9, tzinfo=UTC),
        **group,
    )


def recon(
    account: ProviderAccount,
    day: date,
    model: str,
    token_class: str,
    *,
    ours: int,
    theirs: int | None,
    status: str = "matched",
    key: str = "",
) -> None:
    ReconciliationRow.objects.create(
        account=account,
        day=day,
        upstream_model=model,
        api_key_id=key,
        token_class=token_class,
        ours=ours,
        theirs=theirs,
        drift=None if theirs is None else theirs - ours,
        status=status,
        computed_at=datetime(2026, 10, 9, tzinfo=UTC),
    )


@pytest.mark.django_db
def test_anthropic_cents_are_allocated_exactly_and_leaks_stay_unattributed() -> None:
    account = ProviderAccount.objects.create(
        name="anthropic-main",
        provider="anthropic",
        admin_key_env="ANTHROPIC_ADMIN_KEY",
        model_map={"claude-sonnet-4-5-20250929": "claude-sonnet-4-5"},
    )
    model = "claude-sonnet-4-5"
    forwarded = [
        Fwd(
            D1,
            model,
            T1,
            "sonnet",
            output_tokens=100,
            reasoning_tokens=200,
            input_tokens=50,
            cache_write_tokens=30,
            serving_cost_usd=Decimal("0.01"),
        ),
        Fwd(
            D1,
            model,
            T2,
            "sonnet",
            output_tokens=700,
            input_tokens=50,
            serving_cost_usd=Decimal("0.03"),
        ),
    ]
    recon(account, D1, model, "output", ours=1000, theirs=1000)
    recon(account, D1, model, "input_uncached", ours=100, theirs=100)
    recon(account, D1, model, "cache_write", ours=30, theirs=30)
    recon(account, D1, model, "cache_read", ours=0, theirs=250, status="missing_in_ledger")
    reported = "claude-sonnet-4-5-20250929"
    cost(account, D1, "123.45", model=reported, token_type="output_tokens", cost_type="tokens")
    cost(account, D1, "0.07", model=reported, token_type="uncached_input_tokens")
    cost(
        account, D1, "0.333", model=reported, token_type="cache_creation.ephemeral_5m_input_tokens"
    )
    cost(account, D1, "2.5", model=reported, token_type="cache_read_input_tokens")
    cost(account, D1, "1", model=reported, cost_type="web_search")

    result = account_costs(account=account, start=D1, end=D2, forwarded=forwarded)

    t1, t2 = result.parts[(T1, "sonnet", "")], result.parts[(T2, "sonnet", "")]
    # output $1.2345 by 300:700; input $0.0007 by 50:50; cache write $0.00333 all T1;
    # web search $0.01 by list price 1:3; cache read $0.025 nobody forwarded: unattributed
    assert t1 == Decimal("0.37035") + Decimal("0.00035") + Decimal("0.00333") + Decimal("0.0025")
    assert t2 == Decimal("0.86415") + Decimal("0.00035") + Decimal("0.0075")
    assert result.unattributed == Decimal("0.025")
    assert t1 + t2 + result.unattributed == Decimal("1.27353")  # 127.353 cents, exactly
    assert not result.pending and not result.unattributed_pending
    assert result.estimates[(T1, "sonnet", "")] == Decimal("0.01")


@pytest.mark.django_db
def test_openai_line_items_per_key_rows_and_pending_days() -> None:
    account = ProviderAccount.objects.create(
        name="openai-main", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    forwarded = [
        # OpenAI's uncached input includes our cache writes: T1 has 100 + 100
        Fwd(D1, "o4-mini", T1, "mini", input_tokens=100, cache_write_tokens=100),
        Fwd(D1, "o4-mini", T2, "mini", input_tokens=200),
        Fwd(D2, "o4-mini", T1, "mini", input_tokens=5),
    ]
    # only per-key rows: theirs is their sum (500), ours 400 -> 1/5 unattributed
    recon(account, D1, "o4-mini", "input_uncached", ours=300, theirs=300, key="key_a")
    recon(
        account, D1, "o4-mini", "input_uncached", ours=100, theirs=200, key="key_b", status="drift"
    )
    recon(account, D2, "o4-mini", "input_uncached", ours=5, theirs=None, status="pending")
    cost(account, D1, "1.00", line_item="o4-mini, input")
    cost(account, D2, "9.99", line_item="o4-mini, input")
    cost(account, D1, "0.30", line_item="unparseable fee")
    # a cache-write line on OpenAI is priced as uncached input (where OpenAI counts them)
    cost(account, D1, "0.10", line_item="o4-mini, cache write")

    result = account_costs(account=account, start=D1, end=date(2026, 10, 7), forwarded=forwarded)

    assert result.parts[(T1, "mini", "")] == Decimal("0.44")  # 200 of theirs' 500, twice
    assert result.parts[(T2, "mini", "")] == Decimal("0.44")
    # beyond ours (1/5 of both lines) + the line with no model
    assert result.unattributed == Decimal("0.2") + Decimal("0.02") + Decimal("0.30")
    assert result.pending == {(D2, "o4-mini")}  # D2's $9.99 is not counted
    assert result.payer_pending((T1, "mini", "")) and not result.payer_pending((T2, "mini", ""))
    assert result.unattributed_pending  # D2's cost may still add to it


@pytest.mark.django_db
def test_a_day_with_no_reconciliation_rows_is_pending() -> None:
    account = ProviderAccount.objects.create(
        name="openai-b", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    cost(account, D1, "1.5", line_item="o3, output")
    result = account_costs(
        account=account, start=D1, end=D2, forwarded=[Fwd(D1, "o3", T3, "o3", output_tokens=9)]
    )
    assert result.pending == {(D1, "o3")} and not result.parts
    assert result.payer_pending((T3, "o3", "")) and result.unattributed == 0


@pytest.mark.django_db
def test_every_group_of_a_settling_day_is_pending() -> None:
    """A model billed on a leaked key is missing_in_ledger before its day settles; its
    cost (all unattributed) is still not final while the day's report settles."""
    account = ProviderAccount.objects.create(
        name="openai-c", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    recon(account, D1, "o3", "output", ours=9, theirs=9, status="pending")
    recon(account, D1, "gpt-leak", "output", ours=0, theirs=50, status="missing_in_ledger")
    cost(account, D1, "7", line_item="gpt-leak, output")
    result = account_costs(
        account=account, start=D1, end=D2, forwarded=[Fwd(D1, "o3", T3, "o3", output_tokens=9)]
    )
    assert result.pending == {(D1, "o3"), (D1, "gpt-leak")}
    assert result.unattributed == 0 and result.unattributed_pending


@pytest.mark.django_db
def test_amounts_are_exact_from_the_stored_text_even_on_sqlite() -> None:
    """OpenAI sends 17+ significant digits; SQLite keeps amount_usd as a float (15)."""
    account = ProviderAccount.objects.create(
        name="openai-exact", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    for token_class in ("requests", "input_uncached", "cache_read", "output"):
        recon(account, D1, "o3", token_class, ours=3, theirs=3)
    cost(account, D1, "0.52656000000000012345", line_item="o3, output")
    cost(account, D1, "0.1000000000000000003", line_item="web search")
    result = account_costs(
        account=account,
        start=D1,
        end=D2,
        forwarded=[
            Fwd(D1, "o3", T1, "o3", output_tokens=1),
            Fwd(D1, "o3", T2, "o3", output_tokens=2),
        ],
    )
    with localcontext(WIDE):
        parts = result.parts[(T1, "o3", "")] + result.parts[(T2, "o3", "")]
        assert parts == Decimal("0.52656000000000012345")
        assert result.unattributed == Decimal("0.1000000000000000003")
    assert result.parts[(T1, "o3", "")] == Decimal("0.175520000000000041150000")


@pytest.mark.django_db
def test_on_a_settled_day_a_cost_line_of_a_model_without_rows_is_unattributed() -> None:
    """Embeddings are billed but not in the completions usage report: no reconciliation
    row ever comes for them, so once the day settles they are unattributed, not pending.
    A line item the importer could not read has no model: unattributed, never re-parsed."""
    account = ProviderAccount.objects.create(
        name="openai-emb", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    forwarded = [Fwd(D1, "gpt-r", T1, "r", input_tokens=10, output_tokens=5)]
    for token_class in ("requests", "input_uncached", "cache_read", "output"):
        recon(account, D1, "gpt-r", token_class, ours=10, theirs=10)
    cost(account, D1, "1.00", line_item="gpt-r, input")
    cost(account, D1, "2.50", line_item="text-embedding-3-small, input")
    cost(account, D1, "0.70", line_item="gpt-r, input, batch")  # the importer leaves it blank

    result = account_costs(account=account, start=D1, end=D2, forwarded=forwarded)

    assert result.parts == {(T1, "r", ""): Decimal("1.00")}
    assert result.unattributed == Decimal("3.20")
    assert not result.pending and not result.unattributed_pending


@pytest.mark.django_db
def test_a_cost_line_of_a_model_without_rows_waits_while_its_day_settles() -> None:
    account = ProviderAccount.objects.create(
        name="openai-emb2", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )
    recon(account, D1, "gpt-r", "output", ours=5, theirs=None, status="pending")
    cost(account, D1, "2.50", line_item="text-embedding-3-small, input")
    cost(account, D2, "0.40", line_item="text-embedding-3-small, input")  # no rows at all
    result = account_costs(
        account=account,
        start=D1,
        end=date(2026, 10, 7),
        forwarded=[Fwd(D1, "gpt-r", T1, "r", output_tokens=5)],
    )
    assert result.pending == {
        (D1, "gpt-r"),
        (D1, "text-embedding-3-small"),
        (D2, "text-embedding-3-small"),
    }
    assert result.unattributed == 0 and result.unattributed_pending


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@given(
    counts=st.tuples(*[st.integers(min_value=0, max_value=10**9) for _ in range(5)]),
    requests=st.integers(min_value=0, max_value=10**6),
)
def test_tenant_class_tokens_are_reconciliations_classes_and_lose_no_token(
    provider: str, counts: tuple[int, int, int, int, int], requests: int
) -> None:
    """One table: billing's weights are `compare.ours_of` of each class the provider
    counts, and every forwarded token is in exactly one of them."""
    row = Fwd(D1, "m", T1, "a", *counts, requests=requests)
    tokens = tenant_class_tokens(row, provider=provider)
    ours = Ours(requests, *counts)
    vendor = Provider(provider)
    assert tokens == {c: ours_of(vendor, ours, c) for c in tokens}
    assert sum(tokens.values()) == sum(counts)
    assert TokenClass.REQUESTS not in tokens
    assert (TokenClass.CACHE_WRITE in tokens) == (provider == "anthropic")
