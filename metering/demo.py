"""The quick start's demo data, metering's side: the simulator's routes, the demo tenant,
its API keys and limits, and its usage history written through the ledger's own path.

`make run` (`api/management/commands/quickstart.py`) seeds it; billing's side (plan, cost
rates, balance, invoices) is `billing/demo.py`, which calls this module.

Invariants:
- idempotent: every row is found by a fixed name before it is made, and the history is
  generated hour by hour from an RNG seeded by the hour, with request ids drawn from that
  RNG, so the same hour always yields the same records and the ledger skips those it
  already holds (`usage_records_write`: unique per request id). Seeding again over a
  longer window adds only the hours not seen before;
- records are built as the proxy builds them: the provider's usage in its wire format,
  parsed by `metering.usage`, then `usage_record_row` with the route, the serving cost
  rate in force and the tenant's list prices (what `caller_context_load` reads), then
  `usage_records_write`, the ledger's write path (records and rollups in one transaction);
- everything is marked as demo data: the tenant "demo", keys named "... (demo data)";
- a tenant named "demo" that is not the demo tenant (it holds keys, none of them the
  seed's, other than the quick start's own) is refused (`NotTheDemoTenant`), never seeded.
"""

import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q

from config.errors import Conflict
from metering.calendar import month_day, month_start
from metering.control import terms
from metering.ledger.orm import usage_records_write
from metering.ledger.partitions import partition_create
from metering.ledger.record import request_id_for, usage_record_row
from metering.models import ApiKey, RateLimit, ReasoningPolicy, Route, SpendLimit, Tenant
from metering.proxy.callers import RouteInfo, route_info_from
from metering.selectors import current_cost_rates
from metering.services import api_key_create, route_set, tenant_allow_routes, tenant_create
from metering.usage import TokenUsage, usage_from_anthropic, usage_from_openai_chat

# The demo tenant's name; the console labels its pages demo data by it.
DEMO_TENANT = "demo"
# The key `manage.py quickstart` makes for its own calls (with or without the demo data).
QUICKSTART_KEY_NAME = "quickstart"
# The simulator wants a credential like any provider; routes name this variable.
SIMULATOR_KEY_ENV = "RECKON_SIMULATOR_API_KEY"
DEMO_MARK = "(demo data)"


@dataclass(frozen=True)
class DemoRoute:
    alias: str
    provider: str
    path: str  # appended to the simulator's base URL
    upstream_model: str
    accelerator: str
    endpoint: str  # the wire format its callers use (UsageRecord.Endpoint)


DEMO_ROUTES = (
    DemoRoute(
        "sim-reasoner", "openai", "/v1", "sim-reasoner", "nvidia-h100-sxm", "chat.completions"
    ),
    DemoRoute("sim-thinker", "anthropic", "/v1", "sim-thinker", "nvidia-h200-sxm", "messages"),
    DemoRoute(
        "sim-vllm-r1",
        "openai-compatible",
        "/quirks/vllm/v1",
        "sim-r1",
        "amd-mi300x",
        "chat.completions",
    ),
)
DEMO_ALIASES = tuple(r.alias for r in DEMO_ROUTES)


@dataclass(frozen=True)
class DemoKey:
    name: str
    # Share of the calls, and how its calls spread over the aliases (weights in DEMO_ALIASES order).
    share: float
    alias_weights: tuple[int, int, int]
    # Calls by UTC hour follow office hours ("day") or run at night ("batch").
    shape: str


DEMO_KEYS = (
    DemoKey(f"web app {DEMO_MARK}", 0.5, (6, 3, 1), "day"),
    DemoKey(f"nightly batch {DEMO_MARK}", 0.3, (1, 1, 3), "batch"),
    DemoKey(f"evaluations {DEMO_MARK}", 0.2, (2, 2, 1), "day"),
)
# Mean calls per hour at the busiest hour of a weekday.
PEAK_CALLS_PER_HOUR = 6.0


def demo_routes_set(*, simulator_url: str) -> list[str]:
    """The simulator's three routes (idempotent: `route_set` updates in place)."""
    for r in DEMO_ROUTES:
        route_set(
            alias=r.alias,
            provider=r.provider,
            base_url=simulator_url + r.path,
            upstream_model=r.upstream_model,
            api_key_env=SIMULATOR_KEY_ENV,
            accelerator=r.accelerator,
        )
    return list(DEMO_ALIASES)


class NotTheDemoTenant(Conflict):
    code = "not_the_demo_tenant"


