"""Hardware cost basis: the accelerator catalogue (read from the packaged CSV and seeded
into the database), versioned cost bases and deployments, and the serving cost rates the
proxy stamps on every record (published through metering.services). Arithmetic lives in
billing/costs/formulas.py (pure); margin policies and price floors in margins.py.

Invariants:
- cost bases, deployments and rates are never edited: a change is a new row in force
  from an instant on, so costs already stamped on records and past reports never move;
- a rate is published only when every figure it needs is known: a catalogue row with a
  missing price or throughput refuses to price until an operator supplies it;
- deployments and rates are per target (`Deployment.route`, `ServingCostRate.route`): a
  rate is published for the target its deployment serves (none: an alias deployed before
  any route served it, whose rate counts for every target without its own).
"""

import csv
import decimal
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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
from metering.ledger.record import Rates
from metering.models import Route, ServingCostRate
from metering.services import alias_target_get, serving_cost_rate_create
from metering.usage import COST_RATE_FIELDS, TOKEN_CLASSES

SEED_FROM = datetime(2020, 1, 1, tzinfo=UTC)
RATE_QUANTUM = Decimal("1e-18")  # rates are stored with 18 decimals (rounded half-up once)


class CannotPrice(ApplicationError):
    code = "cost_data_missing"


def _opt(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


# --- The catalogue file (billing/data/accelerators.csv) ------------------------------

CATALOGUE_COLUMNS: tuple[str, ...] = (
    "accelerator",
    "hourly_usd",
    "tdp_watts",
    "memory_gb",
    "example_model",
    "output_tokens_per_s",
    "source",
)
_NULL_MARKERS = ("null", "")


@dataclass(frozen=True)
class CatalogueRow:
    """One row of accelerators.csv, parsed; ``None`` where the source had no value."""

    key: str  # stable accelerator id, "<vendor>-<model>", e.g. "nvidia-h100-sxm"
    hourly_usd: Decimal | None  # rental price, USD per accelerator-hour
    tdp_watts: int | None  # thermal design power of one accelerator, watts
    memory_gb: int | None  # on-package memory, GB
    example_model: str  # the model/benchmark behind output_tokens_per_s ("" when none)
    output_tokens_per_s: Decimal | None  # decode tokens per second per accelerator
    source: str  # where the price, TDP and throughput come from (never empty)

    @property
    def vendor(self) -> str:
        """The vendor from the key prefix: "nvidia", "amd", "intel", "google", "aws"."""
        return self.key.split("-", 1)[0]


def _optional_decimal(text: str, what: str) -> Decimal | None:
    if text.strip() in _NULL_MARKERS:
        return None
    try:
        number = Decimal(text.strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{what} is not a number: {text!r}") from None
    return formulas.checked_non_negative(number, what)


def _optional_int(text: str, what: str) -> int | None:
    if text.strip() in _NULL_MARKERS:
        return None
    try:
        number = int(text.strip())
    except ValueError:
        raise ValueError(f"{what} is not an integer: {text!r}") from None
    if number < 0:
        raise ValueError(f"{what} must be >= 0, got {number}")
    return number


def catalogue_csv_read(path: Path | None = None) -> list[CatalogueRow]:
    """Every row of the accelerator catalogue, in file order.

    ``path`` defaults to the packaged ``billing/data/accelerators.csv``. ``null`` or an
    empty cell in a numeric column parses to ``None``. A file with other columns, a row
    with too few or too many cells, a duplicate or empty key, a negative or malformed
    number, or an empty source is refused (``ValueError``).
    """
    if path is None:
        text = (
            resources.files("billing.data").joinpath("accelerators.csv").read_text(encoding="utf-8")
        )
    else:
        text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if tuple(reader.fieldnames or ()) != CATALOGUE_COLUMNS:
        raise ValueError(f"catalogue columns must be {CATALOGUE_COLUMNS}, got {reader.fieldnames}")
    rows: list[CatalogueRow] = []
    seen: set[str] = set()
    for line_number, record in enumerate(reader, start=2):
        key = (record["accelerator"] or "").strip()
        where = f"line {line_number} ({key or 'no key'})"
        if None in record or None in record.values():  # DictReader's marks for a ragged row
            raise ValueError(f"{where}: expected {len(CATALOGUE_COLUMNS)} columns")
        if not key:
            raise ValueError(f"{where}: empty accelerator key")
        if key in seen:
            raise ValueError(f"{where}: duplicate accelerator key")
        seen.add(key)
        source = (record["source"] or "").strip()
        if not source:
            raise ValueError(f"{where}: every row must keep its source")
        rows.append(
            CatalogueRow(
                key=key,
                hourly_usd=_optional_decimal(record["hourly_usd"], f"{where} hourly_usd"),
                tdp_watts=_optional_int(record["tdp_watts"], f"{where} tdp_watts"),
                memory_gb=_optional_int(record["memory_gb"], f"{where} memory_gb"),
                example_model=(record["example_model"] or "").strip(),
                output_tokens_per_s=_optional_decimal(
                    record["output_tokens_per_s"], f"{where} output_tokens_per_s"
                ),
                source=source,
            )
        )
    return rows


# --- The catalogue in the database, versions and rates -------------------------------


@transaction.atomic
def catalogue_load(*, path: Path | None = None) -> int:
    """Load the accelerator catalogue (idempotent). A type with no cost basis yet gets
    version 1 (rented, the catalogue's hourly price, possibly unknown)."""
    created = 0
    for row in catalogue_csv_read(path):
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
    served = list(
        Deployment.objects.filter(accelerator=accelerator)
        .values_list("alias", "route_id")
        .distinct()
    )
    routes = Route.objects.in_bulk([route_id for _, route_id in served if route_id is not None])
    for alias, route_id in sorted(served, key=lambda pair: (pair[0], pair[1] or 0)):
        route = None if route_id is None else routes[route_id]
        deployment = deployment_in_force(alias=alias, at=effective_from, route=route)
        if deployment is not None and deployment.accelerator_id == accelerator.pk:
            cost_rate_publish(alias=alias, at=effective_from, route=route)
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
    target: str | None = None,
) -> Deployment:
    """Record a new deployment of `alias` (of its `target`; None: its only target, or no
    target for an alias no route serves yet) and publish its serving cost rate."""
    route = deployment_target(alias=alias, target=target)
    last = Deployment.objects.filter(alias=alias).aggregate(v=Max("version"))["v"] or 0
    deployment = Deployment.objects.create(
        alias=alias,
        route=route,
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
    cost_rate_publish(alias=alias, at=effective_from, route=route)
    return deployment


def deployment_target(*, alias: str, target: str | None = None) -> Route | None:
    """The target a deployment of `alias` serves: the named one, or the alias's only one;
    None for an alias no route serves yet. Refused when several and none is named."""
    return alias_target_get(alias=alias, target=target)


# `route="any"`: the alias's latest deployment whatever target it serves (one-target
# aliases, and reports that compare accelerators per alias).
AnyTarget = Literal["any"]


def deployment_in_force(
    *, alias: str, at: datetime, route: Route | None | AnyTarget = "any"
) -> Deployment | None:
    """The deployment of `alias` in force at `at`: of `route` (None: made for no target),
    or, by default, the latest whatever its target."""
    deployments = Deployment.objects.filter(alias=alias, effective_from__lte=at)
    if route != "any":
        deployments = deployments.filter(route=route)
    return deployments.select_related("accelerator").order_by("-effective_from", "-version").first()


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


def class_costs_of(deployment: Deployment, basis: CostBasisVersion) -> Rates:
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
def cost_rate_publish(
    *, alias: str, at: datetime, route: Route | None | AnyTarget = "any"
) -> ServingCostRate:
    """Freeze the per-class cost of serving `alias` from `at` on (deployment x cost basis),
    for the target its deployment in force serves (`route`: as `deployment_in_force`)."""
    deployment = deployment_in_force(alias=alias, at=at, route=route)
    if deployment is None:
        where = f"{alias}/{route.name}" if isinstance(route, Route) else alias
        raise NotFound(f"No deployment of {where!r} in force at {at:%Y-%m-%d %H:%M}.")
    basis = cost_basis_in_force(accelerator=deployment.accelerator, at=at)
    if basis is None:
        raise CannotPrice(f"No cost basis for {deployment.accelerator.key} at {at:%Y-%m-%d %H:%M}.")
    costs = class_costs_of(deployment, basis)
    return serving_cost_rate_create(
        alias=alias,
        route_id=deployment.route_id,
        accelerator=deployment.accelerator.key,
        effective_from=at,
        rates=Rates(
            **{
                token_class: cost.quantize(RATE_QUANTUM, rounding=ROUND_HALF_UP)
                for token_class, cost in costs._asdict().items()
            }
        ),
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


def rate_costs(rate: ServingCostRate) -> Rates:
    """A published rate's per-class costs (column ``<token class>_usd``)."""
    return Rates(
        **{
            token_class: getattr(rate, COST_RATE_FIELDS[token_class])
            for token_class in TOKEN_CLASSES
        }
    )
