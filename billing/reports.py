"""Finance reports: revenue as rated, serving cost and gross margin by tenant, alias,
accelerator type and period, with the share of cost caused by hidden reasoning; and the
what-if that re-prices a past period on another accelerator type or margin policy.

Reports cover USD plans (costs are USD; no exchange rates are kept) and calendar months,
which are the billing periods of subscriptions anchored on day 1; a tenant anchored on
another day is rated over the month as if it were its period.

Revenue is the period's rating (the invoice's figures for a closed period) allocated to
(tenant, alias, accelerator) in proportion to the tokens each contributed to a line;
fees that belong to no alias (base fee, minimum true-up) are reported under "(fees)".
Each line's exact amount is split exactly, the remainder going to the last share.
Costs are the exact serving costs stamped on the records (summed in rollups).

Grouped by `target` (decision 0117), rows split by the rollups' route_id, named
"<alias>/<target>"; usage folded before routing (route 0) is "(before routing)". A line's
revenue is split by tokens across targets exactly as across accelerators.

Routes served through a provider account (resold) also show the provider's actual cost:
`provider_cost_usd` is the reported cost allocated to the (tenant, alias, accelerator)s
of the account's rollups (billing.costs.provider_costs states how), onto exactly those
rows, `provider_cost_difference_usd` that minus the
list-price estimate of the same usage (the resold part of `cost_usd`). Both are None for
a row with no resold usage, and while any (day, model) of the row's resold usage is still
pending reconciliation. Reported cost beyond what we forwarded is never spread onto
tenants: each account has an "(unattributed)" row of its own. Routes on our own
accelerators keep the hardware cost basis alone, even an alias that moved between our
accelerators and a provider in the period (its hardware rows are no account's).
"""

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, localcontext

from django.core.cache import cache

from billing.costs.catalogue import (
    CannotPrice,
    accelerator_get,
    catalogue_csv_read,
    class_costs_of,
    cost_basis_in_force,
    deployment_in_force,
)
from billing.costs.margins import Margins, floor_price, gross_margin, margin_policy_in_force
from billing.costs.provider_costs import EXACT, provider_costs, split_exact
from billing.models import Deployment, Subscription
from billing.period_rating import period_rate
from billing.pricing.periods import Period
from billing.pricing.rate import RatedLine
from config.errors import ApplicationError, NotFound
from metering.calendar import month_start
from metering.ledger.record import Rates, serving_cost
from metering.models import Route, Tenant
from metering.selectors import ServedTotals, rollups_fingerprint, served_totals
from metering.usage import TOKEN_CLASSES

FEES = "(fees)"
UNATTRIBUTED = "(unattributed)"
BEFORE_ROUTING = "(before routing)"
GROUPINGS = ("tenant", "alias", "accelerator", "target")
# Divisions (shares of an amount) round to 28 significant digits; sums run in EXACT.
ROUNDED = Context(prec=28)
DEFAULT_GROUPING = ("tenant", "alias", "accelerator")


@dataclass
class MarginRow:
    key: tuple[str, ...]
    revenue_usd: Decimal = Decimal(0)
    cost_usd: Decimal = Decimal(0)  # the estimate: serving cost stamped on the records
    reasoning_cost_usd: Decimal = Decimal(0)
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # "usage" (fees included), or "unattributed": provider cost beyond what we forwarded
    kind: str = "usage"
    # Resold usage: the provider's actual cost allocated to the row, the list-price
    # estimate of the same usage, and whether some of it is still pending.
    resold: bool = False
    provider_actual_usd: Decimal = Decimal(0)
    provider_estimate_usd: Decimal = Decimal(0)
    provider_pending: bool = False
    # Revenue per pricing token class the rated lines counted (sums to revenue_usd less
    # lines of no token class): what a token of each class earned.
    revenue_by_class: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    @property
    def gross_margin(self) -> Decimal | None:
        return gross_margin(self.revenue_usd, self.cost_usd)

    @property
    def provider_cost_usd(self) -> Decimal | None:
        """The provider's reported cost of the row's resold usage; None when it has none
        or some of it is still pending."""
        if not self.resold or self.provider_pending:
            return None
        return self.provider_actual_usd

    @property
    def provider_cost_difference_usd(self) -> Decimal | None:
        """Actual minus the list-price estimate of the same (resold) usage."""
        actual = self.provider_cost_usd
        if actual is None:
            return None
        with localcontext(EXACT):
            return actual - self.provider_estimate_usd

    @property
    def reasoning_share_of_cost(self) -> Decimal | None:
        return None if self.cost_usd == 0 else self.reasoning_cost_usd / self.cost_usd


