"""What-if re-route (decision 0117): "had this alias's calls of a past period been routed
with policy X, what would they have cost and earned?"

Semantics, per alias and calendar month:
- The calls re-routed are the period's answered attempts on the alias's targets
  (RouteTargetHour, per UTC hour and reasoning effort). Failed attempts carry no tokens
  and no cost, and usage folded before routing (route 0) has no target: both stay out.
- Each (hour, effort) group goes where `metering.routing.policies.choose` sends it with
  every breaker closed: `fallback` to the first target by priority, `cheapest` to the
  lowest expected cost at the rates in force at period end, `effort` by the rules (the
  group's mean input size as the request size). `weighted` splits each group by the
  weights as exact shares (no random draw). Only active targets receive calls.
- A target serving a group gets the group's own input tokens (the requests do not
  change) and its learned output and reasoning per call for that effort: its
  RouteExpectation with at least MIN_SAMPLES samples, else its own mean over the period,
  else the alias's mean for that effort over the period.
- Cost is each target's serving cost rate at period end; revenue is the alias's realized
  revenue per token class in the period (margin_report: rated revenue per class / tokens
  of that class), so a target that spends more reasoning tokens earns more.
- Actual figures are the margin report's rows of each target. Per target, calls, tokens,
  cost and revenue are rounded once (calls by largest remainder, tokens to whole tokens,
  money to 12 places, half up); totals are sums of the rounded lines.
"""

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from billing.costs.catalogue import CannotPrice
from billing.costs.margins import gross_margin
from billing.pricing.periods import Period
from billing.reports import margin_report, target_label
from config.errors import ApplicationError, NotFound
from metering.ledger.record import Rates, serving_cost
from metering.models import Alias, Route, RouteExpectation
from metering.routing.policies import POLICIES, EffortRule, Features, choose, parse_rules
from metering.routing.stats import target_hours
from metering.selectors import current_cost_rates

MONEY = Decimal("0.000000000001")  # NUMERIC(38,12), as rated lines keep it
# Fewer samples than this and a learned expectation yields to the period's means (as the
# learner's own threshold: a new target is neither starved nor favoured blindly).
MIN_SAMPLES = 50
INPUT_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens")
OUTPUT_COLUMNS = ("output_tokens", "reasoning_tokens")
# ledger column -> pricing token class (the margin report's and the rates' names)
CLASS_OF = {
    "input_tokens": "input",
    "cached_input_tokens": "cache_read",
    "cache_write_tokens": "cache_write",
    "output_tokens": "output",
    "reasoning_tokens": "reasoning",
}


@dataclass(frozen=True)
class RerouteLine:
    """One target: what it actually served and what it would have under the policy."""

    route_id: int
    target: str
    is_active: bool
    actual_calls: int
    actual_cost_usd: Decimal
    actual_revenue_usd: Decimal
    rerouted_calls: int
    rerouted_tokens: dict[str, int]  # pricing token class -> tokens
    rerouted_cost_usd: Decimal
    rerouted_revenue_usd: Decimal

    @property
    def actual_margin(self) -> Decimal | None:
        return gross_margin(self.actual_revenue_usd, self.actual_cost_usd)

    @property
    def rerouted_margin(self) -> Decimal | None:
        return gross_margin(self.rerouted_revenue_usd, self.rerouted_cost_usd)


@dataclass(frozen=True)
class Reroute:
    alias: str
    period: Period
    policy: str
    weights: dict[str, int]  # the weights used (weighted only)
    rules: tuple[EffortRule, ...]  # the rules used (effort only)
    realized_revenue_per_million: dict[str, Decimal]  # token class -> USD per 1M tokens
    lines: tuple[RerouteLine, ...]

    def _sum(self, name: str) -> Any:
        return sum((getattr(line, name) for line in self.lines), Decimal(0))

    @property
    def actual_cost_usd(self) -> Decimal:
        return Decimal(self._sum("actual_cost_usd"))

    @property
    def actual_revenue_usd(self) -> Decimal:
        return Decimal(self._sum("actual_revenue_usd"))

    @property
    def rerouted_cost_usd(self) -> Decimal:
        return Decimal(self._sum("rerouted_cost_usd"))

    @property
    def rerouted_revenue_usd(self) -> Decimal:
        return Decimal(self._sum("rerouted_revenue_usd"))

    @property
    def calls(self) -> int:
        return sum(line.actual_calls for line in self.lines)

    @property
    def actual_margin(self) -> Decimal | None:
        return gross_margin(self.actual_revenue_usd, self.actual_cost_usd)

    @property
    def rerouted_margin(self) -> Decimal | None:
        return gross_margin(self.rerouted_revenue_usd, self.rerouted_cost_usd)


@dataclass(frozen=True, slots=True)
class _Target:
    """A target as `choose` reads it (policies.TargetLike)."""

    route_id: int
    target: str
    priority: int
    weight: int
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    policy: str
    rules: Sequence[EffortRule]
    max_attempts: int
    targets: Sequence[_Target]


