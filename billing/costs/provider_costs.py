"""Actual provider cost of resold routes: a provider's reported cost, allocated to tenants.

For a route served through a provider account, the margin report shows what the provider
actually charged beside the list-price estimate stamped on the records. The cost report
is per account, UTC day, model and token type, not per tenant, so it is allocated:

1. **Units.** Each cost row (`ProviderCostBucket`, daily) is one line: its exact amount
   (`amount_usd_from_text` of its `amount_text`: SQLite keeps `amount_usd` as a float),
   its UTC day (`bucket_start`), its model (the row's `model` as the importer stored it,
   mapped through the account's `model_map` to our `upstream_model`; the importer is the
   one parser of OpenAI's line items, and a line item it could not read has no model) and
   its token class (`token_class_of` of the stored `token_type`, then
   `metering.reconcile.compare.provider_class`: OpenAI has no cache-write class; unknown
   or absent -> none).
2. **Weights by token class.** A line of class k on (day, model) goes to each payer, a
   (tenant, alias, accelerator) of the account's rollups, that forwarded that model that day in proportion to its tokens of class k, in
   the provider's terms (`metering.reconcile.compare.provider_tokens`, reconciliation's
   table: output is visible + reasoning; for OpenAI, uncached input includes cache
   writes). With ours = the tenants' total of class k and
   theirs = the report's (the reconciliation row's `theirs`: the row summed over keys, or
   the sum of the per-key rows when there is none):
   - theirs <= ours, or not reported: the shares are normalised to ours (each tenant pays
     cost x tokens / ours; nothing is unattributed);
   - theirs > ours: each tenant pays cost x tokens / theirs, and cost x (theirs - ours) /
     theirs is **unattributed** (usage we never forwarded: a leak, drift). It is reported
     on a line of its own per account and never spread onto tenants;
   - ours = 0: the whole line is unattributed.
3. **Lines without a token class** (tool and search fees, unknown types) are split by each
   payer's list-price cost (`serving_cost_usd`) of that model and day; when that
   is zero everywhere, by their total tokens; when nobody forwarded the model that day,
   the line is unattributed. A line whose model cannot be told is unattributed.
4. **Exact.** Amounts are Decimal with at most 24 places (the column's). A line is split
   by the largest remainder in units of 1e-24: every part is floored to a unit, then the
   units left over go one each to the parts with the largest remainders (ties: the earlier
   part), so the parts sum to the line's amount exactly and none is negative (a negative
   amount, a credit, splits the same way with every part negative or zero).
5. **Pending.** A (day, model) is pending while the account's day has no reconciliation
   row, or any row of the day is `pending` (the day's report is still settling; a
   `missing_in_ledger` row shows before its day settles, so the day, not the group,
   decides), or we forwarded the model that day and reconciliation has no row for it yet.
   Its cost is then unknown: the allocation carries no amounts for it and the margin
   report shows null. On a settled day, a cost line of a model with no reconciliation row
   and no usage of ours (embeddings, images: not in the usage report) is unattributed.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from typing import Protocol

from metering.calendar import month_day
from metering.models import ProviderAccount, ProviderCostBucket, ReconciliationRow
from metering.providers.reports import amount_usd_from_text
from metering.reconcile.compare import Ours, TokenClass, provider_class, provider_tokens
from metering.reconcile.ours import forwarded_usage

QUANTUM_PLACES = 24  # ProviderCostBucket.amount_usd and the rollups' serving costs
# Sums and scalings of 44-digit amounts are exact here (the default context keeps 28
# digits); an inexact result raises instead of rounding silently.
EXACT = Context(prec=200, traps=[Inexact, InvalidOperation])

Payer = tuple[uuid.UUID, str, str]  # (tenant id, alias, accelerator)


class Forwarded(Protocol):
    """What the ledger forwarded for one (day, upstream model, tenant, alias, accelerator)
    of an account (`metering.reconcile.ours.ForwardedRow`)."""

    @property
    def day(self) -> date: ...
    @property
    def upstream_model(self) -> str: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def alias(self) -> str: ...
    @property
    def accelerator(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def serving_cost_usd(self) -> Decimal: ...


# --- pure: the exact split -----------------------------------------------------------------


def _integers(weights: Sequence[int | Decimal]) -> list[int]:
    """Non-negative weights as integers in the same proportions (Decimals scaled by a
    common power of ten, exactly)."""
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    places = max(
        (
            -int(Decimal(w).as_tuple().exponent)
            for w in weights
            if isinstance(w, Decimal) and int(w.as_tuple().exponent) < 0
        ),
        default=0,
    )
    return [int(Decimal(w).scaleb(places)) for w in weights]


def split_exact(amount: Decimal, weights: Sequence[int | Decimal]) -> list[Decimal]:
    """`amount` split in proportion to `weights` (not all zero) by the largest remainder
    in units of 1e-24: the parts sum to `amount` exactly and share its sign."""
    with localcontext(EXACT):
        return _split_exact(amount, weights)


def _split_exact(amount: Decimal, weights: Sequence[int | Decimal]) -> list[Decimal]:
    units_exact = Decimal(amount).scaleb(QUANTUM_PLACES)
    if units_exact != units_exact.to_integral_value():
        raise ValueError(f"{amount} has more than {QUANTUM_PLACES} decimal places")
    units, sign = abs(int(units_exact)), (-1 if amount < 0 else 1)
    scaled = _integers(weights)
    total = sum(scaled)
    if total == 0:
        raise ValueError("weights must not all be zero")
    floors = [units * w // total for w in scaled]
    remainders = [units * w % total for w in scaled]
    left = units - sum(floors)
    # the units left over go to the largest remainders; ties to the earlier part
    for i in sorted(range(len(scaled)), key=lambda i: (-remainders[i], i))[:left]:
        floors[i] += 1
    return [Decimal(sign * f).scaleb(-QUANTUM_PLACES) for f in floors]


# --- pure: token classes -------------------------------------------------------------------


def token_class_of(token_type: str) -> TokenClass | None:
    """Our reconciliation class of a cost row's token type, or None (split by list price).

    Liberal: Anthropic's `uncached_input_tokens`, `cache_read_input_tokens`,
    `output_tokens`, `cache_creation.ephemeral_5m_input_tokens` (and 1h, and the flat
    `cache_creation_5m_input_tokens` forms); OpenAI's parsed line-item types such as
    "input", "cached input", "output", in any case and with `_`, `.` or `-` for spaces.
    Audio and anything else unknown -> None."""
    words = " ".join(
        token_type.lower().replace("_", " ").replace(".", " ").replace("-", " ").split()
    )
    if not words or "audio" in words or "image" in words:
        return None
    if "uncached" in words:
        return TokenClass.INPUT_UNCACHED
    if "cache" in words and any(w in words for w in ("creation", "write", "ephemeral")):
        return TokenClass.CACHE_WRITE
    if "cache" in words and any(w in words for w in ("read", "cached", "hit")):
        return TokenClass.CACHE_READ
    if "output" in words or "completion" in words:
        return TokenClass.OUTPUT
    if "input" in words or "prompt" in words:
        return TokenClass.INPUT_UNCACHED
    return None


def tenant_class_tokens(row: Forwarded, *, provider: str) -> dict[TokenClass, int]:
    """A forwarded row's tokens in the provider's classes (reconciliation's table)."""
    ours = Ours(
        requests=row.requests,
        input_tokens=row.input_tokens,
        cached_input_tokens=row.cached_input_tokens,
        cache_write_tokens=row.cache_write_tokens,
        output_tokens=row.output_tokens,
        reasoning_tokens=row.reasoning_tokens,
    )
    return provider_tokens(provider, ours)


# --- pure: one (day, model) ----------------------------------------------------------------


@dataclass(frozen=True)
class CostLine:
    """One cost row, resolved: its amount, and its class (None: split by list price)."""

    amount_usd: Decimal
    token_class: TokenClass | None


@dataclass(frozen=True)
class Use:
    """One payer's use of a model on a day, in the provider's classes."""

    payer: Payer
    tokens: Mapping[TokenClass, int]
    list_cost_usd: Decimal


@dataclass
class Shares:
    """The allocation of one (day, model)'s cost lines: exact parts per payer, and what
    stays unattributed. The parts and `unattributed` sum to the lines' amounts exactly."""

    parts: dict[Payer, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    unattributed: Decimal = Decimal(0)


def allocate(
    *, lines: Iterable[CostLine], uses: Sequence[Use], theirs: Mapping[str, int | None]
) -> Shares:
    """Allocate one (account, day, model)'s cost lines to its payers (see the module doc)."""
    with localcontext(EXACT):
        return _allocate(lines=lines, uses=uses, theirs=theirs)


def _allocate(
    *, lines: Iterable[CostLine], uses: Sequence[Use], theirs: Mapping[str, int | None]
) -> Shares:
    shares = Shares()
    for line in lines:
        if line.token_class is not None:
            weights: list[int | Decimal] = [u.tokens.get(line.token_class, 0) for u in uses]
            ours = sum(int(w) for w in weights)
            reported = theirs.get(line.token_class)
            beyond = reported - ours if reported is not None and reported > ours else 0
        else:
            weights = [u.list_cost_usd for u in uses]
            if not any(weights):
                weights = [sum(u.tokens.values()) for u in uses]
            beyond = 0
        if not any(weights):
            shares.unattributed += line.amount_usd
            continue
        *parts, rest = split_exact(line.amount_usd, [*weights, beyond])
        for use, part in zip(uses, parts, strict=True):
            shares.parts[use.payer] += part
        shares.unattributed += rest
    return shares


# --- reads -------------------------------------------------------------------------------


@dataclass
class AccountCosts:
    """One account's actual costs over some days: the exact parts per payer (tenant,
    alias, accelerator) of the settled (day, model)s, what stays unattributed, and which (day, model)s
    are pending (their costs are not in the sums)."""

    account: ProviderAccount
    parts: dict[Payer, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    # The list-price estimate of what each payer forwarded on this account (all days).
    estimates: dict[Payer, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    unattributed: Decimal = Decimal(0)
    pending: set[tuple[date, str]] = field(default_factory=set)
    # Some cost not allocated yet may add to `unattributed` (a pending (day, model) with
    # cost lines, or a line with no model on a day not settled).
    unattributed_pending: bool = False
    # The (day, model)s each payer forwarded: a payer with a pending one has no actual cost.
    used: dict[Payer, set[tuple[date, str]]] = field(default_factory=lambda: defaultdict(set))
    # The report had cost rows in the days read.
    has_costs: bool = False

    def payer_pending(self, payer: Payer) -> bool:
        return bool(self.used[payer] & self.pending)


def account_costs(
    *, account: ProviderAccount, start: date, end: date, forwarded: Iterable[Forwarded]
) -> AccountCosts:
    """Allocate the account's reported costs of the UTC days [start, end) to the payers
    in `forwarded` (the account's `forwarded_usage` over the same days)."""
    with localcontext(EXACT):
        return _account_costs(account=account, start=start, end=end, forwarded=forwarded)


def _account_costs(
    *, account: ProviderAccount, start: date, end: date, forwarded: Iterable[Forwarded]
) -> AccountCosts:
    result = AccountCosts(account=account)
    uses: dict[tuple[date, str], list[Use]] = defaultdict(list)
    for row in forwarded:
        payer = (row.tenant_id, row.alias, row.accelerator)
        uses[(row.day, row.upstream_model)].append(
            Use(
                payer=payer,
                tokens=tenant_class_tokens(row, provider=account.provider),
                list_cost_usd=Decimal(row.serving_cost_usd),
            )
        )
        result.estimates[payer] += Decimal(row.serving_cost_usd)
        result.used[payer].add((row.day, row.upstream_model))

    theirs: dict[tuple[date, str], dict[str, int | None]] = defaultdict(dict)
    keyed: dict[tuple[date, str, str], list[int | None]] = defaultdict(list)
    summed: set[tuple[date, str, str]] = set()
    rows_of: set[tuple[date, str]] = set()
    day_pending: set[date] = set()
    for day, model, key, token_class, reported, status in ReconciliationRow.objects.filter(
        account=account, day__gte=start, day__lt=end
    ).values_list("day", "upstream_model", "api_key_id", "token_class", "theirs", "status"):
        rows_of.add((day, model))
        if status == ReconciliationRow.Status.PENDING:
            day_pending.add(day)
        if key == "":
            theirs[(day, model)][token_class] = reported
            summed.add((day, model, token_class))
        else:
            keyed[(day, model, token_class)].append(reported)
    for (day, model, token_class), values in keyed.items():
        if (day, model, token_class) not in summed:
            known = [v for v in values if v is not None]
            theirs[(day, model)][token_class] = sum(known) if known else None
    # The report of a day in its settling window may still change: every (day, model)
    # of such a day is pending (a missing_in_ledger row shows before the day settles, so
    # a group of that day may have no pending row of its own).
    result.pending |= {(day, model) for day, model in rows_of if day in day_pending}
    for day_model in uses:
        if day_model not in rows_of:
            result.pending.add(day_model)  # not reconciled yet

    days_reconciled = {d for d, _ in rows_of}
    lines: dict[tuple[date, str], list[CostLine]] = defaultdict(list)
    for bucket in ProviderCostBucket.objects.filter(
        account=account,
        bucket_start__gte=month_day(start.year, start.month, start.day),
        bucket_start__lt=month_day(end.year, end.month, end.day),
    ).order_by("bucket_start", "id"):
        day = bucket.bucket_start.astimezone(UTC).date()
        result.has_costs = True
        day_settled = day in days_reconciled and day not in day_pending
        line_type = token_class_of(bucket.token_type)
        line = CostLine(
            amount_usd_from_text(provider=account.provider, amount_text=bucket.amount_text),
            None if line_type is None else provider_class(account.provider, line_type),
        )
        name = bucket.model  # the importer's reading; blank: it could not tell the model
        if not name:  # no model to charge it to: the account's, unattributed
            if day_settled:
                result.unattributed += line.amount_usd
            else:
                result.unattributed_pending = True
            continue
        model = str(account.model_map.get(name, name)) if account.model_map else name
        if (day, model) not in rows_of and not day_settled:
            result.pending.add((day, model))
        lines[(day, model)].append(line)

    for day_model, its_lines in sorted(lines.items()):
        if day_model in result.pending:
            result.unattributed_pending = True
            continue
        shares = allocate(lines=its_lines, uses=uses.get(day_model, []), theirs=theirs[day_model])
        for payer, part in shares.parts.items():
            result.parts[payer] += part
        result.unattributed += shares.unattributed
    return result


def provider_costs(*, start: date, end: date) -> list[AccountCosts]:
    """Every provider account's actual costs of the UTC days [start, end), allocated to
    what each (tenant, alias, accelerator) forwarded on it (`forwarded_usage`, from the rollups);
    accounts with neither usage nor cost in those days are left out. By account name."""
    found = []
    for account in ProviderAccount.objects.order_by("name"):
        costs = account_costs(
            account=account,
            start=start,
            end=end,
            forwarded=forwarded_usage(account_id=account.pk, start=start, end=end),
        )
        if costs.used or costs.has_costs:
            found.append(costs)
    return found
