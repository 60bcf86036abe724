"""The quick start's demo data: the whole chain for the tenant "demo", from cost bases to a
finalized invoice, so every console page has something true to show.

`demo_seed` (called by `manage.py quickstart`, i.e. `make run`) makes, each once:
- the accelerator catalogue, a margin policy per simulator accelerator, a deployment of
  each simulator alias with its published serving cost rate (the chain `deployment_set`
  runs), in force from the start of the history;
- a published tiered plan, "Demo tiered (demo data)" (graduated tiers on input, visible
  output and hidden reasoning per alias, and a base fee), and the tenant's subscription;
- a prepaid top-up, a monthly spend limit on the tenant and one on a key (alerts use the
  default thresholds 50/80/100 %), a rate limit and a reasoning policy on another key;
- ~60 days of usage history through the ledger's write path (metering/demo.py);
- every period that is due closed into a finalized invoice (`periods_close`; the Stripe
  push is queued only when STRIPE_API_KEY is set), and the alerts evaluated.

Idempotent: the history is anchored on the subscription's start (found, not recomputed,
on later runs), rows are found by their demo names, credits carry an idempotency key,
closes and alerts are idempotent themselves; run again later, it adds the hours and
closes the periods that passed in between, and nothing twice.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from billing.alerts import alerts_evaluate
from billing.balances import balance_account_open, balance_credit
from billing.costs.catalogue import (
    accelerator_get,
    catalogue_csv_read,
    catalogue_load,
    deployment_set,
)
from billing.costs.margins import margin_policy_set
from billing.invoicing.close import periods_close, periods_due
from billing.models import BalanceEntry, Deployment, Invoice, MarginPolicy, Plan, Subscription
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from billing.pricing.periods import period_containing
from metering import demo
from metering.models import Tenant

DEMO_PLAN_CODE = "demo-tiered"
DEMO_PLAN_NAME = f"Demo tiered {demo.DEMO_MARK}"
HISTORY_DAYS = 61
TOP_UP_USD = Decimal("300.00")
GRANT_USD = Decimal("150.00")
TENANT_MONTHLY_LIMIT_USD = Decimal("300")
KEY_MONTHLY_LIMIT_USD = Decimal("12")
TARGET_MARGIN, MINIMUM_MARGIN = Decimal("0.60"), Decimal("0.40")


def _tiers(*prices: tuple[int | None, str]) -> list[dict[str, Any]]:
    """Graduated tiers: (up to this many million tokens, or None for the rest; USD per 1M)."""
    return [
        {"up_to": None if up_to is None else Decimal(up_to), "unit_price": Decimal(price)}
        for up_to, price in prices
    ]


def demo_plan_components() -> list[dict[str, Any]]:
    """Per alias: input, visible output and hidden reasoning, each on graduated tiers
    (per 1M tokens); cache reads and writes of every alias on one flat price."""
    components: list[dict[str, Any]] = []
    for alias in demo.DEMO_ALIASES:
        components += [
            {
                "token_class": "input",
                "aliases": [alias],
                "charge_model": "graduated",
                "tiers": _tiers((1, "8"), (None, "6")),
                "description": f"Input, {alias}",
            },
            {
                "token_class": "output",
                "aliases": [alias],
                "charge_model": "graduated",
                "tiers": _tiers((1, "40"), (None, "32")),
                "description": f"Visible output, {alias}",
            },
            {
                "token_class": "reasoning",
                "aliases": [alias],
                "charge_model": "graduated",
                "tiers": _tiers((1, "40"), (3, "32"), (None, "24")),
                "description": f"Hidden reasoning, {alias}",
            },
        ]
    for token_class, price in (("cache_read", "2"), ("cache_write", "10")):
        components.append(
            {
                "token_class": token_class,
                "charge_model": "per_unit",
                "unit_price": Decimal(price),
                "description": f"{token_class.replace('_', ' ').capitalize()}, every alias",
            }
        )
    return components


@dataclass(frozen=True)
class DemoSeed:
    tenant: Tenant
    aliases: list[str]
    history_since: datetime
    records_written: int  # by this run (0 when the history was already there)
    invoices: list[Invoice]  # the demo tenant's finalized invoices, oldest first
    alerts_fired: int  # by this run
    seconds: float


def demo_costs_set(*, since: datetime) -> None:
    """Catalogue, margin policies, deployments and serving cost rates of the simulator's
    accelerators (a deployment is made only for an alias that has none)."""
    catalogue_load()
    throughput = {row.key: row.output_tokens_per_s for row in catalogue_csv_read()}
    for route in demo.DEMO_ROUTES:
        accelerator = accelerator_get(route.accelerator)
        if not MarginPolicy.objects.filter(accelerator=accelerator).exists():
            margin_policy_set(
                accelerator=accelerator,
                target_margin=TARGET_MARGIN,
                minimum_margin=MINIMUM_MARGIN,
                effective_from=since,
            )
        if not Deployment.objects.filter(alias=route.alias).exists():
            decode = throughput[route.accelerator] or Decimal(2000)
            deployment_set(
                alias=route.alias,
                accelerator=accelerator,
                effective_from=since,
                decode_tokens_per_s=decode,
                prefill_tokens_per_s=decode * 10,
            )


def demo_subscription_set(*, tenant: Tenant, since: datetime) -> Subscription:
    """The tenant's subscription to the demo plan (published once), from `since`; an
    existing subscription of the tenant is kept whatever its plan."""
    existing = Subscription.objects.filter(tenant=tenant).order_by("starts_at").first()
    if existing is not None:
        return existing
    plan = Plan.objects.filter(code=DEMO_PLAN_CODE).first() or plan_create(
        code=DEMO_PLAN_CODE, name=DEMO_PLAN_NAME
    )
    version = plan.versions.filter(status="published").order_by("version").first()
    if version is None:
        version = plan.versions.order_by("version").first() or plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=since,
            components=demo_plan_components(),
            base_fee=Decimal("49"),
        )
        version = plan_version_publish(version=version)
    return subscription_create(tenant=tenant, plan_version=version, starts_at=since)


def demo_balance_set(*, tenant: Tenant, since: datetime) -> None:
    """A top-up from the start (it pays the first invoices, then runs out) and a grant
    that expires, from a few days before the first run's end of history (it pays the
    current period). The account never hard-stops: the quick start's calls must go on
    whatever the demo history spent."""
    balance_account_open(tenant_id=tenant.pk, currency="USD", hard_stop=False)
    balance_credit(
        tenant_id=tenant.pk,
        kind=BalanceEntry.Kind.TOP_UP,
        amount=TOP_UP_USD,
        idempotency_key="demo-top-up",
        effective_at=since,
        description=f"Prepaid top-up {demo.DEMO_MARK}",
    )
    granted = since + timedelta(days=HISTORY_DAYS - 3)
    balance_credit(
        tenant_id=tenant.pk,
        kind=BalanceEntry.Kind.GRANT,
        amount=GRANT_USD,
        idempotency_key="demo-grant",
        effective_at=granted,
        expires_at=granted + timedelta(days=90),
        description=f"Promotional credit {demo.DEMO_MARK}",
    )


def demo_seed(*, simulator_url: str, now: datetime | None = None) -> DemoSeed:
    """Seed (or top up) the demo data; see the module docstring."""
    started = time.perf_counter()
    now = now or timezone.now()
    aliases = demo.demo_routes_set(simulator_url=simulator_url)
    tenant = demo.demo_tenant_set(aliases=aliases)
    first = Subscription.objects.filter(tenant=tenant).order_by("starts_at").first()
    since = (
        first.starts_at
        if first is not None
        else (now - timedelta(days=HISTORY_DAYS)).replace(minute=0, second=0, microsecond=0)
    )
    demo_costs_set(since=since)
    subscription = demo_subscription_set(tenant=tenant, since=since)
    since = subscription.starts_at
    keys = demo.demo_keys_set(tenant=tenant)
    demo.demo_limits_set(
        tenant=tenant,
        keys=keys,
        tenant_monthly_usd=TENANT_MONTHLY_LIMIT_USD,
        key_monthly_usd=KEY_MONTHLY_LIMIT_USD,
    )
    demo_balance_set(tenant=tenant, since=since)
    written = demo.demo_usage_write(tenant=tenant, keys=keys, since=since, until=now)
    grace = timedelta(hours=settings.RECKON_INVOICE_GRACE_HOURS)
    for due in sorted(
        (d for d in periods_due(as_of=now) if d.tenant_id == tenant.pk),
        key=lambda d: d.period_start,
    ):
        # closed as the beat would have closed it: once its grace period was over
        end = period_containing(subscription.anchor_day, due.period_start).end
        periods_close(tenant_ids=[tenant.pk], period_start=due.period_start, as_of=end + grace)
    fired = alerts_evaluate(tenant_id=tenant.pk, at=now)
    invoices = list(
        Invoice.objects.filter(tenant=tenant, status=Invoice.Status.FINALIZED).order_by(
            "period_start"
        )
    )
    return DemoSeed(
        tenant=tenant,
        aliases=aliases,
        history_since=since,
        records_written=written,
        invoices=invoices,
        alerts_fired=len(fired),
        seconds=time.perf_counter() - started,
    )