def _line_classes(line: RatedLine) -> list[str]:
    classes = [line.token_class or ""]
    if line.reasoning_tokens:
        classes.append("reasoning")  # reasoning folded into this output line
    return classes


def _line_weights(line: RatedLine, served: list[ServedTotals]) -> list[tuple[ServedTotals, int]]:
    classes = _line_classes(line)
    weights = [
        (s, sum(s.tokens.get(c, 0) for c in classes)) for s in served if s.alias in line.aliases
    ]
    return [(s, w) for s, w in weights if w > 0]


def _split(amount: Decimal, weights: list[int]) -> list[Decimal]:
    """`amount` in proportion to `weights`: each part to 28 significant digits, the last
    the exact rest, so the parts sum to `amount` exactly."""
    total = sum(weights)
    shares = [ROUNDED.divide(EXACT.multiply(amount, w), total) for w in weights[:-1]]
    with localcontext(EXACT):
        return [*shares, amount - sum(shares, Decimal(0))]


def target_label(route_id: int, names: dict[int, tuple[str, str]]) -> str:
    """A target as the report names it: "<alias>/<target>"; route 0 (usage folded before
    routing) is BEFORE_ROUTING, a route no longer known "(route <id>)"."""
    if route_id == 0:
        return BEFORE_ROUTING
    if route_id not in names:
        return f"(route {route_id})"
    alias, name = names[route_id]
    return f"{alias}/{name}"


def target_names(route_ids: set[int]) -> dict[int, tuple[str, str]]:
    """route id -> (alias, target name) of the targets that exist."""
    return {
        pk: (str(alias), name)  # the alias column holds the alias's name (to_field)
        for pk, alias, name in Route.objects.filter(pk__in=route_ids).values_list(
            "pk", "alias", "name"
        )
    }


def _check_grouping(group_by: tuple[str, ...]) -> None:
    bad = [g for g in group_by if g not in GROUPINGS]
    if bad or not group_by:
        raise ApplicationError(f"group_by takes {', '.join(GROUPINGS)}.")


@dataclass(frozen=True)
class RevenueShare:
    """A part of a period's rated revenue: a line's share earned by one served row (in
    proportion to the tokens of the classes the line counted), or a fee of no alias."""

    tenant_id: uuid.UUID
    served: ServedTotals | None  # None: a fee (base fee, minimum true-up)
    classes: tuple[str, ...]  # the token classes the line counted
    weight: int  # the served row's tokens of those classes
    amount_usd: Decimal


def revenue_shares(*, period: Period, served: list[ServedTotals]) -> list[RevenueShare]:
    """Each USD tenant's rating of `period` split over `served` (its rows of the period):
    the one revenue allocation of the margin report and the margin series.

    The ratings run under a fresh default context, never the caller's: rating divides
    (a subscription's share of a prorated period), which EXACT would trap as Inexact;
    callers sum the shares in EXACT afterwards."""
    by_tenant: dict[uuid.UUID, list[ServedTotals]] = defaultdict(list)
    for s in served:
        by_tenant[s.tenant_id].append(s)
    tenants = set(
        Subscription.objects.filter(starts_at__lt=period.end).values_list("tenant_id", flat=True)
    )
    ratings = []
    with localcontext(Context()):  # the default context, as invoices are rated
        for tenant_id in sorted(tenants | set(by_tenant), key=str):
            try:
                rating = period_rate(tenant_id=tenant_id, period=period)
            except NotFound:
                continue
            if rating.currency == "USD":  # costs are USD and no exchange rates are kept
                ratings.append((tenant_id, rating))
    shares = []
    for tenant_id, rating in ratings:
        for line in rating.lines:
            weights = _line_weights(line, by_tenant[tenant_id]) if line.kind == "usage" else []
            if not weights:
                if line.amount_exact:
                    shares.append(RevenueShare(tenant_id, None, (), 0, line.amount_exact))
                continue
            classes = tuple(_line_classes(line))
            for (s, weight), share in zip(
                weights, _split(line.amount_exact, [w for _, w in weights]), strict=True
            ):
                shares.append(RevenueShare(tenant_id, s, classes, weight, share))
    return shares


