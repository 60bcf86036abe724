"""Who is calling and what they may call, cached per server process for a few seconds.

Every server process keeps its own short-lived cache (RECKON_AUTH_CACHE_SECONDS, default
2 s) and reloads from the database when an entry expires, so a revoked key, a removed
alias or a changed route takes effect on every process within that bound, without any
cross-process invalidation channel to lose messages. Unknown keys are cached too (as
misses), so guessing keys does not turn into database load.
"""

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Generic, TypeVar

from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from metering.control import RateScope, SpendScope, to_nano
from metering.costs import Rates
from metering.models import (
    ApiKey,
    RateLimit,
    ReasoningPolicy,
    Route,
    ServingCostRate,
    SpendLimit,
    UsageRecord,
    UsageRollup,
)

ANTHROPIC_DEFAULT_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class RouteInfo:
    alias: str
    provider: str
    upstream_model: str
    accelerator: str
    base_url: str
    # The upstream credential, read from the route's environment variable; "" if none.
    credential: str
    # True when the route names an environment variable that is not set here.
    credential_missing: bool
    # The serving cost rate in force for the alias when this was loaded (None: no rate).
    cost_rate_id: int | None = None
    cost_rates: Rates | None = None
    # The tenant's list prices for this alias (what spend limits count); None: no plan.
    spend_rates: Rates | None = None

    @property
    def speaks_anthropic(self) -> bool:
        return self.provider == Route.Provider.ANTHROPIC


@dataclass(frozen=True, slots=True)
class ReasoningRules:
    allowed_efforts: frozenset[str]  # empty: any
    default_max_output_tokens: int | None
    max_output_tokens: int | None
    refuse: bool  # refuse instead of clamping


@dataclass(frozen=True, slots=True)
class Controls:
    """What the proxy must check for this caller before forwarding (None when nothing)."""

    spend: tuple[SpendScope, ...]
    rates: tuple[RateScope, ...]
    reasoning: ReasoningRules | None


@dataclass(frozen=True, slots=True)
class CallerContext:
    tenant_id: uuid.UUID
    api_key_id: int
    expires_at: datetime | None
    routes: dict[str, RouteInfo]
    controls: Controls | None = None


def route_info_from(
    route: Route, rate: ServingCostRate | None = None, prices: Rates | None = None
) -> RouteInfo:
    credential = os.environ.get(route.api_key_env, "") if route.api_key_env else ""
    return RouteInfo(
        spend_rates=prices,
        cost_rate_id=rate.pk if rate else None,
        cost_rates=Rates(
            rate.input_usd,
            rate.cache_read_usd,
            rate.cache_write_usd,
            rate.output_usd,
            rate.reasoning_usd,
        )
        if rate
        else None,
        alias=route.alias,
        provider=route.provider,
        upstream_model=route.upstream_model,
        accelerator=route.accelerator,
        base_url=route.base_url.rstrip("/"),
        credential=credential,
        credential_missing=bool(route.api_key_env) and not credential,
    )


def current_cost_rates(
    aliases: list[str], at: datetime | None = None
) -> dict[str, ServingCostRate]:
    """The latest rate in force at `at` (default now) for each alias (one query)."""
    if not aliases:
        return {}
    rates: dict[str, ServingCostRate] = {}
    for rate in ServingCostRate.objects.filter(
        alias__in=aliases, effective_from__lte=at or timezone.now()
    ).order_by("alias", "-effective_from", "-id"):
        rates.setdefault(rate.alias, rate)
    return rates


