"""Who is calling and what they may call, cached per server process for a few seconds.

Every server process keeps its own short-lived cache (RECKON_AUTH_CACHE_SECONDS, default
2 s) and reloads from the database before an entry expires (in the background, once the
entry is 3/4 of its age limit: a key in use never waits on the database), so a revoked key,
a removed alias or a changed route takes effect on every process within that bound,
without any cross-process invalidation channel to lose messages. Unknown keys are cached too (as
misses), so guessing keys does not turn into database load.

When the database is out of reach, a key looked up successfully within the last
RECKON_AUTH_STALE_SECONDS (default 300 s) keeps its last good context; any other key is
answered "unavailable" (never cached as a miss). A lookup is bounded by
RECKON_AUTH_LOOKUP_TIMEOUT_SECONDS (default 5 s).

What every key of a tenant shares (its routes and their rates, billing's terms, hold
caps, the tenant's own limits) is read once per refresh period for all its keys
(`CallerLoader`); each key reads only its own rows. A context is aged from its oldest
data, so sharing never stretches the bound above.

A context holds, per granted alias, its first active target by (priority, name) in
`routes` (what holds, governance and the model list read), and for an alias with two or
more active targets an `AliasPlan` in `plans` (every target with its own serving cost
rate; the tenant's prices and hold fields are the alias's, the same on each). One query
loads every target, one more their rates: no query per call (decision 0117).
"""

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Generic, NamedTuple, TypeVar

from django.db import InterfaceError, OperationalError, close_old_connections
from django.db.models import F, FilteredRelation, Q, QuerySet
from django.utils import timezone

from config.compiled_sql import STR_SLOT, UUID_SLOT, CompiledQuery, model_fields
from metering.control import terms
from metering.control.budgets import BudgetKind, budget_scopes, budget_specs
from metering.control.governance import ReasoningRules
from metering.control.holdcaps import hold_caps
from metering.control.scopes import Controls, RateScope, to_nano
from metering.control.terms import TenantTerms
from metering.ledger.record import Rates
from metering.models import (
    Alias,
    ApiKey,
    RateLimit,
    ReasoningPolicy,
    Route,
    ServingCostRate,
    SpendLimit,
)
from metering.routing.rules import EffortRule, parse_rules
from metering.selectors import current_cost_rates
from metering.usage import COST_RATE_FIELDS

ANTHROPIC_DEFAULT_VERSION = "2023-06-01"