def margin_report(
    *, period: Period, group_by: tuple[str, ...] = ("tenant", "alias", "accelerator")
) -> list[MarginRow]:
    _check_grouping(group_by)
    served = served_totals(start=period.start, end=period.end)
    names = target_names({s.route_id for s in served}) if "target" in group_by else {}
    rows: dict[tuple[str, ...], MarginRow] = {}

    def row_for(tenant_id: uuid.UUID, alias: str, accelerator: str, target: str) -> MarginRow:
        key = group_key(group_by, tenant_id, alias, accelerator, target)
        return rows.setdefault(key, MarginRow(key))

    def served_row(s: ServedTotals) -> MarginRow:
        return row_for(s.tenant_id, s.alias, s.accelerator, target_label(s.route_id, names))

    shares = revenue_shares(period=period, served=served)  # rated outside EXACT
    with localcontext(EXACT):  # sums of exact amounts stay exact (only divisions round)
        for s in served:
            row = served_row(s)
            row.cost_usd += s.serving_cost_usd
            row.reasoning_cost_usd += s.reasoning_cost_usd
            for token_class, n in s.tokens.items():
                row.tokens[token_class] += n
        for share in shares:
            if share.served is None:
                row_for(share.tenant_id, FEES, FEES, FEES).revenue_usd += share.amount_usd
                continue
            row = served_row(share.served)
            row.revenue_usd += share.amount_usd
            # The share per token class the line counted (the what-if re-route's
            # realized prices): a folded output line covers output and reasoning.
            for token_class in share.classes:
                n = share.served.tokens.get(token_class, 0)
                if n:
                    row.revenue_by_class[token_class] += ROUNDED.divide(
                        EXACT.multiply(share.amount_usd, n), share.weight
                    )
    _add_provider_costs(
        group_by,
        rows,
        start=period.start.astimezone(UTC).date(),
        end=period.end.astimezone(UTC).date(),
        served=served,
        names=names,
    )
    return sorted(rows.values(), key=lambda r: r.key)


def group_key(
    group_by: tuple[str, ...], tenant_id: uuid.UUID, alias: str, accelerator: str, target: str
) -> tuple[str, ...]:
    values = {
        "tenant": str(tenant_id),
        "alias": alias,
        "accelerator": accelerator,
        "target": target,
    }
    return tuple(values[g] for g in group_by)


SERIES_GRANULARITIES = ("day", "month")


@dataclass
class MarginCell:
    """Margins of one group in one bucket of a margin series (every amount exact)."""

    start: datetime  # the bucket: a UTC day, or the first day of a calendar month
    group: str  # "" in the totals of a bucket
    revenue_usd: Decimal = Decimal(0)
    cost_usd: Decimal = Decimal(0)  # serving cost stamped on the records
    reasoning_cost_usd: Decimal = Decimal(0)

    @property
    def gross_margin_usd(self) -> Decimal:
        with localcontext(EXACT):
            return self.revenue_usd - self.cost_usd

    @property
    def other_cost_usd(self) -> Decimal:
        """Serving cost of every class but hidden reasoning."""
        with localcontext(EXACT):
            return self.cost_usd - self.reasoning_cost_usd

    @property
    def gross_margin(self) -> Decimal | None:
        return gross_margin(self.revenue_usd, self.cost_usd)

    @property
    def reasoning_share_of_cost(self) -> Decimal | None:
        return None if self.cost_usd == 0 else self.reasoning_cost_usd / self.cost_usd


