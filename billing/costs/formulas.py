"""Hardware cost basis: what a token costs us to produce, and the floor price above it.

Pure and stdlib only: frozen dataclasses in, ``Decimal`` out, no ORM, no floats. The
formulas below are binding (tests/billing/test_costbasis.py checks them); the
per-accelerator data, with its sources, is ``billing/data/accelerators.csv``.

Formulas
- Cost per accelerator-hour (``hourly_cost``):
  - rented: the rental rate ($/accelerator-hour);
  - owned: ``purchase / (years * 8760) + TDP_kW * PUE * $/kWh + other opex per hour``
    (defaults PUE 1.56, $0.08/kWh: a 700 W part adds 0.7 * 1.56 * 0.08 = $0.08736/h).
- Cost per 1M tokens (``cost_per_million``):
  ``hourly / (tokens_per_s * 3600 * utilization) * 1_000_000``, utilization in (0, 1]
  (default 0.6).
- Per token class (``class_costs``), on one accelerator:
  - output = reasoning = the decode cost (reasoning tokens ARE decode tokens, and every
    major provider bills them as output);
  - input = the prefill cost; cache_read = input * cache_read_factor (default 0.1);
    cache_write = input * cache_write_factor (default 1.25). Without a prefill speed
    the input classes are not guessed: ``MissingCostData``.
- Usage (``usage_cost``): ``sum(tokens[c] * cost_per_million[c]) / 1_000_000``.
- Margin: a gross margin ``m`` in [0, 1) turns a cost ``c`` into the floor price
  ``c / (1 - m)``; ``gross_margin = (revenue - cost) / revenue``.

Invariants
- A value needed to price that is missing (``None``, ``null`` in the CSV) is refused with
  ``MissingCostData`` naming every missing field and the accelerator; nothing is guessed
  or defaulted. A row missing only what the chosen mode does not use still prices (a
  rented TPU v5e needs no TDP).
- Inputs are ``Decimal`` or ``int`` (never ``bool`` or ``float``), finite, and in range
  (rates, prices and counts >= 0; speeds, years > 0; utilization in (0, 1]); anything
  else is a ``ValueError``.
- Precision: sums and products run in a private 100-digit context that traps
  ``Inexact``, so they are exact (or raise). Each returned value comes from at most ONE
  division, in a private 50-significant-digit context with ROUND_HALF_EVEN; a result is
  therefore the exact quotient rounded once to 50 significant digits, and exact whenever
  that quotient terminates within 50 digits. Nothing here quantizes to currency: the
  caller rounds once, where money is billed (see ``billing.pricing.currency``). The caller's
  decimal context never changes a result.
- ``class_costs(...).reasoning == class_costs(...).output`` exactly.
"""

from __future__ import annotations

import csv
import decimal
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path

from metering.usage import TOKEN_CLASSES

HOURS_PER_YEAR = Decimal(8760)
SECONDS_PER_HOUR = Decimal(3600)
TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)  # costs are USD per 1M tokens
WATTS_PER_KILOWATT = Decimal(1000)

DEFAULT_PUE = Decimal("1.56")  # industry-average power usage effectiveness (2024 survey)
DEFAULT_POWER_USD_PER_KWH = Decimal("0.08")  # US industrial electricity, 2023 average
DEFAULT_UTILIZATION = Decimal("0.6")  # fraction of wall-clock time a fleet is busy


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

ZERO = Decimal(0)
ONE = Decimal(1)

