"""Hardware cost basis: the accelerator catalogue, versioned cost bases and deployments,
and the serving cost rates the proxy stamps on every record. Arithmetic lives in
billing/costs/formulas.py (pure); margin policies and price floors in margins.py.

Invariants:
- cost bases, deployments and rates are never edited: a change is a new row in force
  from an instant on, so costs already stamped on records and past reports never move;
- a rate is published only when every figure it needs is known: a catalogue row with a
  missing price or throughput refuses to price until an operator supplies it.
"""

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Max

from billing.costs import formulas
from billing.models import (
    AcceleratorType,
    CalibrationRun,
    CostBasisVersion,
    Deployment,
)
from config.errors import ApplicationError, NotFound
from metering.models import ServingCostRate
from metering.usage import COST_RATE_FIELDS, TOKEN_CLASSES

SEED_FROM = datetime(2020, 1, 1, tzinfo=UTC)
RATE_QUANTUM = Decimal("1e-18")  # rates are stored with 18 decimals (rounded half-up once)


class CannotPrice(ApplicationError):
    code = "cost_data_missing"


def _opt(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


# --- catalogue and versions ----------------------------------------------------------


@transaction.atomic
def catalogue_load(*, path: Path | None = None) -> int:
    """Load the accelerator catalogue (idempotent). A type with no cost basis yet gets
    version 1 (rented, the catalogue's hourly price, possibly unknown)."""
    created = 0
    for row in formulas.load_catalogue(path):
        accelerator, _ = AcceleratorType.objects.update_or_create(
            key=row.key,
            defaults={
                "vendor": row.vendor,
                "memory_gb": row.memory_gb,
                "tdp_watts": row.tdp_watts,
                "example_model": row.example_model,
                "source": row.source,
            },
        )
        if not accelerator.cost_bases.exists():
            CostBasisVersion.objects.create(
                accelerator=accelerator,
                version=1,
                mode=CostBasisVersion.Mode.RENTED,
                hourly_usd=row.hourly_usd,
                effective_from=SEED_FROM,
                note="seed catalogue",
            )
            created += 1
    return created


def accelerator_get(key: str) -> AcceleratorType:
    accelerator = AcceleratorType.objects.filter(key=key).first()
    if accelerator is None:
        raise NotFound(f"Unknown accelerator type {key!r}.")
    return accelerator


@transaction.atomic
def cost_basis_create(
    *, accelerator: AcceleratorType, effective_from: datetime, **fields: Any
) -> CostBasisVersion:
    AcceleratorType.objects.select_for_update().get(pk=accelerator.pk)
    last = accelerator.cost_bases.aggregate(v=Max("version"))["v"] or 0
    version = CostBasisVersion.objects.create(
        accelerator=accelerator, version=last + 1, effective_from=effective_from, **fields
    )
    for alias in (
        Deployment.objects.filter(accelerator=accelerator)
        .values_list("alias", flat=True)
        .distinct()
    ):
        deployment = deployment_in_force(alias=alias, at=effective_from)
        if deployment is not None and deployment.accelerator_id == accelerator.pk:
            cost_rate_publish(alias=alias, at=effective_from)
    return version


@transaction.atomic
def deployment_set(
    *,
    alias: str,
    accelerator: AcceleratorType,
    effective_from: datetime,
    decode_tokens_per_s: Decimal | None,
    prefill_tokens_per_s: Decimal | None,
    utilization: Decimal = formulas.DEFAULT_UTILIZATION,
    cache_read_factor: Decimal = Decimal("0.1"),
    cache_write_factor: Decimal = Decimal("1.25"),
    calibration: CalibrationRun | None = None,
) -> Deployment:
    last = Deployment.objects.filter(alias=alias).aggregate(v=Max("version"))["v"] or 0
    deployment = Deployment.objects.create(
        alias=alias,
        version=last + 1,
        accelerator=accelerator,
        decode_tokens_per_s=decode_tokens_per_s,
        prefill_tokens_per_s=prefill_tokens_per_s,
        utilization=utilization,
        cache_read_factor=cache_read_factor,
        cache_write_factor=cache_write_factor,
        effective_from=effective_from,
        calibration=calibration,
    )
    cost_rate_publish(alias=alias, at=effective_from)
    return deployment


def deployment_in_force(*, alias: str, at: datetime) -> Deployment | None:
    return (
        Deployment.objects.filter(alias=alias, effective_from__lte=at)
        .select_related("accelerator")
        .order_by("-effective_from", "-version")
        .first()
    )


def cost_basis_in_force(*, accelerator: AcceleratorType, at: datetime) -> CostBasisVersion | None:
    return (
        accelerator.cost_bases.filter(effective_from__lte=at)
        .order_by("-effective_from", "-version")
        .first()
    )


def hourly_cost_of(basis: CostBasisVersion) -> Decimal:
    key = basis.accelerator.key
    if basis.mode == CostBasisVersion.Mode.RENTED:
        spec: formulas.RentedCost | formulas.OwnedCost = formulas.RentedCost(_opt(basis.hourly_usd))
    else:
        spec = formulas.OwnedCost(
            purchase_price_usd=_opt(basis.purchase_price_usd),
            amortization_years=_opt(basis.amortization_years),
            tdp_watts=basis.accelerator.tdp_watts,
            power_usd_per_kwh=Decimal(basis.power_usd_per_kwh),
            pue=Decimal(basis.pue),
            other_opex_per_hour=Decimal(basis.other_opex_per_hour),
        )
    try:
        return formulas.hourly_cost(spec, accelerator=key)
    except formulas.MissingCostData as exc:
        raise CannotPrice(str(exc), {"accelerator": key, "missing": list(exc.fields)}) from exc


def class_costs_of(deployment: Deployment, basis: CostBasisVersion) -> formulas.ClassCosts:
    throughput = formulas.Throughput(
        decode_tokens_per_s=_opt(deployment.decode_tokens_per_s),
        prefill_tokens_per_s=_opt(deployment.prefill_tokens_per_s),
        utilization=Decimal(deployment.utilization),
        cache_read_factor=Decimal(deployment.cache_read_factor),
        cache_write_factor=Decimal(deployment.cache_write_factor),
    )
    try:
        return formulas.class_costs(
            hourly_cost_of(basis), throughput, accelerator=basis.accelerator.key
        )
    except formulas.MissingCostData as exc:
        raise CannotPrice(
            str(exc), {"alias": deployment.alias, "missing": list(exc.fields)}
        ) from exc


@transaction.atomic
def cost_rate_publish(*, alias: str, at: datetime) -> ServingCostRate:
    """Freeze the per-class cost of serving `alias` from `at` on (deployment x cost basis)."""
    deployment = deployment_in_force(alias=alias, at=at)
    if deployment is None:
        raise NotFound(f"No deployment of {alias!r} in force at {at:%Y-%m-%d %H:%M}.")
    basis = cost_basis_in_force(accelerator=deployment.accelerator, at=at)
    if basis is None:
        raise CannotPrice(f"No cost basis for {deployment.accelerator.key} at {at:%Y-%m-%d %H:%M}.")
    costs = class_costs_of(deployment, basis)
    q = {
        name: value.quantize(RATE_QUANTUM, rounding=ROUND_HALF_UP)
        for name, value in costs.as_dict().items()
    }
    return ServingCostRate.objects.create(
        alias=alias,
        accelerator=deployment.accelerator.key,
        effective_from=at,
        **{COST_RATE_FIELDS[token_class]: q[token_class] for token_class in TOKEN_CLASSES},
        source={
            "deployment_id": deployment.pk,
            "deployment_version": deployment.version,
            "cost_basis_version_id": basis.pk,
            "cost_basis_version": basis.version,
            "hourly_usd": str(hourly_cost_of(basis)),
            "decode_tokens_per_s": str(deployment.decode_tokens_per_s),
            "prefill_tokens_per_s": str(deployment.prefill_tokens_per_s),
            "utilization": str(deployment.utilization),
        },
    )


def rate_costs(rate: ServingCostRate) -> formulas.ClassCosts:
    """A published rate's per-class costs (column ``<token class>_usd``)."""
    return formulas.ClassCosts(
        **{
            token_class: getattr(rate, COST_RATE_FIELDS[token_class])
            for token_class in TOKEN_CLASSES
        }
    )