@dataclass(frozen=True)
class MarginSeries:
    buckets: list[datetime]  # every bucket of the window, oldest first
    rows: list[MarginCell]  # (bucket, group) with usage or revenue, by bucket then group
    totals: list[MarginCell]  # one per bucket (all groups), zero where nothing happened
    group_labels: dict[str, str]  # group -> what people read (a tenant's name)


def margin_series(
    *, since: datetime, until: datetime, granularity: str = "day", group_by: str = "accelerator"
) -> MarginSeries:
    """The margin report over time: revenue, serving cost and reasoning cost per bucket
    (UTC day or calendar month) of [since, until) (whole UTC days) and group.

    Each month's rating is allocated exactly as `margin_report` allocates it (the same
    `revenue_shares` over the same rows), then each row's share is spread over the days
    the row served, in proportion to its tokens of the line's classes; a fee of no alias
    accrues evenly over its month's days. Every split gives the exact rest to its last
    part, so the buckets of a whole month sum exactly to `margin_report` for that month
    (its usage rows: the provider's reported cost is the monthly report's alone)."""
    if group_by not in GROUPINGS:
        raise ApplicationError(f"group_by takes one of {', '.join(GROUPINGS)}.")
    if granularity not in SERIES_GRANULARITIES:
        raise ApplicationError(f"granularity takes {' or '.join(SERIES_GRANULARITIES)}.")
    if any(
        t != t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        for t in (since, until)
    ):
        raise ApplicationError("since and until are whole UTC days.")
    if since >= until:
        raise ApplicationError("since must be before until.")

    def bucket_of(day: datetime) -> datetime:
        return month_start(day) if granularity == "month" else day

    buckets = sorted({bucket_of(d) for d in _days(since, until)})
    cells: dict[tuple[datetime, str], MarginCell] = {}
    totals = {b: MarginCell(b, "") for b in buckets}
    months: list[DayMargins] = []
    month = month_start(since)
    while month < until:  # computed outside EXACT (rating divides), summed in it
        period = Period(month, month_start(month + timedelta(days=32)))
        month = period.end
        months.append(month_margins(period=period, group_by=group_by))
    with localcontext(EXACT):
        for margins in months:
            for (day, group), (revenue, cost, reasoning) in margins.items():
                if not since <= day < until:
                    continue
                bucket = bucket_of(day)
                for cell in (
                    cells.setdefault((bucket, group), MarginCell(bucket, group)),
                    totals[bucket],
                ):
                    cell.revenue_usd += revenue
                    cell.cost_usd += cost
                    cell.reasoning_cost_usd += reasoning
    rows = sorted(cells.values(), key=lambda c: (c.start, c.group))
    return MarginSeries(
        buckets=buckets,
        rows=rows,
        totals=[totals[b] for b in buckets],
        group_labels=_group_labels(group_by, {c.group for c in rows}),
    )


# A month's margins per day are kept this long under the fingerprint of what they were
# computed from (its rollups, the subscriptions that may cover it): a written rollup, or
# a subscription created, deleted or edited in place (its dates, plan version, anchor),
# changes the key, so the time bounds only what no fingerprint sees (a target renamed).
MONTH_MARGINS_SECONDS = 600
DayMargins = dict[tuple[datetime, str], tuple[Decimal, Decimal, Decimal]]


def subscriptions_fingerprint(*, period: Period) -> str:
    """A digest of every field rating reads of the subscriptions starting before the end
    of `period` (one row per tenant and plan change: small). Any edit of such a row, or
    one moved into or out of that set, changes it."""
    digest = hashlib.blake2b(digest_size=16)
    for row in (
        Subscription.objects.filter(starts_at__lt=period.end)
        .order_by("pk")
        .values_list("pk", "tenant_id", "plan_version_id", "starts_at", "ends_at", "anchor_day")
    ):
        digest.update(repr(row).encode())
    return digest.hexdigest()


