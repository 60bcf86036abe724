"""Loading a caller's context: what it says is exactly what the loader before tenant
sharing said (`reference_load`, that loader verbatim, over a varied fixture), and what a
CallerLoader shares across a tenant's keys is read again once its share window is over:
a change reaches every key of the tenant within the cache's bound."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.balances import balance_account_open, balance_credit
from billing.models import WebhookEndpoint
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.control import terms
from metering.control.budgets import budget_list, budget_scopes
from metering.control.governance import ReasoningRules
from metering.control.holdcaps import hold_caps
from metering.control.scopes import Controls, RateScope
from metering.control.terms import TenantTerms
from metering.ledger.record import Rates
from metering.models import (
    Alias,
    ApiKey,
    HoldCap,
    RateLimit,
    ReasoningPolicy,
    Route,
    SpendLimit,
    Tenant,
)
from metering.proxy import callers
from metering.proxy.callers import (
    AliasPlan,
    CallerContext,
    CallerLoader,
    KeyRow,
    LookupExecutor,
    RouteInfo,
    TtlCache,
    _key_row_query,
    alias_plan_from,
    caller_context_load,
    hold_prices_of,
    key_row_load,
    route_info_from,
)
from metering.selectors import current_cost_rates
from metering.services import serving_cost_rate_create
from tests.factories import ApiKeyFactory, RouteFactory
from tests.metering.proxy.test_callers_cache import Clock, settled

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- the loader before tenant sharing, verbatim (commit cb017df) ------------------------


def reference_load(key_hash: str) -> CallerContext | None:
    """The caller behind a key digest, or None for an unknown, revoked or inactive key."""
    close_old_connections()
    api_key = (
        ApiKey.objects.select_related("tenant")
        .filter(key_hash=key_hash, revoked_at__isnull=True, tenant__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    # Every active target of every granted active alias, by (alias, priority, name): one
    # query, the alias row joined in for the plans.
    targets = list(
        Route.objects.filter(
            alias__tenants=api_key.tenant_id, alias__is_active=True, is_active=True
        )
        .select_related("alias")
        .order_by("alias", "priority", "name")
    )
    by_alias: dict[str, list[Route]] = {}
    for route in targets:
        by_alias.setdefault(route.alias_id, []).append(route)
    aliases = list(by_alias)
    rates = current_cost_rates(
        [r.pk for r in targets],
        aliases={r.pk: r.alias_id for r in targets},
        accelerators={r.pk: r.accelerator for r in targets},
    )
    tenant_terms = terms.tenant_terms_provider(api_key.tenant_id, aliases)
    controls = reference_controls(api_key, tenant_terms)
    caps = hold_caps(api_key.tenant_id, aliases) if controls and controls.budgets else {}
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
            plans[alias] = alias_plan_from(alias_targets[0].alias, infos)
    return CallerContext(
        tenant_id=api_key.tenant_id,
        api_key_id=api_key.pk,
        expires_at=api_key.expires_at,
        routes=routes,
        controls=controls,
        plans=plans,
    )


def _rules(policy: ReasoningPolicy) -> ReasoningRules:
    return ReasoningRules(
        allowed_efforts=frozenset(policy.allowed_efforts or ()),
        default_max_output_tokens=policy.default_max_output_tokens,
        max_output_tokens=policy.max_output_tokens,
        refuse=policy.mode == ReasoningPolicy.Mode.REFUSE,
    )


def reference_controls(api_key: ApiKey, tenant_terms: TenantTerms | None = None) -> Controls | None:
    """Budgets, rate scopes and reasoning rules that apply to calls with this key."""
    tenant_terms = tenant_terms or TenantTerms(spend_rates={})
    tenant_id = api_key.tenant_id
    specs = budget_list(
        tenant_id=tenant_id,
        api_key_id=api_key.pk,
        balance=tenant_terms.balance is not None,
        plan_reasoning_tokens=tenant_terms.monthly_reasoning_tokens,
        plan_refuses=tenant_terms.reasoning_refuse,
    )
    budgets = budget_scopes(
        specs, tenant_id=tenant_id, tenant_terms=tenant_terms, now=timezone.now()
    )
    reasoning_modes = [spec.refuse for spec in specs if spec.kind == "reasoning"]
    policy = ReasoningPolicy.objects.filter(api_key=api_key).first()
    rates = [
        RateScope(
            name="key" if r.api_key_id else "tenant",
            scope_id=str(r.api_key_id or tenant_id),
            requests_per_minute=r.requests_per_minute,
            tokens_per_minute=r.tokens_per_minute,
            tenant_id=str(tenant_id),
        )
        for r in sorted(
            RateLimit.objects.filter(tenant_id=tenant_id).filter(
                Q(api_key__isnull=True) | Q(api_key_id=api_key.pk)
            ),
            key=lambda r: r.api_key_id is None,  # the key's own limits first (headers)
        )
    ]
    reasoning = tuple(
        rules
        for rules in (tenant_terms.reasoning, _rules(policy) if policy else None)
        if rules is not None and not rules.is_empty
    )
    if not budgets and not rates and not reasoning:
        return None
    return Controls(
        tuple(budgets),
        tuple(rates),
        reasoning,
        tenant_terms.alert_thresholds,
        clamp_to_budget=bool(reasoning_modes) and not any(reasoning_modes),
    )


# --- a varied fixture ------------------------------------------------------------------


def cost(output: str) -> Rates:
    value = Decimal(output)
    return Rates(
        input=value / 4, cache_read=value / 40, cache_write=value / 2, output=value, reasoning=value
    )


def rate_for(route: Route | None, alias: str, output: str) -> None:
    serving_cost_rate_create(
        alias=alias,
        accelerator="nvidia-h100-sxm",
        effective_from=T0,
        rates=cost(output),
        source={},
        route_id=None if route is None else route.pk,
    )


def seed() -> dict[str, str]:
    """Key digests by name: keys with every kind of control, plain keys, a key of an
    inactive tenant, a revoked key, over single, multi-target, effort-routed (one with
    rules that no longer parse) and inactive aliases, with route and alias-wide rates."""
    solo = RouteFactory(alias="solo", name="default", api_key_env="LOAD_TEST_UNSET_ENV")
    rate_for(solo, "solo", "0.5")
    multi = [
        RouteFactory(alias="multi", name="h100", priority=1, weight=80, max_concurrent=64),
        RouteFactory(
            alias="multi", name="mi300", accelerator="amd-mi300x", first_byte_timeout_ms=2500
        ),
        RouteFactory(alias="multi", name="old", priority=-5, is_active=False),
    ]
    rate_for(multi[0], "multi", "0.4")
    rate_for(None, "multi", "0.3")  # alias-wide: the h100-less target has none of its own
    Alias.objects.filter(name="multi").update(policy=Alias.Policy.WEIGHTED, max_attempts=3)
    RouteFactory(alias="think", name="default")
    RouteFactory(alias="think", name="deep", priority=1)
    Alias.objects.filter(name="think").update(
        policy=Alias.Policy.EFFORT, rules=[{"efforts": ["high"], "target": "deep"}]
    )
    RouteFactory(alias="bad", name="default")
    RouteFactory(alias="bad", name="other")
    Alias.objects.filter(name="bad").update(policy=Alias.Policy.EFFORT, rules=[{"nonsense": 1}])
    RouteFactory(alias="off", name="default")
    Alias.objects.filter(name="off").update(is_active=False)
    HoldCap.objects.create(alias="multi", p99_output_tokens=4000, samples=100, computed_at=T0)
    HoldCap.objects.create(alias="solo", p99_output_tokens=900, samples=100, computed_at=T0)

    rich = Tenant.objects.create(name="rich")
    rich.allowed_aliases.add(*Alias.objects.all())
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="load", name="Load"),
            currency="USD",
            effective_from=T0,
            components=[
                {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.1")},
                {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4.4")},
            ],
            governance={
                "allowed_efforts": ["low", "medium"],
                "max_output_tokens": 50_000,
                "monthly_reasoning_tokens": 10**8,
                "reasoning_mode": "clamp",
            },
        )
    )
    subscription_create(tenant=rich, plan_version=version, starts_at=T0)
    balance_account_open(tenant_id=rich.id)
    balance_credit(tenant_id=rich.id, kind="top_up", amount=Decimal("100"), idempotency_key="s")
    WebhookEndpoint.objects.create(tenant=rich, url="https://e.test/h", secret="s", thresholds=[90])
    HoldCap.objects.create(
        tenant=rich, alias="solo", p99_output_tokens=700, samples=100, computed_at=T0
    )
    keys = {name: ApiKeyFactory(tenant=rich) for name in ("k1", "k2", "k3", "k4", "revoked")}
    SpendLimit.objects.create(tenant=rich, window="month", amount_usd=Decimal("500"))
    SpendLimit.objects.create(
        tenant=rich, api_key=keys["k1"], window="total", amount_usd=Decimal("50")
    )
    SpendLimit.objects.create(tenant=rich, window="total", amount_usd=Decimal("5000"))
    SpendLimit.objects.create(
        tenant=rich, api_key=keys["k2"], window="month", amount_usd=Decimal("0.5")
    )
    SpendLimit.objects.create(
        tenant=rich, api_key=keys["k2"], window="total", amount_usd=Decimal("9")
    )
    RateLimit.objects.create(tenant=rich, requests_per_minute=600)
    RateLimit.objects.create(tenant=rich, api_key=keys["k1"], tokens_per_minute=10**6)
    ReasoningPolicy.objects.create(
        api_key=keys["k1"], max_output_tokens=8000, monthly_reasoning_tokens=10**6
    )
    ReasoningPolicy.objects.create(
        api_key=keys["k2"], allowed_efforts=["low"], default_max_output_tokens=100, mode="refuse"
    )
    ApiKey.objects.filter(pk=keys["k4"].pk).update(expires_at=timezone.now() + timedelta(days=9))
    ApiKey.objects.filter(pk=keys["revoked"].pk).update(revoked_at=timezone.now())

    spare = Tenant.objects.create(name="spare")  # no plan, no tenant limits
    spare.allowed_aliases.add(*Alias.objects.filter(name__in=["solo", "multi"]))
    for name in ("budgeted", "rated", "plain"):
        keys[name] = ApiKeyFactory(tenant=spare)
    SpendLimit.objects.create(
        tenant=spare, api_key=keys["budgeted"], window="month", amount_usd=Decimal("7")
    )
    RateLimit.objects.create(tenant=spare, api_key=keys["rated"], requests_per_minute=5)
    ReasoningPolicy.objects.create(
        api_key=keys["rated"], monthly_reasoning_tokens=1000, mode="refuse"
    )
    keys["idle"] = ApiKeyFactory(tenant=Tenant.objects.create(name="idle", is_active=False))
    digests = {name: key.key_hash for name, key in keys.items()}
    digests["unknown"] = "0" * 64
    return digests


# --- what a context says --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_context_is_what_the_loader_before_sharing_made() -> None:
    digests = seed()
    shared = CallerLoader(share_for=3600.0)
    for name in ("k3", "plain"):  # another key of each tenant first: shared parts warm
        shared(digests[name])
    for name, digest in digests.items():
        # the key's row, by the query compiled once, is what its queryset gives
        queried = _key_row_query(digest).first()
        assert key_row_load(digest) == (None if queried is None else KeyRow._make(queried))
        expected = reference_load(digest)
        assert caller_context_load(digest) == expected, name
        assert shared(digest) == expected, name
    # the fixture reaches what it means to: controls of every kind, capped and not
    rich = reference_load(digests["k1"])
    assert rich is not None and rich.controls is not None
    assert {b.kind for b in rich.controls.budgets} == {"spend", "balance", "reasoning"}
    assert len(rich.controls.reasoning) == 2 and rich.routes["solo"].hold_cap == 700
    budgeted, plain = reference_load(digests["budgeted"]), reference_load(digests["plain"])
    assert budgeted is not None and budgeted.routes["multi"].hold_cap == 4000
    assert plain is not None and plain.controls is None and plain.routes["multi"].hold_cap is None
    assert reference_load(digests["revoked"]) is None and reference_load(digests["idle"]) is None


@pytest.mark.django_db(transaction=True)
def test_a_warm_load_reads_only_the_keys_own_rows() -> None:
    digests = seed()
    loader = CallerLoader(share_for=3600.0)
    loader(digests["k3"])
    with CaptureQueriesContext(connection) as captured:
        assert loader(digests["k1"]) is not None
    tables = [
        q["sql"].split(" FROM ", 1)[1].split()[0].strip('"')
        for q in captured.captured_queries
        if q["sql"].startswith("SELECT")
    ]
    assert tables == ["metering_apikey"]  # with its policy and limits joined in


# --- what a tenant's keys share, and for how long ----------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(callers, "time", fake)
    return fake


def solo_url(context: CallerContext | None) -> str:
    assert context is not None
    return context.routes["solo"].base_url


@pytest.mark.django_db(transaction=True)
def test_a_changed_route_reaches_every_key_of_the_tenant_when_the_share_ends(
    clock: Clock,
) -> None:
    digests = seed()
    loader = CallerLoader(share_for=1.0)
    assert solo_url(loader(digests["k3"])) == "http://127.0.0.1:9/v1"
    Route.objects.filter(alias="solo").update(base_url="http://127.0.0.2:9/v1")
    clock.now += 0.5
    shared = loader(digests["k2"])
    assert solo_url(shared) == "http://127.0.0.1:9/v1"  # the tenant's part, read 0.5 s ago
    assert shared is not None and shared.read_at == 1000.0  # ... and aged from then
    clock.now += 0.5
    assert solo_url(loader(digests["k2"])) == "http://127.0.0.2:9/v1"
    assert solo_url(loader(digests["k3"])) == "http://127.0.0.2:9/v1"


@pytest.mark.django_db(transaction=True)
def test_parts_past_their_window_are_dropped(clock: Clock) -> None:
    digests = seed()
    loader = CallerLoader(share_for=1.0)
    loader(digests["k3"])
    clock.now += 0.5
    loader(digests["plain"])
    assert loader.tenants_held() == 2
    clock.now += 1.1  # both parts are past their window: reading spare's again...
    loader(digests["budgeted"])
    assert loader.tenants_held() == 1  # ...drops rich's, nobody having read it since


@pytest.mark.django_db(transaction=True)
def test_a_cached_context_is_never_older_than_the_ttl_counting_from_its_shared_part(
    clock: Clock,
) -> None:
    digests = seed()
    loader = CallerLoader(share_for=1.0)
    executor = LookupExecutor()
    cache: TtlCache[str, CallerContext | None] = TtlCache(
        loader,
        ttl=2.0,
        executor=executor,
        read_at=lambda context: context.read_at if context is not None else None,
    )

    async def scenario() -> None:
        assert solo_url(await cache.get(digests["k3"])) == "http://127.0.0.1:9/v1"
        clock.now += 0.9
        # k2's first load shares the part read 0.9 s ago: its entry is that old already
        assert solo_url(await cache.get(digests["k2"])) == "http://127.0.0.1:9/v1"
        await asyncio.to_thread(
            Route.objects.filter(alias="solo").update, base_url="http://127.0.0.2:9/v1"
        )
        clock.now += 1.1  # 2 s after the part was read, 1.1 s after k2's entry was made
        assert solo_url(await cache.get(digests["k2"])) == "http://127.0.0.2:9/v1"
        await settled(cache)

    try:
        asyncio.run(scenario())
    finally:
        executor.submit(close_old_connections).result()
        executor.shutdown(wait=True)
