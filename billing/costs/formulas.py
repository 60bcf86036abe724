"""Hardware cost basis: what a token costs us to produce, as pure arithmetic.

Pure and stdlib only: frozen dataclasses in, ``Decimal`` out, no ORM, no I/O, no floats.
The formulas below are binding (tests/billing/costs/test_formulas.py checks them). The
accelerator catalogue (``billing/data/accelerators.csv``) is read by
``billing.costs.catalogue``; margins and floor prices live in ``billing.costs.margins``.

Formulas
- Cost per accelerator-hour (``hourly_cost``):
  - rented: the rental rate ($/accelerator-hour);
  - owned: ``purchase / (years * 8760) + TDP_kW * PUE * $/kWh + other opex per hour``
    (defaults PUE 1.56, $0.08/kWh: a 700 W part adds 0.7 * 1.56 * 0.08 = $0.08736/h).
- Cost per 1M tokens (``cost_per_million``):
  ``hourly / (tokens_per_s * 3600 * utilization) * 1_000_000``, utilization in (0, 1]
  (default 0.6).
- Per token class (``class_costs``), on one accelerator, as the ledger's five-class
  ``metering.ledger.record.Rates`` (USD per 1M tokens):
  - output = reasoning = the decode cost (reasoning tokens ARE decode tokens, and every
    major provider bills them as output);
  - input = the prefill cost; cache_read = input * cache_read_factor (default 0.1);
    cache_write = input * cache_write_factor (default 1.25). Without a prefill speed
    the input classes are not guessed: ``MissingCostData``.
- The cost of some usage at those rates is the ledger's own formula
  (``metering.ledger.record.serving_cost``), not a second copy here.

Invariants
- A value needed to price that is missing (``None``, ``null`` in the CSV) is refused with
  ``MissingCostData`` naming every missing field and the accelerator; nothing is guessed
  or defaulted. A basis missing only what the chosen mode does not use still prices (a
  rented TPU v5e needs no TDP).
- Inputs are ``Decimal`` or ``int`` (never ``bool`` or ``float``), finite, and in range
  (rates, prices and counts >= 0; speeds, years > 0; utilization in (0, 1]); anything
  else is a ``ValueError``.
- Precision: sums and products run in a 100-digit context (``EXACT``) that traps
  ``Inexact``, so they are exact (or raise). Each returned value comes from at most ONE
  division, in a 50-significant-digit context (``DIVIDE``) with ROUND_HALF_EVEN; a result
  is therefore the exact quotient rounded once to 50 significant digits, and exact
  whenever that quotient terminates within 50 digits. Nothing here quantizes to
  currency: the caller rounds once, where money is billed (see
  ``billing.pricing.currency``). The caller's decimal context never changes a result.
- ``class_costs(...).reasoning == class_costs(...).output`` exactly.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from metering.ledger.record import Rates

HOURS_PER_YEAR = Decimal(8760)
SECONDS_PER_HOUR = Decimal(3600)
TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)  # costs are USD per 1M tokens
WATTS_PER_KILOWATT = Decimal(1000)

DEFAULT_PUE = Decimal("1.56")  # industry-average power usage effectiveness (2024 survey)
DEFAULT_POWER_USD_PER_KWH = Decimal("0.08")  # US industrial electricity, 2023 average
DEFAULT_UTILIZATION = Decimal("0.6")  # fraction of wall-clock time a fleet is busy


ZERO = Decimal(0)
ONE = Decimal(1)

# The one division per function rounds here: 50 significant digits, half-even.
DIVIDE = decimal.Context(
    prec=50,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
# Sums and products must be exact: a result that would need rounding raises Inexact.
EXACT = decimal.Context(
    prec=100,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow, decimal.Inexact],
)


class MissingCostData(ValueError):
    """A value needed to price is missing (``None``/``null``): names the field(s) and the
    accelerator, so an operator knows exactly what to supply."""

    def __init__(self, fields: Sequence[str], accelerator: str = "") -> None:
        self.fields = tuple(fields)
        self.accelerator = accelerator
        who = f"accelerator {accelerator!r}" if accelerator else "an unnamed accelerator"
        super().__init__(
            f"cannot price {who}: missing {', '.join(self.fields)} (no value supplied)"
        )


# --- Validation helpers -----------------------------------------------------------------


def checked_number(value: object, what: str) -> Decimal:
    """``value`` as a finite Decimal; floats, bools and other types are refused."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValueError(f"{what} must be a Decimal or int, got {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"{what} must be finite, got {number}")
    return number


def checked_non_negative(value: object, what: str) -> Decimal:
    number = checked_number(value, what)
    if number < 0:
        raise ValueError(f"{what} must be >= 0, got {number}")
    return number


def _positive(value: object, what: str) -> Decimal:
    number = checked_number(value, what)
    if number <= 0:
        raise ValueError(f"{what} must be > 0, got {number}")
    return number


def _utilization(value: object) -> Decimal:
    number = checked_number(value, "utilization")
    if not ZERO < number <= ONE:
        raise ValueError(f"utilization must be in (0, 1], got {number}")
    return number


def _missing_fields(values: Iterable[tuple[str, object]]) -> list[str]:
    """The names of the ``(name, value)`` pairs whose value is ``None``, in order."""
    return [name for name, value in values if value is None]


def _require_present(values: Iterable[tuple[str, object]], accelerator: str) -> None:
    """Raise ``MissingCostData`` naming every field whose value is ``None``."""
    missing = _missing_fields(values)
    if missing:
        raise MissingCostData(missing, accelerator)


# --- Cost per accelerator-hour ----------------------------------------------------------


@dataclass(frozen=True)
class RentedCost:
    hourly_usd: Decimal | None  # rental rate, USD per accelerator-hour