def month_margins(*, period: Period, group_by: str) -> DayMargins:
    """(UTC day, group) -> (revenue, serving cost, reasoning cost) of a calendar month,
    exact: `margin_series`'s unit of work, cached (see MONTH_MARGINS_SECONDS)."""
    fingerprint = (
        *rollups_fingerprint(start=period.start, end=period.end),
        subscriptions_fingerprint(period=period),
    )
    key = f"billing.month_margins:{period.start:%Y-%m}:{group_by}:" + ":".join(
        map(str, fingerprint)
    )
    found: DayMargins | None = cache.get(key)
    if found is None:
        found = _month_margins(period=period, group_by=group_by)
        cache.set(key, found, MONTH_MARGINS_SECONDS)
    return found


def _month_margins(*, period: Period, group_by: str) -> DayMargins:
    grouping = (group_by,)
    daily = served_totals(start=period.start, end=period.end, by_day=True)
    names = target_names({s.route_id for s in daily}) if group_by == "target" else {}
    out: dict[tuple[datetime, str], list[Decimal]] = {}

    def add(day: datetime, group: str, index: int, amount: Decimal) -> None:
        out.setdefault((day, group), [Decimal(0)] * 3)[index] += amount

    served, days_of = _undaily(daily)
    shares = revenue_shares(period=period, served=served)  # rated outside EXACT
    with localcontext(EXACT):
        for d in daily:
            assert d.day is not None
            add(d.day, _group_of(grouping, d, names), 1, d.serving_cost_usd)
            add(d.day, _group_of(grouping, d, names), 2, d.reasoning_cost_usd)
        month_days = _days(period.start, period.end)
        for share in shares:
            if share.served is None:
                fees = group_key(grouping, share.tenant_id, FEES, FEES, FEES)[0]
                parts = _split(share.amount_usd, [1] * len(month_days))
                for day, part in zip(month_days, parts, strict=True):
                    add(day, fees, 0, part)
                continue
            spread = [
                (d, sum(d.tokens.get(c, 0) for c in share.classes))
                for d in days_of[_served_key(share.served)]
            ]
            spread = [(d, w) for d, w in spread if w > 0]
            parts = _split(share.amount_usd, [w for _, w in spread])
            for (d, _), part in zip(spread, parts, strict=True):
                assert d.day is not None
                add(d.day, _group_of(grouping, d, names), 0, part)
    return {key: (v[0], v[1], v[2]) for key, v in out.items()}


def _group_of(grouping: tuple[str], s: ServedTotals, names: dict[int, tuple[str, str]]) -> str:
    label = target_label(s.route_id, names) if grouping == ("target",) else ""
    return group_key(grouping, s.tenant_id, s.alias, s.accelerator, label)[0]


def _days(start: datetime, end: datetime) -> list[datetime]:
    out, day = [], start
    while day < end:
        out.append(day)
        day += timedelta(days=1)
    return out


def _served_key(s: ServedTotals) -> tuple[uuid.UUID, str, str, int]:
    return (s.tenant_id, s.alias, s.accelerator, s.route_id)


def _undaily(
    daily: list[ServedTotals],
) -> tuple[list[ServedTotals], dict[tuple[uuid.UUID, str, str, int], list[ServedTotals]]]:
    """Rows read `by_day` summed over their days (exactly the rows `served_totals` reads
    without it, in its order), and each row's days."""
    days_of: dict[tuple[uuid.UUID, str, str, int], list[ServedTotals]] = {}
    for d in daily:
        days_of.setdefault(_served_key(d), []).append(d)
    served = []
    with localcontext(EXACT):  # the costs' sums stay exact
        for key, parts in days_of.items():
            tokens: dict[str, int] = defaultdict(int)
            for p in parts:
                for token_class, n in p.tokens.items():
                    tokens[token_class] += n
            served.append(
                ServedTotals(
                    tenant_id=key[0],
                    alias=key[1],
                    accelerator=key[2],
                    route_id=key[3],
                    tokens=dict(tokens),
                    serving_cost_usd=sum((p.serving_cost_usd for p in parts), Decimal(0)),
                    reasoning_cost_usd=sum((p.reasoning_cost_usd for p in parts), Decimal(0)),
                )
            )
    return served, days_of


