"""Seed a fault-suite database (run as a subprocess against the suite's own PostgreSQL):
`python -m tests.chaos.seed proxy|limit|billing ...`; prints one JSON object."""

import argparse
import json
import os
from datetime import UTC, datetime
from decimal import Decimal

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from django.contrib.auth.models import User  # noqa: E402

from api.permissions import ROLES, staff_role_set  # noqa: E402
from api.staff_tokens import staff_token_create  # noqa: E402
from billing.plans import (  # noqa: E402
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.models import ApiKey, RateLimit, ReasoningPolicy, SpendLimit, Tenant  # noqa: E402
from metering.services import (  # noqa: E402
    api_key_create,
    route_set,
    tenant_allow_routes,
    tenant_create,
)
from tests.usage_helpers import ensure_test_partitions, write_usage  # noqa: E402

SIM_KEY_ENV = "RECKON_SIMULATOR_API_KEY"
FAULTS = ("reset-mid-stream", "stall", "garbage")
OUTPUT_PER_M = Decimal("10")  # USD per 1M output (reasoning folds into output)
INPUT_PER_M = Decimal("2")


def _version(code: str, *, base: str = "0") -> object:
    plan = plan_create(code=code, name=code.title())
    return plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            base_fee=Decimal(base),
            components=[
                {"token_class": "input", "charge_model": "per_unit", "unit_price": INPUT_PER_M},
                {"token_class": "output", "charge_model": "per_unit", "unit_price": OUTPUT_PER_M},
            ],
        )
    )


def proxy(simulator_url: str, controls: bool) -> dict:
    aliases = []
    for alias, provider, path, model in [
        ("reasoner", "openai", "/v1", "sim-reasoner"),
        ("thinker", "anthropic", "/v1", "sim-thinker"),
        *[(f"{k}-openai", "openai", f"/faults/{k}/v1", "sim-reasoner") for k in FAULTS],
        *[(f"{k}-anthropic", "anthropic", f"/faults/{k}/v1", "sim-thinker") for k in FAULTS],
    ]:
        route_set(
            alias=alias,
            provider=provider,
            base_url=simulator_url + path,
            upstream_model=model,
            api_key_env=SIM_KEY_ENV,
        )
        aliases.append(alias)
    tenant = tenant_create(name="chaos")
    tenant_allow_routes(tenant=tenant, aliases=aliases)
    created = api_key_create(tenant=tenant, name="chaos")
    if controls:
        subscription_create(
            tenant=tenant,
            plan_version=_version("metered"),
            starts_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        RateLimit.objects.create(
            tenant=tenant, requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000
        )
        ReasoningPolicy.objects.create(
            api_key=created.api_key, monthly_reasoning_tokens=1_000_000_000, mode="refuse"
        )
    staff = User.objects.create_user("chaos-staff", is_staff=True)
    for role in ROLES:  # every staff operation is reachable (and so fuzzed)
        staff_role_set(username=staff.username, role=role)
    token = staff_token_create(user=staff).raw_token
    return {"tenant": str(tenant.id), "key": created.raw_key, "staff": token}


def limit(tenant_id: str, usd: str) -> dict:
    SpendLimit.objects.create(tenant_id=tenant_id, window="month", amount_usd=Decimal(usd))
    return {"limit_usd": usd}


def billing(tenants: int) -> dict:
    ensure_test_partitions()  # the usage below is in a past month (September 2026)
    version = _version("standard", base="10")
    for n in range(tenants):
        tenant = tenant_create(name=f"billed-{n:03d}")
        key = api_key_create(tenant=tenant, name="k").api_key
        subscription_create(
            tenant=tenant, plan_version=version, starts_at=datetime(2026, 9, 1, tzinfo=UTC)
        )
        write_usage(
            ApiKey.objects.get(pk=key.pk),
            datetime(2026, 9, 1 + n % 28, tzinfo=UTC),
            input_tokens=1_000 + 137 * n,
            output_tokens=2_000 + 311 * n,
            reasoning_tokens=500 + 71 * n,
        )
    return {"tenants": Tenant.objects.count()}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy")
    p.add_argument("--simulator-url", required=True)
    p.add_argument("--controls", action="store_true")
    p = sub.add_parser("limit")
    p.add_argument("--tenant", required=True)
    p.add_argument("--usd", required=True)
    p = sub.add_parser("billing")
    p.add_argument("--tenants", type=int, default=12)
    args = parser.parse_args()
    if args.command == "proxy":
        out = proxy(args.simulator_url, args.controls)
    elif args.command == "limit":
        out = limit(args.tenant, args.usd)
    else:
        out = billing(args.tenants)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