class _AllHealthy:
    """A TargetView over the period: no breaker open, no target full, expected costs per
    call at the period-end rates, no latency learned (ties go to priority)."""

    def __init__(self, costs: Mapping[tuple[int, str], int | None]) -> None:
        self.costs = costs

    def is_open(self, route_id: int) -> bool:
        return False

    def saturated(self, route_id: int, max_concurrent: int | None) -> bool:
        return False

    def expected_cost_nano(self, route_id: int, effort: str, input_tokens: int) -> int | None:
        return self.costs.get((route_id, effort))

    def p50_latency_ms(self, route_id: int, effort: str) -> int | None:
        return None


def _rates_of(rate: Any) -> Rates:
    return Rates(
        rate.input_usd,
        rate.cache_read_usd,
        rate.cache_write_usd,
        rate.output_usd,
        rate.reasoning_usd,
    )


def _cost(rates: Rates, tokens: Mapping[str, Decimal | int]) -> Decimal:
    """Serving cost of (possibly fractional) tokens per ledger column, exact to 28 digits."""
    total = Decimal(0)
    for column, rate in zip(
        (*INPUT_COLUMNS, *OUTPUT_COLUMNS),
        (rates.input, rates.cache_read, rates.cache_write, rates.output, rates.reasoning),
        strict=True,
    ):
        total += Decimal(tokens.get(column, 0)) * rate
    return total / 1_000_000


def _largest_remainder(values: dict[int, Decimal]) -> dict[int, int]:
    """Whole calls per target summing to the rounded total (ties: the lower route id)."""
    total = int(sum(values.values(), Decimal(0)).to_integral_value(ROUND_HALF_UP))
    floors = {k: int(v) for k, v in values.items()}
    left = total - sum(floors.values())
    for k in sorted(values, key=lambda k: (-(values[k] - floors[k]), k))[: max(left, 0)]:
        floors[k] += 1
    return floors


MAX_WEIGHT_DIGITS = 9


def parse_weights(text: str) -> dict[str, int]:
    """ "h100:80,mi:20" -> {"h100": 80, "mi": 20}; ApplicationError on anything else.
    A weight is ASCII digits only (`"²".isdigit()` is True, yet `int("²")` raises) and at
    most nine of them."""
    weights: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition(":")
        value = value.strip()
        if not sep or not name.strip() or not (value.isascii() and value.isdigit()):
            raise ApplicationError("weights: use target:weight pairs, e.g. h100:80,mi:20.")
        if len(value) > MAX_WEIGHT_DIGITS:
            raise ApplicationError(f"weights: at most {MAX_WEIGHT_DIGITS} digits each.")
        weights[name.strip()] = int(value)
    return weights


