"""The data the browser tests look at: two tenants with members of every role, keys,
usage over the last days (two aliases, two keys), a plan, a finalized invoice for the
previous month, a prepaid balance and a spend limit; and a finance-read staff user.

Written once per module and committed (the server process reads it). The numbers of the
other tenant ("globex") are distinctive, so a page that leaked them would show them."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from api.staff_tokens import staff_token_create
from billing.balances import balance_credit
from billing.invoicing.close import period_close
from billing.models import Invoice
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.calendar import month_start
from metering.ledger.record import Rates
from metering.models import ApiKey, SpendLimit, Tenant
from metering.services import (
    api_key_create,
    serving_cost_rate_create,
    tenant_allow_routes,
    tenant_create,
    tenant_member_set,
)
from tests.e2e.conftest import make_routes
from tests.staff import staff_user
from tests.usage_helpers import write_usage

STAFF_PASSWORD = "finance-reads-margins"  # noqa: S105 - a test user's password
OTHER_TENANT_TOKENS = 777_777  # globex's output tokens per record: never on acme's pages


@dataclass(frozen=True)
class Person:
    username: str
    password: str


@dataclass(frozen=True)
class TenantWorld:
    tenant: Tenant
    owner: Person
    keys: dict[str, ApiKey]  # by name
    raw_keys: dict[str, str]  # by name: the secret, for API calls of this tenant
    invoice: Invoice  # finalized, previous month


@dataclass(frozen=True)
class World:
    now: datetime  # the hour the usage is written up to
    acme: TenantWorld
    globex: TenantWorld
    developer: Person  # acme
    billing: Person  # acme
    finance: Person  # staff, finance-read
    finance_token: str  # its REST token


def _member(tenant: Tenant, username: str, role: str) -> Person:
    made = tenant_member_set(tenant=tenant, username=username, role=role, reset_password=True)
    assert made.password is not None
    return Person(username, made.password)


def _plan_version(code: str, starts: datetime):  # type: ignore[no-untyped-def]
    plan = plan_create(code=code, name=code.title())
    draft = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=starts - timedelta(days=31),
        base_fee=Decimal("10"),
        minimum_commitment=Decimal("0"),
        components=[
            {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.00")},
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4.00")},
            {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal("2.00")},
        ],
    )
    return plan_version_publish(version=draft)


def _tenant(name: str, owner: str, key_names: list[str], aliases: list[str]):  # type: ignore[no-untyped-def]
    tenant = tenant_create(name=name)
    tenant_allow_routes(tenant=tenant, aliases=aliases)
    created = {n: api_key_create(tenant=tenant, name=n) for n in key_names}
    return (
        tenant,
        _member(tenant, owner, "owner"),
        {n: c.api_key for n, c in created.items()},
        {n: c.raw_key for n, c in created.items()},
    )


def world_create(*, simulator_url: str) -> World:
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    previous_month = month_start(month_start(now) - timedelta(days=1))
    routes = make_routes(simulator_url)
    aliases = sorted({r.alias_id for r in routes})
    version = _plan_version("browser-standard", previous_month)
    # USD per 1M tokens of input, cache read, cache write, output, reasoning
    rates = {
        alias: serving_cost_rate_create(
            alias=alias,
            accelerator=accelerator,
            effective_from=previous_month - timedelta(days=1),
            rates=Rates(*(Decimal(r) for r in prices)),
            source={"test": "browser"},
        )
        for alias, accelerator, prices in (
            ("reasoner", "nvidia-h100-sxm", ("0.20", "0.05", "0.25", "0.80", "0.80")),
            ("thinker", "nvidia-h200-sxm", ("0.30", "0.07", "0.35", "1.10", "1.10")),
        )
    }

    acme, acme_owner, acme_keys, acme_raw = _tenant("acme", "ana", ["ci", "batch"], aliases)
    globex, globex_owner, globex_keys, globex_raw = _tenant("globex", "gina", ["gx"], aliases)
    for tenant in (acme, globex):
        subscription_create(tenant=tenant, plan_version=version, starts_at=previous_month)

    # acme: every day of the last 9 and every hour of the last 6, both keys, two aliases,
    # reasoning several times the visible output; the numbers differ per day and key.
    for day in range(1, 10):
        at = now - timedelta(days=day)
        write_usage(
            acme_keys["ci"],
            at,
            rates["reasoner"],
            alias="reasoner",
            input_tokens=1000 + day,
            output_tokens=200 + day,
            reasoning_tokens=1500 + 10 * day,
        )
        write_usage(
            acme_keys["batch"],
            at + timedelta(minutes=30),
            rates["thinker"],
            alias="thinker",
            input_tokens=3000 + day,
            cached_input_tokens=500,
            output_tokens=400 + day,
            reasoning_tokens=2600 + 10 * day,
        )
    for hour in range(1, 7):
        write_usage(
            acme_keys["ci"],
            now - timedelta(hours=hour),
            rates["reasoner"],
            alias="reasoner",
            input_tokens=100 * hour,
            output_tokens=20 * hour,
            reasoning_tokens=150 * hour,
        )
    # acme also used the previous month: that is its invoice.
    write_usage(
        acme_keys["ci"],
        previous_month + timedelta(days=3),
        rates["reasoner"],
        alias="reasoner",
        input_tokens=250_000,
        output_tokens=120_000,
        reasoning_tokens=600_000,
    )
    for day in (2, 5):
        write_usage(
            globex_keys["gx"],
            now - timedelta(days=day),
            rates["reasoner"],
            alias="reasoner",
            output_tokens=OTHER_TENANT_TOKENS,
            reasoning_tokens=OTHER_TENANT_TOKENS,
        )
    write_usage(
        globex_keys["gx"],
        previous_month + timedelta(days=7),
        rates["thinker"],
        alias="thinker",
        output_tokens=OTHER_TENANT_TOKENS,
    )

    balance_credit(
        tenant_id=acme.pk,
        kind="top_up",
        amount=Decimal("250"),
        idempotency_key="browser-top-up",
        description="browser test top-up",
    )
    SpendLimit.objects.create(tenant=acme, window="month", amount_usd=Decimal("100000"))

    invoices = {
        t.pk: period_close(tenant_id=t.pk, period_start=previous_month, as_of=now)
        for t in (acme, globex)
    }
    finance = staff_user("fin", "finance-read", password=STAFF_PASSWORD)
    return World(
        now=now,
        acme=TenantWorld(acme, acme_owner, acme_keys, acme_raw, invoices[acme.pk]),
        globex=TenantWorld(globex, globex_owner, globex_keys, globex_raw, invoices[globex.pk]),
        developer=_member(acme, "devon", "developer"),
        billing=_member(acme, "bea", "billing"),
        finance=Person("fin", STAFF_PASSWORD),
        finance_token=staff_token_create(user=finance, name="browser").raw_token,
    )
