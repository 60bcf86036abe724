"""Migrations metering 0022/0023 and billing 0012 from a world before routing: every
route becomes the single target "default" of its own alias (activity kept), grants move
to aliases, rates and deployments name their route, key history and records are left as
they were; the code of today then loads that world as single-target aliases (no plans)
and `route_set` without a target writes the same row. Backwards, the routes, grants,
rates and deployments are as before. Run against the migration graph itself."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import Deployment
from metering.models import Alias, Route, ServingCostRate, Tenant, UpstreamKeyPeriod, UsageRecord
from metering.proxy.callers import caller_context_load
from metering.selectors import current_cost_rates
from metering.services import route_set
from tests.migration_helpers import apps_before, leaf, migrate

BEFORE = [("metering", "0021_provider_roles"), ("billing", "0011_operator_endpoint_role")]
T0 = datetime(2026, 10, 1, tzinfo=UTC)
RATE = {
    "input_usd": Decimal("0.1"),
    "cache_read_usd": Decimal("0.01"),
    "cache_write_usd": Decimal("0.125"),
    "output_usd": Decimal("0.4"),
    "reasoning_usd": Decimal("0.4"),
}


@pytest.fixture
def old_apps():  # type: ignore[no-untyped-def]
    yield from apps_before(BEFORE)


def _old_world(apps):  # type: ignore[no-untyped-def]
    """Two routes (one inactive) on one account, a tenant granted both and one granted
    one, a rate and a deployment each, key history, and a record."""
    route_model = apps.get_model("metering", "Route")
    account = apps.get_model("metering", "ProviderAccount").objects.create(
        name="oa", provider="openai"
    )
    reasoner = route_model.objects.create(
        alias="reasoner",
        provider="openai",
        base_url="http://127.0.0.1:8100/v1",
        upstream_model="sim-reasoner",
        accelerator="nvidia-h100-sxm",
        provider_account=account,
        upstream_key_id="key_a",
    )
    retired = route_model.objects.create(
        alias="retired",
        provider="anthropic",
        base_url="https://api.anthropic.com/v1",
        upstream_model="claude-x",
        is_active=False,
    )
    tenant_model = apps.get_model("metering", "Tenant")
    acme, solo = tenant_model.objects.create(name="acme"), tenant_model.objects.create(name="solo")
    acme.allowed_routes.add(reasoner, retired)
    solo.allowed_routes.add(reasoner)
    key_model = apps.get_model("metering", "ApiKey")
    key = key_model.objects.create(tenant=acme, prefix="rk_old", key_hash="old-" + uuid.uuid4().hex)
    rate_model = apps.get_model("metering", "ServingCostRate")
    rates = {
        alias: rate_model.objects.create(
            alias=alias, accelerator="nvidia-h100-sxm", effective_from=T0, **RATE
        ).pk
        for alias in ("reasoner", "retired")
    }
    accelerator = apps.get_model("billing", "AcceleratorType").objects.create(
        key="test-gpu", vendor="test", source="test"
    )
    deployment_model = apps.get_model("billing", "Deployment")
    deployments = {
        alias: deployment_model.objects.create(
            alias=alias, version=1, accelerator=accelerator, effective_from=T0
        ).pk
        for alias in ("reasoner", "retired")
    }
    period = apps.get_model("metering", "UpstreamKeyPeriod").objects.create(
        route=reasoner, provider_account=account, upstream_key_id="key_a", valid_from=None
    )
    record = apps.get_model("metering", "UsageRecord").objects.create(
        request_id=uuid.uuid4(),
        tenant=acme,
        api_key=key,
        alias="reasoner",
        provider="openai",
        upstream_model="sim-reasoner",
        endpoint="chat.completions",
        status="completed",
        started_at=T0,
        finished_at=T0,
    )
    return {
        "routes": (reasoner.pk, retired.pk),
        "key_hash": key.key_hash,
        "rates": rates,
        "deployments": deployments,
        "period": period.pk,
        "record": record.request_id,
    }


@pytest.mark.django_db(transaction=True)
def test_routes_grants_rates_and_deployments_become_single_target_aliases(old_apps) -> None:  # type: ignore[no-untyped-def]
    old = _old_world(old_apps)
    migrate(leaf())
    reasoner_pk, retired_pk = old["routes"]
    aliases = {a.name: a for a in Alias.objects.all()}
    assert set(aliases) == {"reasoner", "retired"}
    assert (aliases["reasoner"].is_active, aliases["retired"].is_active) == (True, False)
    assert all(a.policy == "fallback" and a.rules == [] for a in aliases.values())
    reasoner = Route.objects.get(pk=reasoner_pk)
    assert (reasoner.alias_id, reasoner.name, reasoner.priority, reasoner.weight) == (
        "reasoner",
        "default",
        0,
        100,
    )
    assert (reasoner.max_concurrent, reasoner.first_byte_timeout_ms) == (None, None)
    assert Route.objects.get(pk=retired_pk).alias_id == "retired"
    grants = {
        t.name: sorted(t.allowed_aliases.values_list("name", flat=True))
        for t in Tenant.objects.all()
    }
    assert grants == {"acme": ["reasoner", "retired"], "solo": ["reasoner"]}
    assert ServingCostRate.objects.get(pk=old["rates"]["reasoner"]).route_id == reasoner_pk
    assert ServingCostRate.objects.get(pk=old["rates"]["retired"]).route_id == retired_pk
    assert Deployment.objects.get(pk=old["deployments"]["reasoner"]).route_id == reasoner_pk
    assert Deployment.objects.get(pk=old["deployments"]["retired"]).route_id == retired_pk
    period = UpstreamKeyPeriod.objects.get(pk=old["period"])
    assert (period.route_id, period.upstream_key_id, period.valid_from) == (
        reasoner_pk,
        "key_a",
        None,
    )
    record = UsageRecord.objects.get(request_id=old["record"])
    assert (record.route_id, record.attempt, record.failed_over, record.route_policy) == (
        None,
        None,
        None,
        None,
    )

    # today's code serves the migrated world as single-target aliases
    ctx = caller_context_load(old["key_hash"])
    assert ctx is not None and set(ctx.routes) == {"reasoner"} and ctx.plans == {}
    info = ctx.routes["reasoner"]
    assert (info.route_id, info.target, info.cost_rate_id) == (
        reasoner_pk,
        "default",
        old["rates"]["reasoner"],
    )
    assert current_cost_rates([reasoner_pk]) == {
        reasoner_pk: ServingCostRate.objects.get(pk=old["rates"]["reasoner"])
    }
    again = route_set(
        alias="reasoner",
        provider="openai",
        base_url="http://127.0.0.1:8100/v1",
        upstream_model="sim-reasoner-2",
    )
    assert again.pk == reasoner_pk and Route.objects.filter(alias_id="reasoner").count() == 1
    # the key history is untouched: the account and key did not change
    assert list(
        UpstreamKeyPeriod.objects.filter(route_id=reasoner_pk).values_list("pk", flat=True)
    ) == [old["period"]]


@pytest.mark.django_db(transaction=True)
def test_the_migrations_reverse_to_routes_and_route_grants(old_apps) -> None:  # type: ignore[no-untyped-def]
    old = _old_world(old_apps)
    migrate(leaf())
    back = migrate(BEFORE).loader.project_state(BEFORE).apps
    route_model = back.get_model("metering", "Route")
    reasoner_pk, retired_pk = old["routes"]
    assert dict(route_model.objects.values_list("pk", "alias")) == {
        reasoner_pk: "reasoner",
        retired_pk: "retired",
    }
    assert route_model.objects.get(pk=retired_pk).is_active is False
    tenants = back.get_model("metering", "Tenant").objects.all()
    assert {t.name: sorted(t.allowed_routes.values_list("alias", flat=True)) for t in tenants} == {
        "acme": ["reasoner", "retired"],
        "solo": ["reasoner"],
    }
    rate_model = back.get_model("metering", "ServingCostRate")
    assert sorted(rate_model.objects.values_list("alias", flat=True)) == ["reasoner", "retired"]
    deployment_model = back.get_model("billing", "Deployment")
    assert deployment_model.objects.count() == 2
    assert (
        back.get_model("metering", "UpstreamKeyPeriod").objects.get(pk=old["period"]).route_id
        == reasoner_pk
    )
    assert (
        back.get_model("metering", "UsageRecord").objects.filter(request_id=old["record"]).exists()
    )