def whatif_reroute(
    *,
    period: Period,
    alias: str,
    policy: str,
    weights: Mapping[str, int] | None = None,
    rules: list[Any] | None = None,
) -> Reroute:
    """Re-route the period's calls of `alias` with `policy` (see the module docstring)."""
    if policy not in POLICIES:
        raise ApplicationError(f"policy takes {', '.join(POLICIES)}.")
    found = None if "\x00" in alias else Alias.objects.filter(name=alias).first()
    if found is None:
        raise NotFound(f"No alias {alias!r}.")
    routes = list(Route.objects.filter(alias_id=alias).order_by("priority", "name", "pk"))
    active = [r for r in routes if r.is_active]
    if not active:
        raise ApplicationError(f"{alias!r} has no active target to route to.")
    names = {r.pk: (alias, r.name) for r in routes}
    used_weights = {r.name: r.weight for r in active}
    if weights is not None:
        unknown = sorted(set(weights) - set(used_weights))
        if unknown:
            raise ApplicationError(
                f"weights name no active target of {alias!r}: {', '.join(unknown)}.",
                {"targets": sorted(used_weights)},
            )
        used_weights = {name: int(weights.get(name, 0)) for name in used_weights}
        if not any(used_weights.values()):
            raise ApplicationError("weights: at least one must be above 0.")
    try:
        used_rules = parse_rules(found.rules if rules is None else rules)
    except ValueError as exc:
        raise ApplicationError(f"rules: {exc}") from exc
    unknown_targets = sorted({r.target for r in used_rules} - {r.name for r in active})
    if policy == "effort" and unknown_targets:
        raise ApplicationError(
            f"rules name no active target of {alias!r}: {', '.join(unknown_targets)}.",
            {"targets": sorted(r.name for r in active)},
        )

    hours = target_hours([r.pk for r in routes], period.start, period.end)
    # The groups of calls to re-route, and each target's and the alias's sums per effort.
    groups: dict[tuple[datetime, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    own: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    alias_sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    actual_calls: dict[int, int] = defaultdict(int)
    for row in hours:
        effort, answered = row["reasoning_effort"], row["answered"]
        actual_calls[row["route_id"]] += answered
        group = groups[(row["hour"], effort)]
        for sums in (group, own[(row["route_id"], effort)], alias_sums[effort]):
            sums["answered"] += answered
            for column in (*INPUT_COLUMNS, *OUTPUT_COLUMNS):
                sums[column] += row[column]
    learned = {
        (e.route_id, e.reasoning_effort): e
        for e in RouteExpectation.objects.filter(route__in=active, samples__gte=MIN_SAMPLES)
    }

    def per_call(route_id: int, effort: str) -> dict[str, Decimal]:
        """Output and reasoning per call of a target at one effort (see the docstring)."""
        if (route_id, effort) in learned:
            e = learned[(route_id, effort)]
            return {
                "output_tokens": e.mean_output_tokens,
                "reasoning_tokens": e.mean_reasoning_tokens,
            }
        for sums in (own.get((route_id, effort)), alias_sums.get(effort)):
            if sums and sums["answered"]:
                return {c: Decimal(sums[c]) / sums["answered"] for c in OUTPUT_COLUMNS}
        return dict.fromkeys(OUTPUT_COLUMNS, Decimal(0))

    rates = {
        rid: _rates_of(rate)
        for rid, rate in current_cost_rates([r.pk for r in active], at=period.end).items()
    }
    targets = tuple(_Target(r.pk, r.name, r.priority, r.weight) for r in active)
    plan = _Plan(policy, used_rules, 1, targets)

    calls: dict[int, Decimal] = defaultdict(Decimal)
    tokens: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for (_, effort), group in sorted(groups.items()):
        n = group["answered"]
        if n == 0:
            continue
        mean_in = {c: Decimal(group[c]) / n for c in INPUT_COLUMNS}
        if policy == "weighted":
            total_weight = sum(used_weights.values())
            shares = {
                t.route_id: Decimal(n) * used_weights[t.target] / total_weight for t in targets
            }
        else:
            costs: dict[tuple[int, str], int | None] = {}
            for t in targets:
                if t.route_id in rates:
                    cost = _cost(rates[t.route_id], {**mean_in, **per_call(t.route_id, effort)})
                    costs[(t.route_id, effort)] = int(cost.scaleb(9).to_integral_value())
            features = Features(effort, int(mean_in["input_tokens"]), "")
            (first, *_) = choose(plan, features, _AllHealthy(costs), random.Random(0))
            shares = {targets[first.index].route_id: Decimal(n)}
        for route_id, share in shares.items():
            if not share:
                continue
            calls[route_id] += share
            for column, value in {**mean_in, **per_call(route_id, effort)}.items():
                tokens[route_id][column] += value * share

    report = {
        r.key: r
        for r in margin_report(period=period, group_by=("alias", "target"))
        if r.key[0] == alias
    }
    revenue_by_class: dict[str, Decimal] = defaultdict(Decimal)
    tokens_by_class: dict[str, int] = defaultdict(int)
    for key, margin_row in report.items():
        if key[1].startswith("("):
            continue  # before routing, fees: not re-routed
        for token_class, amount in margin_row.revenue_by_class.items():
            revenue_by_class[token_class] += amount
        for token_class, n in margin_row.tokens.items():
            tokens_by_class[token_class] += n
    price = {
        c: revenue_by_class[c] / tokens_by_class[c]
        for c in sorted(revenue_by_class)
        if tokens_by_class[c]
    }

    whole_calls = _largest_remainder({r.pk: calls.get(r.pk, Decimal(0)) for r in active})
    lines = []
    for route in routes:
        rid = route.pk
        whole = {
            CLASS_OF[c]: int(v.to_integral_value(ROUND_HALF_UP)) for c, v in tokens[rid].items()
        }
        if whole_calls.get(rid) and rid not in rates:
            raise CannotPrice(
                f"Target {route.name!r} of {alias!r} has no serving cost rate at period end.",
                {"target": route.name},
            )
        cost = Decimal(0)
        if rid in rates and whole:
            cost, _ = serving_cost(rates[rid], **{c: whole.get(c, 0) for c in CLASS_OF.values()})
        revenue = sum((n * price.get(c, Decimal(0)) for c, n in whole.items()), Decimal(0))
        actual = report.get((alias, target_label(rid, names)))
        lines.append(
            RerouteLine(
                route_id=rid,
                target=route.name,
                is_active=route.is_active,
                actual_calls=actual_calls.get(rid, 0),
                actual_cost_usd=_money(actual.cost_usd if actual else Decimal(0)),
                actual_revenue_usd=_money(actual.revenue_usd if actual else Decimal(0)),
                rerouted_calls=whole_calls.get(rid, 0),
                rerouted_tokens={c: whole.get(c, 0) for c in CLASS_OF.values()},
                rerouted_cost_usd=_money(cost),
                rerouted_revenue_usd=_money(revenue),
            )
        )
    return Reroute(
        alias=alias,
        period=period,
        policy=policy,
        weights=used_weights if policy == "weighted" else {},
        rules=used_rules if policy == "effort" else (),
        realized_revenue_per_million={c: p * 1_000_000 for c, p in price.items()},
        lines=tuple(lines),
    )


def _money(amount: Decimal) -> Decimal:
    return amount.quantize(MONEY, rounding=ROUND_HALF_UP)