def _group_labels(group_by: str, groups: set[str]) -> dict[str, str]:
    """What people read for each group: a tenant's name; other groups are their own."""
    if group_by != "tenant":
        return {g: g for g in groups}
    ids = []
    for g in groups:
        try:
            ids.append(uuid.UUID(g))
        except ValueError:
            pass
    names = {
        str(pk): name for pk, name in Tenant.objects.filter(pk__in=ids).values_list("pk", "name")
    }
    return {g: names.get(g, g) for g in groups}


def _add_provider_costs(
    group_by: tuple[str, ...],
    rows: dict[tuple[str, ...], MarginRow],
    *,
    start: date,
    end: date,
    served: list[ServedTotals],
    names: dict[int, tuple[str, str]],
) -> None:
    """Each account's actual cost, allocated per (tenant, alias, accelerator) of its
    rollups, onto exactly those rows: a route that moved from our own accelerators to a
    provider keeps the hardware cost basis on its hardware rows (they are no account's).
    Grouped by target, a payer's part goes to its targets on that account in proportion
    to their tokens (route 0 when none is known)."""

    def keyed(values: dict[str, str]) -> MarginRow:
        key = tuple(values[g] for g in group_by)
        return rows.setdefault(key, MarginRow(key))

    by_target = "target" in group_by
    accounts = (
        dict(
            Route.objects.filter(pk__in={s.route_id for s in served}).values_list(
                "pk", "provider_account_id"
            )
        )
        if by_target
        else {}
    )

    def targets_of(payer: tuple[uuid.UUID, str, str], account_id: int) -> list[tuple[str, int]]:
        if not by_target:
            return [("", 1)]
        found: dict[str, int] = defaultdict(int)
        for s in served:
            if (s.tenant_id, s.alias, s.accelerator) == payer and accounts.get(
                s.route_id
            ) == account_id:
                found[target_label(s.route_id, names)] += sum(s.tokens.values())
        parts = [(label, n) for label, n in sorted(found.items()) if n > 0]
        return parts or [(BEFORE_ROUTING, 1)]

    with localcontext(EXACT):  # sums of 24-place amounts: exact, never rounded to 28 digits
        for costs in provider_costs(start=start, end=end):
            for payer in sorted(costs.used, key=lambda p: (str(p[0]), p[1], p[2])):
                tenant_id, alias, accelerator = payer
                targets = targets_of(payer, costs.account.pk)
                actual, estimate = [costs.parts.get(payer, Decimal(0))], [costs.estimates[payer]]
                if len(targets) > 1:
                    weights = [w for _, w in targets]
                    actual = split_exact(actual[0], weights)
                    estimate = split_exact(estimate[0], weights)
                for (label, _), part, estimated in zip(targets, actual, estimate, strict=True):
                    row = keyed(
                        {
                            "tenant": str(tenant_id),
                            "alias": alias,
                            "accelerator": accelerator,
                            "target": label,
                        }
                    )
                    row.resold = True
                    row.provider_actual_usd += part
                    row.provider_estimate_usd += estimated
                    row.provider_pending = row.provider_pending or costs.payer_pending(payer)
            label = f"{UNATTRIBUTED} {costs.account.name}"
            row = keyed(
                {"tenant": UNATTRIBUTED, "alias": label, "accelerator": label, "target": label}
            )
            row.kind = "unattributed"
            row.resold = True
            row.provider_actual_usd += costs.unattributed
            row.provider_pending = row.provider_pending or costs.unattributed_pending


@dataclass(frozen=True)
class WhatIf:
    scope: str
    period: Period
    tokens: dict[str, int]
    revenue_usd: Decimal  # as rated (allocated to the scope)
    actual_cost_usd: Decimal  # stamped on the records
    alternative_accelerator: str
    alternative_cost_usd: Decimal
    alternative_class_costs: dict[str, dict[str, Decimal]]  # alias -> USD per 1M tokens
    floor_revenue_usd: Decimal  # alternative cost / (1 - minimum margin)
    target_revenue_usd: Decimal  # alternative cost / (1 - target margin)
    actual_margin: Decimal | None
    alternative_margin: Decimal | None
    policy: Margins