@dataclass(frozen=True)
class OwnedCost:
    purchase_price_usd: Decimal | None  # capital cost of one accelerator, USD
    amortization_years: Decimal | None  # straight-line depreciation period, years (> 0)
    tdp_watts: int | None  # power draw of one accelerator at load, watts
    power_usd_per_kwh: Decimal = DEFAULT_POWER_USD_PER_KWH  # electricity price, USD/kWh
    pue: Decimal = DEFAULT_PUE  # facility power / IT power (>= 1 in practice)
    other_opex_per_hour: Decimal = ZERO  # hosting, staff, network, USD per accelerator-hour


def hourly_cost(basis: RentedCost | OwnedCost, *, accelerator: str = "") -> Decimal:
    """USD per accelerator-hour.

    Rented: the rate. Owned: ``purchase / (years * 8760) + TDP_kW * PUE * $/kWh +
    opex/h``, evaluated as one fraction over ``years * 8760`` so it rounds once. Raises
    ``MissingCostData`` naming every missing field (with ``accelerator``).
    """
    if isinstance(basis, RentedCost):
        _require_present([("hourly_usd", basis.hourly_usd)], accelerator)
        return checked_non_negative(basis.hourly_usd, "hourly_usd")
    if not isinstance(basis, OwnedCost):
        raise ValueError(f"basis must be RentedCost or OwnedCost, got {type(basis).__name__}")
    _require_present(
        [
            ("purchase_price_usd", basis.purchase_price_usd),
            ("amortization_years", basis.amortization_years),
            ("tdp_watts", basis.tdp_watts),
        ],
        accelerator,
    )
    purchase = checked_non_negative(basis.purchase_price_usd, "purchase_price_usd")
    years = _positive(basis.amortization_years, "amortization_years")
    tdp = checked_non_negative(basis.tdp_watts, "tdp_watts")
    price = checked_non_negative(basis.power_usd_per_kwh, "power_usd_per_kwh")
    pue = checked_non_negative(basis.pue, "pue")
    opex = checked_non_negative(basis.other_opex_per_hour, "other_opex_per_hour")
    with decimal.localcontext(EXACT):
        energy_per_hour = tdp / WATTS_PER_KILOWATT * pue * price  # exact: /1000 is a shift
        hours = years * HOURS_PER_YEAR
        numerator = purchase + hours * (energy_per_hour + opex)
    return DIVIDE.divide(numerator, hours)


# --- Cost per million tokens ------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    decode_tokens_per_s: Decimal | None  # output/reasoning tokens per second per accelerator
    prefill_tokens_per_s: Decimal | None  # input tokens per second per accelerator
    utilization: Decimal = DEFAULT_UTILIZATION  # busy fraction of wall-clock time, (0, 1]
    cache_read_factor: Decimal = Decimal("0.1")  # cache-read token / uncached input token
    cache_write_factor: Decimal = Decimal("1.25")  # cache-write token / uncached input token

    def __post_init__(self) -> None:
        if self.decode_tokens_per_s is not None:
            _positive(self.decode_tokens_per_s, "decode_tokens_per_s")
        if self.prefill_tokens_per_s is not None:
            _positive(self.prefill_tokens_per_s, "prefill_tokens_per_s")
        _utilization(self.utilization)
        checked_non_negative(self.cache_read_factor, "cache_read_factor")
        checked_non_negative(self.cache_write_factor, "cache_write_factor")


def cost_per_million(hourly: Decimal, tokens_per_s: Decimal, utilization: Decimal) -> Decimal:
    """USD per 1M tokens: ``hourly / (tokens_per_s * 3600 * utilization) * 1_000_000``.

    The exact quotient rounded once to 50 significant digits (ROUND_HALF_EVEN).
    """
    rate = checked_non_negative(hourly, "hourly")
    speed = _positive(tokens_per_s, "tokens_per_s")
    busy = _utilization(utilization)
    with decimal.localcontext(EXACT):
        numerator = rate * TOKENS_PER_PRICE_UNIT
        denominator = speed * SECONDS_PER_HOUR * busy
    return DIVIDE.divide(numerator, denominator)


def class_costs(hourly: Decimal, throughput: Throughput, *, accelerator: str = "") -> Rates:
    """USD per 1M tokens of each class on one accelerator costing ``hourly`` per hour.

    Output and reasoning cost the decode price; input the prefill price; cache reads and
    writes the input price times their factors (each computed from the exact input cost,
    so it rounds once). Refuses (``MissingCostData``) when a speed is missing: an input
    price is never guessed from the decode speed.
    """
    _require_present(
        [
            ("decode_tokens_per_s", throughput.decode_tokens_per_s),
            ("prefill_tokens_per_s", throughput.prefill_tokens_per_s),
        ],
        accelerator,
    )
    rate = checked_non_negative(hourly, "hourly")
    decode = _positive(throughput.decode_tokens_per_s, "decode_tokens_per_s")
    prefill = _positive(throughput.prefill_tokens_per_s, "prefill_tokens_per_s")
    utilization = _utilization(throughput.utilization)
    read_factor = checked_non_negative(throughput.cache_read_factor, "cache_read_factor")
    write_factor = checked_non_negative(throughput.cache_write_factor, "cache_write_factor")
    with decimal.localcontext(EXACT):
        read_rate = rate * read_factor
        write_rate = rate * write_factor
    output = cost_per_million(rate, decode, utilization)
    return Rates(
        input=cost_per_million(rate, prefill, utilization),
        cache_read=cost_per_million(read_rate, prefill, utilization),
        cache_write=cost_per_million(write_rate, prefill, utilization),
        output=output,
        reasoning=output,
    )