def demo_tenant_check(tenant: Tenant) -> None:
    """Refuse a tenant named like the demo tenant that the demo seed did not make: it is
    the demo tenant if it holds a key of the seed (named "... (demo data)"), or no keys
    but the quick start's own."""
    names = set(tenant.api_keys.values_list("name", flat=True).distinct())
    if names & {spec.name for spec in DEMO_KEYS} or names <= {QUICKSTART_KEY_NAME}:
        return
    raise NotTheDemoTenant(
        f"A tenant named {tenant.name!r} exists but holds no demo data (its API keys were "
        f"not made by the demo seed): refusing to seed demo data into it. Rename that "
        f"tenant, or use another database for the quick start.",
        {"tenant": str(tenant.pk)},
    )


def demo_tenant_set(*, aliases: list[str]) -> Tenant:
    """The demo tenant, granted `aliases` (made once; a tenant of the same name that is
    not the demo tenant is refused, see `demo_tenant_check`)."""
    tenant = Tenant.objects.filter(name=DEMO_TENANT).first()
    if tenant is None:
        tenant = tenant_create(name=DEMO_TENANT)
    else:
        demo_tenant_check(tenant)
    tenant_allow_routes(tenant=tenant, aliases=aliases)
    return tenant


@transaction.atomic
def demo_keys_set(*, tenant: Tenant) -> list[ApiKey]:
    """The history's API keys (made once; their secrets are never shown: the quick start
    prints a key of its own for calls)."""
    keys = []
    for spec in DEMO_KEYS:
        key = ApiKey.objects.filter(tenant=tenant, name=spec.name).order_by("pk").first()
        keys.append(key or api_key_create(tenant=tenant, name=spec.name).api_key)
    return keys


@transaction.atomic
def demo_limits_set(
    *, tenant: Tenant, keys: list[ApiKey], tenant_monthly_usd: Decimal, key_monthly_usd: Decimal
) -> None:
    """A monthly spend limit on the tenant and one on the batch key, a rate limit and a
    reasoning policy on the evaluations key (each made once, never changed after: an
    operator's edit survives the next `make run`)."""
    web, batch, evaluations = keys
    SpendLimit.objects.get_or_create(
        tenant=tenant,
        api_key=None,
        window=SpendLimit.Window.MONTH,
        defaults={"amount_usd": tenant_monthly_usd},
    )
    SpendLimit.objects.get_or_create(
        tenant=tenant,
        api_key=batch,
        window=SpendLimit.Window.MONTH,
        defaults={"amount_usd": key_monthly_usd},
    )
    RateLimit.objects.get_or_create(
        tenant=tenant,
        api_key=evaluations,
        defaults={"requests_per_minute": 60, "tokens_per_minute": 400_000},
    )
    ReasoningPolicy.objects.get_or_create(
        api_key=evaluations,
        defaults={
            "allowed_efforts": ["low", "medium"],
            "max_output_tokens": 16_000,
            "mode": ReasoningPolicy.Mode.CLAMP,
        },
    )


# --- usage history ---------------------------------------------------------------------

EFFORTS = (("low", 3), ("medium", 5), ("high", 2))  # (effort, weight)
# Hidden reasoning per visible output token, by effort (the brief's 4-10x).
REASONING_RATIO = {"low": (4.0, 5.5), "medium": (5.5, 7.5), "high": (7.5, 10.0)}


def _hour_weight(hour: datetime, shape: str) -> float:
    """Relative call rate of a key at `hour` (UTC): office hours on weekdays, or a
    nightly batch window; weekends quieter."""
    h = hour.hour
    if shape == "batch":
        base = 1.0 if 1 <= h < 6 else 0.05
    else:
        base = 0.15 + 0.85 * math.exp(-(((h - 14) / 3.5) ** 2))
    return base * (0.35 if hour.weekday() >= 5 else 1.0)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method (means here are small)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _request_id(rng: random.Random, started_at: datetime) -> uuid.UUID:
    """A version-7 id carrying `started_at` with attempt bits 1 (a single-target call, as
    the proxy stamps it), its random bits drawn from `rng`: the same hour, the same ids."""
    base = request_id_for(started_at, attempt=1).int
    drawn = rng.getrandbits(58) << 4
    return uuid.UUID(int=(base >> 62 << 62) | drawn | 1)