# The one division per function rounds here: 50 significant digits, half-even.
_DIVIDE = decimal.Context(
    prec=50,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
# Sums and products must be exact: a result that would need rounding raises Inexact.
_EXACT = decimal.Context(
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


def _number(value: object, what: str) -> Decimal:
    """``value`` as a finite Decimal; floats, bools and other types are refused."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValueError(f"{what} must be a Decimal or int, got {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"{what} must be finite, got {number}")
    return number


def _non_negative(value: object, what: str) -> Decimal:
    number = _number(value, what)
    if number < 0:
        raise ValueError(f"{what} must be >= 0, got {number}")
    return number


def _positive(value: object, what: str) -> Decimal:
    number = _number(value, what)
    if number <= 0:
        raise ValueError(f"{what} must be > 0, got {number}")
    return number


def _utilization(value: object) -> Decimal:
    number = _number(value, "utilization")
    if not ZERO < number <= ONE:
        raise ValueError(f"utilization must be in (0, 1], got {number}")
    return number


def _margin(value: object, what: str) -> Decimal:
    number = _number(value, what)
    if not ZERO <= number < ONE:
        raise ValueError(f"{what} must be in [0, 1), got {number}")
    return number


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _missing_fields(values: Iterable[tuple[str, object]]) -> list[str]:
    """The names of the ``(name, value)`` pairs whose value is ``None``, in order."""
    return [name for name, value in values if value is None]


def _require_present(values: Iterable[tuple[str, object]], accelerator: str) -> None:
    """Raise ``MissingCostData`` naming every field whose value is ``None``."""
    missing = _missing_fields(values)
    if missing:
        raise MissingCostData(missing, accelerator)


# --- The catalogue ----------------------------------------------------------------------


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
    return _non_negative(number, what)


def _optional_int(text: str, what: str) -> int | None:
    if text.strip() in _NULL_MARKERS:
        return None
    try:
        number = int(text.strip())
    except ValueError:
        raise ValueError(f"{what} is not an integer: {text!r}") from None
    return _count(number, what)


def load_catalogue(path: Path | None = None) -> list[CatalogueRow]:
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
        return _non_negative(basis.hourly_usd, "hourly_usd")
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
    purchase = _non_negative(basis.purchase_price_usd, "purchase_price_usd")
    years = _positive(basis.amortization_years, "amortization_years")
    tdp = _non_negative(basis.tdp_watts, "tdp_watts")
    price = _non_negative(basis.power_usd_per_kwh, "power_usd_per_kwh")
    pue = _non_negative(basis.pue, "pue")
    opex = _non_negative(basis.other_opex_per_hour, "other_opex_per_hour")
    with decimal.localcontext(_EXACT):
        energy_per_hour = tdp / WATTS_PER_KILOWATT * pue * price  # exact: /1000 is a shift
        hours = years * HOURS_PER_YEAR
        numerator = purchase + hours * (energy_per_hour + opex)
    return _DIVIDE.divide(numerator, hours)


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
        _non_negative(self.cache_read_factor, "cache_read_factor")
        _non_negative(self.cache_write_factor, "cache_write_factor")


def cost_per_million(hourly: Decimal, tokens_per_s: Decimal, utilization: Decimal) -> Decimal:
    """USD per 1M tokens: ``hourly / (tokens_per_s * 3600 * utilization) * 1_000_000``.

    The exact quotient rounded once to 50 significant digits (ROUND_HALF_EVEN).
    """
    rate = _non_negative(hourly, "hourly")
    speed = _positive(tokens_per_s, "tokens_per_s")
    busy = _utilization(utilization)
    with decimal.localcontext(_EXACT):
        numerator = rate * TOKENS_PER_PRICE_UNIT
        denominator = speed * SECONDS_PER_HOUR * busy
    return _DIVIDE.divide(numerator, denominator)


@dataclass(frozen=True)
class ClassCosts:
    """USD per 1M tokens of each token class (unrounded, 50 significant digits)."""

    input: Decimal  # uncached prompt tokens (prefill)
    cache_read: Decimal  # prompt tokens served from the prompt cache
    cache_write: Decimal  # prompt tokens written to the prompt cache
    output: Decimal  # visible completion tokens (decode)
    reasoning: Decimal  # hidden reasoning tokens (decode, == output)

    def as_dict(self) -> dict[str, Decimal]:
        """``{token_class: cost}`` in ``TOKEN_CLASSES`` order."""
        return {token_class: getattr(self, token_class) for token_class in TOKEN_CLASSES}


def class_costs(hourly: Decimal, throughput: Throughput, *, accelerator: str = "") -> ClassCosts:
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
    rate = _non_negative(hourly, "hourly")
    decode = _positive(throughput.decode_tokens_per_s, "decode_tokens_per_s")
    prefill = _positive(throughput.prefill_tokens_per_s, "prefill_tokens_per_s")
    utilization = _utilization(throughput.utilization)
    read_factor = _non_negative(throughput.cache_read_factor, "cache_read_factor")
    write_factor = _non_negative(throughput.cache_write_factor, "cache_write_factor")
    with decimal.localcontext(_EXACT):
        read_rate = rate * read_factor
        write_rate = rate * write_factor
    output = cost_per_million(rate, decode, utilization)
    return ClassCosts(
        input=cost_per_million(rate, prefill, utilization),
        cache_read=cost_per_million(read_rate, prefill, utilization),
        cache_write=cost_per_million(write_rate, prefill, utilization),
        output=output,
        reasoning=output,
    )


# --- Usage ------------------------------------------------------------------------------


def _class_amounts(costs: ClassCosts, tokens: Mapping[str, int]) -> dict[str, Decimal]:
    """Exact ``tokens[c] * costs[c]`` per class (USD * 1M); absent classes count 0."""
    unknown = sorted(set(tokens) - set(TOKEN_CLASSES))
    if unknown:
        raise ValueError(f"unknown token classes {unknown}; expected {TOKEN_CLASSES}")
    per_million = costs.as_dict()
    amounts: dict[str, Decimal] = {}
    with decimal.localcontext(_EXACT):
        for token_class in TOKEN_CLASSES:
            count = _count(tokens.get(token_class, 0), f"tokens[{token_class!r}]")
            cost = _non_negative(per_million[token_class], f"costs.{token_class}")
            amounts[token_class] = count * cost
    return amounts


def usage_cost(costs: ClassCosts, tokens: Mapping[str, int]) -> Decimal:
    """USD to produce ``tokens`` (``{token_class: count}``): exact
    ``sum(tokens[c] * costs[c]) / 1_000_000``. Unknown classes are refused."""
    amounts = _class_amounts(costs, tokens)
    with decimal.localcontext(_EXACT):
        return sum(amounts.values(), ZERO).scaleb(-6)  # / 1_000_000, exact


def reasoning_share_of_cost(costs: ClassCosts, tokens: Mapping[str, int]) -> Decimal | None:
    """The fraction of ``usage_cost`` spent on reasoning tokens; ``None`` when it is 0."""
    amounts = _class_amounts(costs, tokens)
    with decimal.localcontext(_EXACT):
        total = sum(amounts.values(), ZERO)
    if total == 0:
        return None
    return _DIVIDE.divide(amounts["reasoning"], total)


# --- Margin -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Margins:
    """A margin policy's two margins, checked (the stored policy is billing.models.MarginPolicy)."""

    target_margin: Decimal  # gross margin list prices aim for, in [0, 1)
    minimum_margin: Decimal  # gross margin no price may go below, in [0, target]

    def __post_init__(self) -> None:
        target = _margin(self.target_margin, "target_margin")
        minimum = _margin(self.minimum_margin, "minimum_margin")
        if minimum > target:
            raise ValueError(f"minimum_margin {minimum} exceeds target_margin {target}")


def floor_price(cost: Decimal, margin: Decimal) -> Decimal:
    """The price earning gross margin ``margin`` on ``cost``: ``cost / (1 - margin)``,
    ``margin`` in [0, 1)."""
    amount = _non_negative(cost, "cost")
    fraction = _margin(margin, "margin")
    with decimal.localcontext(_EXACT):
        kept = ONE - fraction
    return _DIVIDE.divide(amount, kept)


def gross_margin(revenue: Decimal, cost: Decimal) -> Decimal | None:
    """``(revenue - cost) / revenue`` (negative when selling below cost); ``None`` when
    revenue is 0."""
    earned = _number(revenue, "revenue")
    spent = _number(cost, "cost")
    if earned == 0:
        return None
    with decimal.localcontext(_EXACT):
        profit = earned - spent
    return _DIVIDE.divide(profit, earned)