logger = logging.getLogger(__name__)


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
    # The provider account the route's upstream key belongs to (None: none); records
    # carry it as served, so reconciliation compares them with that account's reports.
    provider_account_id: int | None = None
    # The serving cost rate in force for this target when this was loaded (None: no rate).
    cost_rate_id: int | None = None
    cost_rates: Rates | None = None
    # The tenant's list prices for the alias (what spend limits count); None: no plan.
    # This and the two holds fields below belong to the alias: the same on every target.
    spend_rates: Rates | None = None
    # Output tokens a call on this alias plausibly spends (learned p99); None: not learned.
    hold_cap: int | None = None
    # What spend holds charge, from the list prices: nano-USD per million input tokens
    # (the dearest input class) and nano-USD per output token (the dearer of visible and
    # reasoning), both rounded up. Integers, so admission does no Decimal arithmetic.
    hold_prices: tuple[int, int] | None = None
    # The target: its Route row (None: not loaded from one), name within the alias, and
    # the routing facts the policies read (decision 0117).
    route_id: int | None = None
    target: str = "default"
    priority: int = 0
    weight: int = 100
    max_concurrent: int | None = None  # calls in flight across processes; None: no limit
    first_byte_timeout_s: float | None = None  # None: the proxy's idle read timeout

    @property
    def speaks_anthropic(self) -> bool:
        return self.provider == Route.Provider.ANTHROPIC

    def upstream_headers(
        self,
        anthropic_version: str = ANTHROPIC_DEFAULT_VERSION,
        forwarded: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The headers a call to this route's upstream carries: its credential in the
        provider's own header (one home for the proxy and `route_set --check`)."""
        headers = {"Content-Type": "application/json", **(forwarded or {})}
        if self.speaks_anthropic:
            headers["anthropic-version"] = anthropic_version
            if self.credential:
                headers["x-api-key"] = self.credential
        elif self.credential:
            headers["Authorization"] = "Bearer " + self.credential
        return headers


@dataclass(frozen=True, slots=True)
class AliasPlan:
    """How one alias with two or more active targets routes (decision 0117)."""

    alias: str
    alias_pk: int
    policy: str  # an Alias.Policy value
    rules: tuple[EffortRule, ...]  # `effort` rules, parsed (empty for other policies)
    max_attempts: int  # attempts one call may make across targets (1: no failover)
    targets: tuple[RouteInfo, ...]  # the active targets, by (priority, name)


@dataclass(frozen=True, slots=True)
class CallerContext:
    tenant_id: uuid.UUID
    api_key_id: int
    expires_at: datetime | None
    # alias -> its first active target by (priority, name): what holds, governance and
    # the model list read, and the only target of a single-target alias.
    routes: dict[str, RouteInfo]
    controls: Controls | None = None
    # alias -> its routing plan, only for aliases with 2+ active targets (a single-target
    # alias takes the fast path: no plan, no routing work).
    plans: dict[str, AliasPlan] = field(default_factory=dict)
    # time.monotonic() when the oldest data in this context was read (TtlCache ages the
    # entry from there); not part of what the context says.
    read_at: float | None = field(default=None, compare=False)


# A rate's columns in `Rates`' field order, each field read from its own column (built
# once: a route's rates are read on every context load).
_cost_rate_values = attrgetter(*(COST_RATE_FIELDS[name] for name in Rates._fields))


def route_info_from(
    route: Route,
    rate: ServingCostRate | None = None,
    prices: Rates | None = None,
    hold_cap: int | None = None,
    hold_prices: tuple[int, int] | None = None,
) -> RouteInfo:
    """`hold_prices` may be passed precomputed from `prices` (the same for every target)."""
    credential = os.environ.get(route.api_key_env, "") if route.api_key_env else ""
    if hold_prices is None and prices is not None:
        hold_prices = hold_prices_of(prices)
    timeout_ms = route.first_byte_timeout_ms
    return RouteInfo(
        spend_rates=prices,
        hold_cap=hold_cap,
        hold_prices=hold_prices,
        route_id=route.pk,
        target=route.name,
        priority=route.priority,
        weight=route.weight,
        max_concurrent=route.max_concurrent,
        first_byte_timeout_s=None if timeout_ms is None else timeout_ms / 1000,
        cost_rate_id=rate.pk if rate else None,
        cost_rates=Rates._make(_cost_rate_values(rate)) if rate else None,
        alias=route.alias_id,
        provider=route.provider,
        upstream_model=route.upstream_model,
        accelerator=route.accelerator,
        provider_account_id=route.provider_account_id,
        base_url=route.base_url.rstrip("/"),
        credential=credential,
        credential_missing=bool(route.api_key_env) and not credential,
    )


def hold_prices_of(prices: Rates) -> tuple[int, int]:
    """(nano-USD per 1M input tokens, nano-USD per output token), each the dearest class,
    rounded up: a hold computed from them never falls short of the exact worst case."""
    worst_input = max(prices.input, prices.cache_read, prices.cache_write)
    worst_output = max(prices.output, prices.reasoning)
    return to_nano(worst_input), to_nano(worst_output / MILLION)


MILLION = Decimal(1_000_000)


def caller_context_load(key_hash: str) -> CallerContext | None:
    """The caller behind a key digest, or None for an unknown, revoked or inactive key;
    everything read now (nothing shared with earlier loads)."""
    return CallerLoader(share_for=0.0)(key_hash)


@dataclass(frozen=True, slots=True)
class TenantPart:
    """What every key of one tenant shares in its context, as read from `read_at` on."""

    read_at: float  # time.monotonic() when the reading began
    # alias -> first target, alias -> plan: for a key without budgets (no hold caps)...
    routes: dict[str, RouteInfo]
    plans: dict[str, AliasPlan]
    # ... and for a key with budgets (the same objects when no hold cap is learned).
    routes_capped: dict[str, RouteInfo]
    plans_capped: dict[str, AliasPlan]
    terms: TenantTerms
    # The tenant's own (key-less) spend limits, by pk: (pk, monthly, amount USD).
    spend_limits: tuple[tuple[int, bool, Decimal], ...]
    # The tenant's own rate limit: (requests per minute, tokens per minute); None: none.
    rate_limit: tuple[int | None, int | None] | None


class CallerLoader:
    """Loads caller contexts, reading what every key of a tenant shares (its routes and
    their rates, its terms from billing, hold caps, the tenant's own limits) once per
    `share_for` seconds for all its keys, and only the key's own rows per key.

    A context's `read_at` is when the oldest data in it was read (its tenant part's), and
    TtlCache ages an entry from there: sharing never makes a context older than the
    cache's bound. With `share_for` at the cache's refresh point, a tenant part is read
    about as often as one key in use is refreshed (every 3/4 of the ttl); a tenant with
    many keys in use reads it once for all of them. What the lookup thread spends per second with every key in
    use is then about (active tenants x a tenant part + active keys x a key's row) per
    refresh period, not active keys x everything (`make bench-lookup` measures both).
    Called from one thread at a time (the lookup thread)."""

    def __init__(self, *, share_for: float) -> None:
        self._share_for = share_for
        self._tenants: dict[uuid.UUID, TenantPart] = {}
        self._swept_at = time.monotonic()

    def clear(self) -> None:
        self._tenants.clear()

    def __call__(self, key_hash: str) -> CallerContext | None:
        close_old_connections()
        started = time.monotonic()
        row = key_row_load(key_hash)
        if row is None:
            return None
        key_id, tenant_id, expires_at, prefix = row[:4]
        part = self._tenant_part(tenant_id)
        controls = _controls_of(row, part)
        capped = controls is not None and bool(controls.budgets)
        return CallerContext(
            tenant_id=tenant_id,
            api_key_id=key_id,
            expires_at=expires_at,
            routes=part.routes_capped if capped else part.routes,
            controls=controls,
            plans=part.plans_capped if capped else part.plans,
            read_at=min(started, part.read_at),
        )

    def _tenant_part(self, tenant_id: uuid.UUID) -> TenantPart:
        now = time.monotonic()
        part = self._tenants.get(tenant_id)
        if part is not None and now - part.read_at < self._share_for:
            return part
        part = tenant_part_load(tenant_id, read_at=now)
        if now - self._swept_at >= self._share_for:
            # Parts past their window are never read again: dropped once per window, so
            # what is held stays about what the tenants in use need.
            self._tenants = {
                t: p for t, p in self._tenants.items() if now - p.read_at < self._share_for
            }
            self._swept_at = now
        if self._share_for > 0:
            self._tenants[tenant_id] = part
        return part

    def tenants_held(self) -> int:
        return len(self._tenants)


class KeyRow(NamedTuple):
    """A key's own rows, as one query reads them (the constraints allow one rate limit
    and one spend limit per window for a key)."""

    key_id: int
    tenant_id: uuid.UUID
    expires_at: datetime | None
    prefix: str
    policy_id: int | None  # its ReasoningPolicy (None: none), whose fields follow
    allowed_efforts: list[str] | None
    default_max_output_tokens: int | None
    max_output_tokens: int | None
    mode: str | None
    monthly_reasoning_tokens: int | None
    rate_limit_id: int | None  # its own RateLimit (None: none), whose figures follow
    requests_per_minute: int | None
    tokens_per_minute: int | None
    month_limit_id: int | None  # its own monthly SpendLimit (None: none), and amount
    month_limit_usd: Decimal | None
    total_limit_id: int | None  # its own all-time SpendLimit (None: none), and amount
    total_limit_usd: Decimal | None


def _key_row_query(key_hash: str) -> "QuerySet[ApiKey, tuple]":
    return (
        ApiKey.objects.filter(key_hash=key_hash, revoked_at__isnull=True, tenant__is_active=True)
        .annotate(
            own_rate=FilteredRelation(
                "rate_limits", condition=Q(rate_limits__tenant_id=F("tenant_id"))
            ),
            month_limit=FilteredRelation(
                "spend_limits",
                condition=Q(
                    spend_limits__window=SpendLimit.Window.MONTH,
                    spend_limits__tenant_id=F("tenant_id"),
                ),
            ),
            total_limit=FilteredRelation(
                "spend_limits",
                condition=Q(
                    spend_limits__window=SpendLimit.Window.TOTAL,
                    spend_limits__tenant_id=F("tenant_id"),
                ),
            ),
        )
        .values_list(
            "pk",
            "tenant_id",
            "expires_at",
            "prefix",
            "reasoning_policy__pk",
            "reasoning_policy__allowed_efforts",
            "reasoning_policy__default_max_output_tokens",
            "reasoning_policy__max_output_tokens",
            "reasoning_policy__mode",
            "reasoning_policy__monthly_reasoning_tokens",
            "own_rate__pk",
            "own_rate__requests_per_minute",
            "own_rate__tokens_per_minute",
            "month_limit__pk",
            "month_limit__amount_usd",
            "total_limit__pk",
            "total_limit__amount_usd",
        )
    )


# Compiled by Django once per process: building a query with five joins costs the ORM
# ~2 ms of CPU, its execution ~0.3 ms, and a process runs it for every key in use once
# per refresh period.
_key_rows = CompiledQuery(_key_row_query, STR_SLOT)


def key_row_load(key_hash: str) -> KeyRow | None:
    """The key behind a digest with its own policy and limits (one query), or None for
    an unknown, revoked or inactive key."""
    row = _key_rows.first(key_hash)
    return None if row is None else KeyRow._make(row)


# A target's Route fields and its alias's Alias fields, as one compiled query reads them
# (in model order: `from_db` maps values positionally in that order).
_ROUTE_FIELDS = model_fields(
    Route,
    "id",
    "alias_id",
    "name",
    "weight",
    "priority",
    "max_concurrent",
    "first_byte_timeout_ms",
    "provider",
    "base_url",
    "upstream_model",
    "api_key_env",
    "accelerator",
    "provider_account_id",
)
_ALIAS_FIELDS = model_fields(Alias, "id", "name", "policy", "rules", "max_attempts")

# Every active target of every granted active alias, by (alias, priority, name), with its
# alias's routing fields.
_tenant_targets = CompiledQuery(
    lambda tenant_id: (
        Route.objects.filter(alias__tenants=tenant_id, alias__is_active=True, is_active=True)
        .order_by("alias", "priority", "name")
        .values_list(*_ROUTE_FIELDS, *(f"alias__{name}" for name in _ALIAS_FIELDS))
    ),
    UUID_SLOT,
)
_tenant_spend_limits = CompiledQuery(
    lambda tenant_id: (
        SpendLimit.objects.filter(tenant_id=tenant_id, api_key__isnull=True)
        .order_by("pk")
        .values_list("pk", "window", "amount_usd")
    ),
    UUID_SLOT,
)
_tenant_rate_limit = CompiledQuery(
    lambda tenant_id: (
        RateLimit.objects.filter(tenant_id=tenant_id, api_key__isnull=True)
        .order_by("pk")
        .values_list("requests_per_minute", "tokens_per_minute")[:1]
    ),
    UUID_SLOT,
)


def tenant_part_load(tenant_id: uuid.UUID, *, read_at: float) -> TenantPart:
    """What every key of the tenant shares, read now."""
    by_alias: dict[str, list[Route]] = {}
    alias_of: dict[str, Alias] = {}
    split = len(_ROUTE_FIELDS)
    using = _tenant_targets.db()
    for row in _tenant_targets.rows(tenant_id):
        route = Route.from_db(using, _ROUTE_FIELDS, row[:split])
        if route.alias_id not in alias_of:
            alias_of[route.alias_id] = Alias.from_db(using, _ALIAS_FIELDS, row[split:])
        by_alias.setdefault(route.alias_id, []).append(route)
    targets = [route for routes in by_alias.values() for route in routes]
    aliases = list(by_alias)
    rates = current_cost_rates(
        [r.pk for r in targets],
        aliases={r.pk: r.alias_id for r in targets},
        accelerators={r.pk: r.accelerator for r in targets},
    )
    tenant_terms = terms.tenant_terms_provider(tenant_id, aliases)
    caps = hold_caps(tenant_id, aliases) if aliases else {}
    routes, plans = _routes_of(by_alias, alias_of, rates, tenant_terms, {})
    routes_capped, plans_capped = (
        _routes_of(by_alias, alias_of, rates, tenant_terms, caps) if caps else (routes, plans)
    )
    spend_limits = tuple(
        (pk, window == SpendLimit.Window.MONTH, Decimal(amount))
        for pk, window, amount in _tenant_spend_limits.rows(tenant_id)
    )
    rate_limit = _tenant_rate_limit.first(tenant_id)
    return TenantPart(
        read_at=read_at,
        routes=routes,
        plans=plans,
        routes_capped=routes_capped,
        plans_capped=plans_capped,
        terms=tenant_terms,
        spend_limits=spend_limits,
        rate_limit=rate_limit,
    )


def _routes_of(
    by_alias: dict[str, list[Route]],
    alias_of: dict[str, Alias],
    rates: dict[int, ServingCostRate],
    tenant_terms: TenantTerms,
    caps: dict[str, int],
) -> tuple[dict[str, RouteInfo], dict[str, AliasPlan]]:
    routes: dict[str, RouteInfo] = {}
    plans: dict[str, AliasPlan] = {}
    for alias, alias_targets in by_alias.items():
        prices = tenant_terms.spend_rates.get(alias)
        held = None if prices is None else hold_prices_of(prices)
        infos = tuple(
            route_info_from(r, rates.get(r.pk), prices, caps.get(alias), held)
            for r in alias_targets
        )
        routes[alias] = infos[0]
        if len(infos) > 1:
            plans[alias] = alias_plan_from(alias_of[alias], infos)
    return routes, plans


def alias_plan_from(alias: Alias, targets: tuple[RouteInfo, ...]) -> AliasPlan:
    """The plan of an alias over its active targets (ordered by priority, name)."""
    try:
        rules = parse_rules(alias.rules) if alias.policy == Alias.Policy.EFFORT else ()
    except ValueError as exc:
        # Stored rules are validated when set (alias_set, the admin); rules written
        # around them route every call to the "default" target rather than fail calls.
        logger.warning("alias %r has invalid rules (%s); routing by default", alias.name, exc)
        rules = ()
    return AliasPlan(
        alias=alias.name,
        alias_pk=alias.pk,
        policy=alias.policy,
        rules=rules,
        max_attempts=alias.max_attempts,
        targets=targets,
    )


def _controls_of(key: KeyRow, part: TenantPart) -> Controls | None:
    """Budgets, rate scopes and reasoning rules that apply to calls with this key: the
    tenant's from `part`, the key's own from its row."""
    tenant_terms = part.terms
    tenant_id, key_id = key.tenant_id, key.key_id
    spend: list[tuple[int, int | None, bool, Decimal, str]] = [
        (pk, None, monthly, amount, "") for pk, monthly, amount in part.spend_limits
    ]
    if key.month_limit_id is not None and key.month_limit_usd is not None:
        spend.append((key.month_limit_id, key_id, True, Decimal(key.month_limit_usd), key.prefix))
    if key.total_limit_id is not None and key.total_limit_usd is not None:
        spend.append((key.total_limit_id, key_id, False, Decimal(key.total_limit_usd), key.prefix))
    key_rules = None
    key_reasoning = []
    if key.policy_id is not None:
        refuse = key.mode == ReasoningPolicy.Mode.REFUSE
        if key.monthly_reasoning_tokens is not None:
            key_reasoning.append((key_id, key.monthly_reasoning_tokens, refuse, key.prefix))
        key_rules = ReasoningRules(
            allowed_efforts=frozenset(key.allowed_efforts or ()),
            default_max_output_tokens=key.default_max_output_tokens,
            max_output_tokens=key.max_output_tokens,
            refuse=refuse,
        )
    specs = budget_specs(
        spend_limits=spend,
        balance=tenant_terms.balance is not None,
        plan_reasoning_tokens=tenant_terms.monthly_reasoning_tokens,
        plan_refuses=tenant_terms.reasoning_refuse,
        key_reasoning=key_reasoning,
    )
    budgets = budget_scopes(
        specs, tenant_id=tenant_id, tenant_terms=tenant_terms, now=timezone.now()
    )
    reasoning_modes = [spec.refuse for spec in specs if spec.kind == BudgetKind.REASONING]
    # The key's own rate limit first (its figures go in the response headers).
    limits = []
    if key.rate_limit_id is not None:
        limits.append(("key", str(key_id), key.requests_per_minute, key.tokens_per_minute))
    if part.rate_limit is not None:
        limits.append(("tenant", str(tenant_id), *part.rate_limit))
    rates = tuple(
        RateScope(
            name=name,
            scope_id=scope_id,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            tenant_id=str(tenant_id),
        )
        for name, scope_id, rpm, tpm in limits
    )
    reasoning = tuple(
        rules
        for rules in (tenant_terms.reasoning, key_rules)
        if rules is not None and not rules.is_empty
    )
    if not budgets and not rates and not reasoning:
        return None
    return Controls(
        tuple(budgets),
        rates,
        reasoning,
        tenant_terms.alert_thresholds,
        clamp_to_budget=bool(reasoning_modes) and not any(reasoning_modes),
    )


K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class LookupUnavailable(Exception):
    """A lookup failed or timed out and no recent enough value is known."""


# A cache entry older than this share of its ttl is reloaded in the background by the
# first call that reads it (the call itself is answered from the entry).
REFRESH_AHEAD = 0.75


class LookupExecutor(ThreadPoolExecutor):
    """The proxy's lookup thread (ledger reads off the event loop).

    Once it is shut down (the server stopping, while calls may still be ending),
    `try_submit` and `try_run` answer None instead of raising RuntimeError, and each
    caller decides what a stopping server means for its work; any other failure to
    schedule is raised."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="lookup")
        self.stopped = False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.stopped = True
        super().shutdown(wait, cancel_futures=cancel_futures)

    def try_submit(self, fn: Callable[..., T], /, *args: object) -> "Future[T] | None":
        try:
            return self.submit(fn, *args)
        except RuntimeError:
            if self.stopped:
                return None
            raise

    def try_run(self, fn: Callable[..., T], /, *args: object) -> "asyncio.Future[T] | None":
        """`try_submit` as an asyncio future of the running loop (what run_in_executor
        makes of a submission)."""
        future = self.try_submit(fn, *args)
        return None if future is None else asyncio.wrap_future(future)


class TtlCache(Generic[K, V]):
    """A process-local cache whose entries live `ttl` seconds; concurrent misses share one load.

    An entry read in the last quarter of its life is reloaded in the background (refresh
    ahead): a key read that late in its life by steady traffic does not make a call wait
    on the database (while the lookup thread keeps up), and no entry is ever served older
    than `ttl` (the bound a revoked key or a changed route relies on). An entry's age
    counts from when its load began, or from `read_at(value)` when that is earlier (a
    value built partly from data read before its load began).

    When a load fails (the loader raises, e.g. the database is down) or takes longer than
    `load_timeout` seconds, the last good value is served while it is at most `stale_for`
    seconds old; past that, or when there is none, `get` raises LookupUnavailable. A
    failure is never cached: the next call after `retry_after` seconds loads again (calls
    in between fail fast instead of each waiting on a dead database). The database out of
    reach (a connection error, a timeout) holds back every key's loads; any other failure
    (one key's data) holds back only that key's. A load that hangs stays the one shared
    load for its key until it ends, so waiters never pile up behind it.
    """

    def __init__(
        self,
        loader: Callable[[K], V],
        *,
        ttl: float,
        executor: LookupExecutor,
        read_at: Callable[[V], float | None] | None = None,
        max_entries: int = 100_000,
        stale_for: float = 0.0,
        load_timeout: float = 5.0,
        retry_after: float = 1.0,
    ) -> None:
        self._loader = loader
        self._read_at = read_at
        self._ttl = ttl
        self._refresh_after = ttl * REFRESH_AHEAD
        self._stale_for = max(stale_for, ttl)
        self._load_timeout = load_timeout
        self._retry_after = retry_after
        self._executor = executor
        self._max_entries = max_entries
        # key -> (monotonic time of the last good load, value): when the load began, or
        # when the value says its data was read (`read_at`), whichever is earlier.
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}
        # monotonic: no new loads before this after the database failed...
        self._failing_until = 0.0
        # ... and no new load of a key before this after its own load failed
        self._key_failing: dict[K, float] = {}

    def ready(self, key: K) -> tuple[float, V] | None:
        """The entry `get` answers at once (still good; a refresh ahead started if one is
        due), or None: then `get` must be awaited. The hot path asks this first, so the
        common call makes no coroutine.

        Call it on the event loop only (the loop's thread, inside a running loop): a due
        refresh starts its load on `asyncio.get_running_loop()`, so elsewhere it raises
        RuntimeError, and only when a refresh happens to be due."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if now - entry[0] >= self._ttl:
            return None
        if (
            now - entry[0] >= self._refresh_after
            and key not in self._loading
            and not self._held_back(key, now)
        ):
            # Refresh ahead: the entry is still good, so this call does not wait; the
            # next calls find the new value before the entry expires.
            self._load(key, now)
        return entry

    async def get(self, key: K) -> V:
        ready = self.ready(key)
        if ready is not None:
            return ready[1]
        entry = self._entries.get(key)
        now = time.monotonic()
        future = self._loading.get(key)
        if future is None:
            if self._held_back(key, now):
                return self._stale(key, entry, now, None)
            future = self._load(key, now)
            if future is None:  # the lookup executor is shut down: stopping
                return self._stale(key, entry, now, RuntimeError("lookups are shut down"))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._load_timeout)
        except Exception as exc:  # noqa: BLE001 - any failed load: stale or unavailable
            self._failed(key, exc)
            return self._stale(key, entry, time.monotonic(), exc)

    def _held_back(self, key: K, now: float) -> bool:
        return now < self._failing_until or now < self._key_failing.get(key, 0.0)

    def _failed(self, key: K, exc: BaseException) -> None:
        until = time.monotonic() + self._retry_after
        if isinstance(exc, (OperationalError, InterfaceError, TimeoutError)):
            self._failing_until = until  # the database: every key's loads wait
        else:
            if len(self._key_failing) >= self._max_entries:
                self._key_failing.clear()
            self._key_failing[key] = until  # this key's data: only its loads wait

    def _load(self, key: K, started: float) -> "asyncio.Future[V] | None":
        """None once the executor is shut down (the server stopping)."""
        future = self._executor.try_run(self._loader, key)
        if future is None:
            return None
        self._loading[key] = future
        future.add_done_callback(lambda done: self._loaded(key, started, done))
        return future

    def _loaded(self, key: K, started: float, done: "asyncio.Future[V]") -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if done.cancelled():
            return
        exc = done.exception()  # retrieved here: no "never retrieved"
        if exc is not None:
            # A failure is never cached. A refresh nobody waited on backs off like a
            # failed wait does.
            self._failed(key, exc)
            return
        if key not in self._entries and len(self._entries) >= self._max_entries:
            self._entries.clear()
        value = done.result()
        read_at = self._read_at(value) if self._read_at is not None else None
        self._entries[key] = (started if read_at is None else min(read_at, started), value)
        self._key_failing.pop(key, None)
        self._failing_until = 0.0

    def _stale(
        self, key: K, entry: tuple[float, V] | None, now: float, exc: BaseException | None
    ) -> V:
        if entry is not None and now - entry[0] < self._stale_for:
            if exc is not None:
                logger.warning("lookup failed (%r); serving the last good value", exc)
            return entry[1]
        raise LookupUnavailable(repr(exc) if exc else "lookups are failing") from exc
