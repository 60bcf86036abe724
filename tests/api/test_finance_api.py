import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from billing.costs.catalogue import catalogue_load
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.models import ServingCostRate
from tests.factories import ApiKeyFactory
from tests.staff import staff_client
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def staff() -> APIClient:
    return staff_client("cfo", "operator", "finance-read")


def test_operator_sets_costs_and_reads_margins(staff: APIClient) -> None:
    catalogue_load()
    listed = {a["key"]: a for a in staff.get("/api/v1/accelerators").json()}
    assert listed["nvidia-h100-sxm"]["hourly_usd"] == "3.49"
    assert listed["intel-gaudi3"]["missing_for_pricing"] == ["hourly_usd"]
    created = staff.post(
        "/api/v1/accelerators/intel-gaudi3/cost-basis",
        {
            "mode": "rented",
            "hourly_usd": "2.10",
            "effective_from": T0.isoformat(),
        },
        format="json",
    )
    assert created.status_code == 201 and created.json() == {
        "accelerator": "intel-gaudi3",
        "version": 2,
        "hourly_usd": "2.1",
    }
    deployed = staff.post(
        "/api/v1/deployments",
        {
            "alias": "reasoner",
            "accelerator": "nvidia-h100-sxm",
            "decode_tokens_per_s": "3913",
            "prefill_tokens_per_s": "11739",
            "effective_from": T0.isoformat(),
        },
        format="json",
    )
    assert deployed.status_code == 201
    assert deployed.json()["cost_per_million_usd"]["reasoning"].startswith("0.41291")
    assert (
        staff.post(
            "/api/v1/accelerators/nvidia-h100-sxm/margin-policy",
            {
                "target_margin": "0.6",
                "minimum_margin": "0.7",
                "effective_from": T0.isoformat(),
            },
            format="json",
        ).status_code
        == 400
    )  # minimum above target

    key = ApiKeyFactory()
    plan = plan_create(code="p", name="P")
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=T0,
            components=[
                {"token_class": "output", "charge_model": "per_unit", "unit_price": "4"},
            ],
        )
    )
    subscription_create(tenant=key.tenant, plan_version=version, starts_at=T0)
    write_usage(
        key,
        T0 + timedelta(days=2),
        ServingCostRate.objects.get(),
        output_tokens=500_000,
        reasoning_tokens=1_500_000,
    )
    report = staff.get(
        "/api/v1/finance/margins", {"period": "2026-10", "group_by": "accelerator"}
    ).json()
    (row,) = report["rows"]
    assert row["key"] == ["nvidia-h100-sxm"] and row["revenue_usd"] == "8"
    assert row["reasoning_share_of_cost"] == "0.75"
    body = staff.get(
        "/api/v1/finance/margins.csv", {"period": "2026-10", "group_by": "tenant,alias"}
    ).content.decode()
    (line,) = list(csv.DictReader(io.StringIO(body)))
    assert line["alias"] == "reasoner" and line["revenue_usd"] == "8"
    whatif = staff.get(
        "/api/v1/finance/whatif",
        {
            "period": "2026-10",
            "accelerator": "amd-mi300x",
            "alias": "reasoner",
            "target_margin": "0.5",
            "minimum_margin": "0.2",
        },
    ).json()
    assert whatif["alternative"]["accelerator"] == "amd-mi300x"
    assert whatif["alternative"]["policy"] == {"target_margin": "0.5", "minimum_margin": "0.2"}
    assert (
        staff.get(
            "/api/v1/finance/margins", {"period": "2026-10", "group_by": "planet"}
        ).status_code
        == 400
    )


def test_tenants_cannot_read_finance() -> None:
    from metering.services import api_key_create

    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=ApiKeyFactory().tenant).raw_key}"
    )
    assert client.get("/api/v1/finance/margins", {"period": "2026-10"}).status_code == 403
    assert client.get("/api/v1/accelerators").status_code == 403
