"""Writes on metering that other apps call: a serving cost rate is added exactly as given,
and a change is a new row in force from its instant, never an edit."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.ledger.record import Rates
from metering.models import ServingCostRate
from metering.selectors import current_alias_cost_rates
from metering.services import serving_cost_rate_create

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 10, 1, tzinfo=UTC)
RATES = Rates(
    input=Decimal("0.137682541514188259"),
    cache_read=Decimal("0.013768254151418826"),
    cache_write=Decimal("0.172103176892735324"),
    output=Decimal("0.412918902973171820"),
    reasoning=Decimal("0.412918902973171820"),
)


def test_serving_cost_rate_create_stores_the_rates_exactly_and_adds_a_row_per_change() -> None:
    first = serving_cost_rate_create(
        alias="reasoner",
        accelerator="nvidia-h100-sxm",
        effective_from=T0,
        rates=RATES,
        source={"deployment_id": 1},
    )
    stored = ServingCostRate.objects.get(pk=first.pk)
    assert (
        stored.input_usd,
        stored.cache_read_usd,
        stored.cache_write_usd,
        stored.output_usd,
        stored.reasoning_usd,
    ) == tuple(RATES)
    assert stored.accelerator == "nvidia-h100-sxm"
    assert stored.source == {"deployment_id": 1}

    cheaper = RATES._replace(output=Decimal("0.2"), reasoning=Decimal("0.2"))
    second = serving_cost_rate_create(
        alias="reasoner",
        accelerator="nvidia-h100-sxm",
        effective_from=T0 + timedelta(days=1),
        rates=cheaper,
        source={"deployment_id": 2},
    )
    assert ServingCostRate.objects.count() == 2
    assert ServingCostRate.objects.get(pk=first.pk).output_usd == RATES.output
    assert current_alias_cost_rates(["reasoner"], at=T0 + timedelta(hours=1))["reasoner"] == first
    assert current_alias_cost_rates(["reasoner"], at=T0 + timedelta(days=2))["reasoner"] == second