def whatif(
    *,
    period: Period,
    accelerator_key: str,
    tenant_id: uuid.UUID | None = None,
    alias: str | None = None,
    policy: Margins | None = None,
) -> WhatIf:
    """Re-price a past period's usage (one tenant, one alias, or both) on another
    accelerator type and/or margin policy, beside what it actually cost and earned."""
    accelerator = accelerator_get(accelerator_key)
    report = margin_report(period=period, group_by=("tenant", "alias", "accelerator"))
    selected = [
        r
        for r in report
        if r.key[1] != FEES
        and r.kind == "usage"
        and (tenant_id is None or r.key[0] == str(tenant_id))
        and (alias is None or r.key[1] == alias)
    ]
    if not selected:
        raise NotFound("No usage in that period for that scope.")
    tokens: dict[str, int] = defaultdict(int)
    for r in selected:
        for token_class, n in r.tokens.items():
            tokens[token_class] += n
    alternative = Decimal(0)
    class_costs: dict[str, dict[str, Decimal]] = {}
    for alias_name in sorted({r.key[1] for r in selected}):
        alias_tokens: dict[str, int] = defaultdict(int)
        for r in selected:
            if r.key[1] == alias_name:
                for token_class, n in r.tokens.items():
                    alias_tokens[token_class] += n
        costs = _alternative_costs(alias_name, accelerator_key, period.end)
        class_costs[alias_name] = costs._asdict()
        cost, _ = serving_cost(costs, **{c: alias_tokens[c] for c in TOKEN_CLASSES})
        alternative += cost
    policy = policy or margin_policy_in_force(accelerator_key=accelerator.key, at=period.end)
    if policy is None:
        policy = Margins(Decimal(0), Decimal(0))
    revenue = sum((r.revenue_usd for r in selected), Decimal(0))
    actual = sum((r.cost_usd for r in selected), Decimal(0))
    return WhatIf(
        scope=f"tenant={tenant_id or '*'} alias={alias or '*'}",
        period=period,
        tokens=dict(tokens),
        revenue_usd=revenue,
        actual_cost_usd=actual,
        alternative_accelerator=accelerator.key,
        alternative_cost_usd=alternative,
        alternative_class_costs=class_costs,
        floor_revenue_usd=floor_price(alternative, policy.minimum_margin),
        target_revenue_usd=floor_price(alternative, policy.target_margin),
        actual_margin=gross_margin(revenue, actual),
        alternative_margin=gross_margin(revenue, alternative),
        policy=policy,
    )


def _alternative_costs(alias: str, accelerator_key: str, at: datetime) -> Rates:
    """Per-class cost of serving `alias` on another accelerator type: its own deployment
    there if one was ever measured, else the current deployment's throughput scaled by the
    catalogue's decode figures of the two types."""
    accelerator = accelerator_get(accelerator_key)
    basis = cost_basis_in_force(accelerator=accelerator, at=at)
    if basis is None:
        raise CannotPrice(f"No cost basis for {accelerator_key}.")
    there = (
        Deployment.objects.filter(alias=alias, accelerator=accelerator).order_by("-version").first()
    )
    if there is not None:
        return class_costs_of(there, basis)
    current = deployment_in_force(alias=alias, at=at)
    if current is None:
        raise NotFound(f"{alias!r} has no deployment to compare with.")
    catalogue = {row.key: row for row in catalogue_csv_read()}
    here, target = catalogue.get(current.accelerator.key), catalogue.get(accelerator_key)
    if not (here and target and here.output_tokens_per_s and target.output_tokens_per_s):
        raise CannotPrice(
            f"No throughput of {alias!r} on {accelerator_key}, and the catalogue cannot scale it."
        )
    ratio = target.output_tokens_per_s / here.output_tokens_per_s
    scaled = Deployment(
        alias=alias,
        accelerator=accelerator,
        decode_tokens_per_s=None
        if current.decode_tokens_per_s is None
        else current.decode_tokens_per_s * ratio,
        prefill_tokens_per_s=None
        if current.prefill_tokens_per_s is None
        else current.prefill_tokens_per_s * ratio,
        utilization=current.utilization,
        cache_read_factor=current.cache_read_factor,
        cache_write_factor=current.cache_write_factor,
    )
    return class_costs_of(scaled, basis)