def _wire_usage(
    route: DemoRoute, *, prompt: int, cached: int, visible: int, reasoning: int
) -> tuple[dict[str, Any], TokenUsage]:
    """The usage as the provider reports it, and as metering.usage reads it."""
    if route.provider == "anthropic":
        raw: dict[str, Any] = {
            "input_tokens": prompt - cached,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": visible + reasoning,
            "output_tokens_details": {"thinking_tokens": reasoning},
        }
        return raw, usage_from_anthropic(raw)
    raw = {
        "prompt_tokens": prompt,
        "completion_tokens": visible + reasoning,
        "total_tokens": prompt + visible + reasoning,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    return raw, usage_from_openai_chat(raw)


def _calls_in_hour(
    hour: datetime, keys: list[ApiKey], routes: dict[str, RouteInfo], tenant_id: uuid.UUID
) -> Iterator[dict[str, Any]]:
    rng = random.Random(f"reckon-demo:{hour:%Y-%m-%dT%H}")  # noqa: S311 - demo data, not secrets
    by_alias = {r.alias: r for r in DEMO_ROUTES}
    for spec, key in zip(DEMO_KEYS, keys, strict=True):
        mean = PEAK_CALLS_PER_HOUR * spec.share * _hour_weight(hour, spec.shape)
        for _ in range(_poisson(rng, mean)):
            alias = rng.choices(DEMO_ALIASES, weights=spec.alias_weights)[0]
            effort = rng.choices([e for e, _ in EFFORTS], weights=[w for _, w in EFFORTS])[0]
            started_at = hour + timedelta(microseconds=rng.randrange(3_600_000_000))
            prompt = int(rng.lognormvariate(7.6, 0.7))  # ~2,000 tokens
            cached = int(prompt * rng.choice((0, 0, 0.3, 0.6)))
            visible = int(rng.lognormvariate(5.9, 0.5))  # ~360 tokens
            reasoning = int(visible * rng.uniform(*REASONING_RATIO[effort]))
            failed = rng.random() < 0.01
            if failed:  # an upstream error: nothing generated, nothing billed
                cached = visible = reasoning = 0
            raw, usage = _wire_usage(
                by_alias[alias], prompt=prompt, cached=cached, visible=visible, reasoning=reasoning
            )
            latency_us = 400_000 + (visible + reasoning) * rng.randint(8_000, 14_000)
            row, _spend = usage_record_row(
                request_id=_request_id(rng, started_at),
                tenant_id=tenant_id,
                api_key_id=key.pk,
                route=routes[alias],
                endpoint=by_alias[alias].endpoint,
                stream=rng.random() < 0.6,
                status="upstream_error" if failed else "completed",
                upstream_status=503 if failed else 200,
                response_id="" if failed else f"demo-{rng.getrandbits(48):012x}",
                usage=usage,
                flags=[],
                raw_usage=None if failed else raw,
                client_disconnected=False,
                ttft_us=None if failed else 150_000 + reasoning * 9_000,
                latency_us=latency_us,
                started_at=started_at,
                attempt=1,
                reasoning_effort=effort,
            )
            row["finished_at"] = started_at + timedelta(microseconds=latency_us)
            yield row


def demo_routes_info(*, tenant: Tenant) -> dict[str, RouteInfo]:
    """Each demo alias's route as the proxy loads it for this tenant now: its serving
    cost rate in force and the tenant's list prices (`caller_context_load`'s reads)."""
    routes = list(Route.objects.filter(alias_id__in=DEMO_ALIASES, is_active=True))
    rates = current_cost_rates(
        [r.pk for r in routes],
        aliases={r.pk: r.alias_id for r in routes},
        accelerators={r.pk: r.accelerator for r in routes},
    )
    tenant_terms = terms.tenant_terms_provider(tenant.pk, list(DEMO_ALIASES))
    return {
        r.alias_id: route_info_from(r, rates.get(r.pk), tenant_terms.spend_rates.get(r.alias_id))
        for r in routes
    }


def demo_usage_write(
    *, tenant: Tenant, keys: list[ApiKey], since: datetime, until: datetime, batch: int = 1000
) -> int:
    """The usage history of [since, until) (whole hours from `since`; calls after `until`
    are left for a later run): records written, those already stored skipped. On a
    partitioned ledger the months' partitions are made first, as an operator restoring
    history would (`partition_create`)."""
    month = month_start(since)
    while month < until:
        partition_create(month)
        month = month_day(month.year, month.month + 1)
    routes = demo_routes_info(tenant=tenant)
    written, pending = 0, []
    last_used: dict[int, datetime] = {}
    hour = since.replace(minute=0, second=0, microsecond=0)
    while hour < until:
        for row in _calls_in_hour(hour, keys, routes, tenant.pk):
            if row["started_at"] < until:
                pending.append(row)
                last_used[row["api_key_id"]] = row["finished_at"]
        if len(pending) >= batch:
            written += usage_records_write(pending)
            pending = []
        hour += timedelta(hours=1)
    if pending:
        written += usage_records_write(pending)
    for key_id, at in last_used.items():  # as the proxy's writer touches a key it records
        ApiKey.objects.filter(pk=key_id).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=at)
        ).update(last_used_at=at)
    return written