def caller_context_load(key_hash: str) -> CallerContext | None:
    """The caller behind a key digest, or None for an unknown, revoked or inactive key."""
    close_old_connections()
    api_key = (
        ApiKey.objects.select_related("tenant")
        .filter(key_hash=key_hash, revoked_at__isnull=True, tenant__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    allowed = list(api_key.tenant.allowed_routes.filter(is_active=True))
    rates = current_cost_rates([r.alias for r in allowed])
    prices = spend_rates_provider(api_key.tenant_id, [r.alias for r in allowed])
    routes = {r.alias: route_info_from(r, rates.get(r.alias), prices.get(r.alias)) for r in allowed}
    return CallerContext(
        tenant_id=api_key.tenant_id,
        api_key_id=api_key.pk,
        expires_at=api_key.expires_at,
        routes=routes,
        controls=controls_load(api_key),
    )


# Billing registers how a tenant's plan prices each alias (metering does not import
# billing): (tenant id, aliases) -> {alias: Rates in USD per 1M tokens}.
def _no_prices(tenant_id: uuid.UUID, aliases: list[str]) -> dict[str, Rates]:
    return {}


spend_rates_provider: Callable[[uuid.UUID, list[str]], dict[str, Rates]] = _no_prices


def register_spend_rates_provider(
    provider: Callable[[uuid.UUID, list[str]], dict[str, Rates]],
) -> None:
    global spend_rates_provider
    spend_rates_provider = provider


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _spent_loader(
    *, tenant_id: uuid.UUID, api_key_id: int | None, since: datetime | None
) -> Callable[[], Decimal]:
    def load() -> Decimal:
        from django.db.models import Sum

        if api_key_id is None:
            rollups = UsageRollup.objects.filter(tenant_id=tenant_id)
            if since is not None:
                rollups = rollups.filter(hour__gte=since)
            total = rollups.aggregate(total=Sum("spend_usd"))["total"]
        else:
            records = UsageRecord.objects.filter(
                tenant_id=tenant_id, api_key_id=api_key_id, flags=[]
            )
            if since is not None:
                records = records.filter(started_at__gte=since)
            total = records.aggregate(total=Sum("spend_usd"))["total"]
        return total or Decimal(0)

    return load


def controls_load(api_key: ApiKey) -> Controls | None:
    """Spend scopes, rate scopes and reasoning rules that apply to calls with this key."""
    tenant_id = api_key.tenant_id
    now = timezone.now()
    month = _month_start(now)
    spend = []
    for limit in SpendLimit.objects.filter(tenant_id=tenant_id).filter(
        Q(api_key__isnull=True) | Q(api_key_id=api_key.pk)
    ):
        who = f"key:{limit.api_key_id}" if limit.api_key_id else f"tenant:{tenant_id}"
        monthly = limit.window == SpendLimit.Window.MONTH
        spend.append(
            SpendScope(
                key=f"rk:spend:{who}:" + (f"{month:%Y-%m}" if monthly else "total"),
                limit_nano=to_nano(limit.amount_usd),
                ttl_s=40 * 86400 if monthly else 0,
                load_spent=_spent_loader(
                    tenant_id=tenant_id,
                    api_key_id=limit.api_key_id,
                    since=month if monthly else None,
                ),
            )
        )
    rates = [
        RateScope(
            name="key" if r.api_key_id else "tenant",
            scope_id=str(r.api_key_id or tenant_id),
            requests_per_minute=r.requests_per_minute,
            tokens_per_minute=r.tokens_per_minute,
        )
        for r in sorted(
            RateLimit.objects.filter(tenant_id=tenant_id).filter(
                Q(api_key__isnull=True) | Q(api_key_id=api_key.pk)
            ),
            key=lambda r: r.api_key_id is None,  # the key's own limits first (headers)
        )
    ]
    policy = ReasoningPolicy.objects.filter(api_key=api_key).first()
    reasoning = (
        ReasoningRules(
            allowed_efforts=frozenset(policy.allowed_efforts or ()),
            default_max_output_tokens=policy.default_max_output_tokens,
            max_output_tokens=policy.max_output_tokens,
            refuse=policy.mode == ReasoningPolicy.Mode.REFUSE,
        )
        if policy
        else None
    )
    if not spend and not rates and reasoning is None:
        return None
    return Controls(tuple(spend), tuple(rates), reasoning)


K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A process-local cache whose entries live `ttl` seconds; concurrent misses share one load."""

    def __init__(
        self,
        loader: Callable[[K], V],
        *,
        ttl: float,
        executor: ThreadPoolExecutor,
        max_entries: int = 100_000,
    ) -> None:
        self._loader = loader
        self._ttl = ttl
        self._executor = executor
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._loader, key)
        self._loading[key] = future
        try:
            value = await asyncio.shield(future)
        finally:
            self._loading.pop(key, None)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self._ttl, value)
        return value

    def clear(self) -> None:
        self._entries.clear()
