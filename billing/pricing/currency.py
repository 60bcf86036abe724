"""Currency exponents (ISO 4217 minor units) and the one place money is rounded.

Invariants:
- An amount is rounded only here, to the currency's exponent, with an explicit rounding
  mode (``ROUND_HALF_UP`` unless a price says otherwise).
- ``to_minor`` returns an ``int`` of minor units; ``from_minor`` is its exact inverse for
  already-rounded amounts. Floats are refused: money is ``Decimal`` (or ``int``) only.
- An unknown currency raises ``ValueError``; codes are matched case-insensitively
  ("usd" and "USD" are the same currency).
- Rounding happens in a private high-precision decimal context, so the caller's context
  (precision, traps, default rounding) never changes a result.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_HALF_UP, Decimal

__all__ = [
    "ROUNDING_MODES",
    "currency_exponent",
    "from_minor",
    "is_known_currency",
    "quantize",
    "to_minor",
]

# The rounding modes the decimal module knows; a price may name any of them.
ROUNDING_MODES: frozenset[str] = frozenset(
    {
        decimal.ROUND_CEILING,
        decimal.ROUND_DOWN,
        decimal.ROUND_FLOOR,
        decimal.ROUND_HALF_DOWN,
        decimal.ROUND_HALF_EVEN,
        decimal.ROUND_HALF_UP,
        decimal.ROUND_UP,
        decimal.ROUND_05UP,
    }
)

# ISO 4217 currencies whose minor unit is not 2 digits.
_ZERO_DECIMAL = ("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF").split()
_THREE_DECIMAL = "BHD IQD JOD KWD LYD OMR TND".split()
_FOUR_DECIMAL = "CLF UYW".split()
# ISO 4217 currencies with a 2-digit minor unit (the common case).
_TWO_DECIMAL = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
    "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT "
    "LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN "
    "NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
    "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES "
    "WST XCD YER ZAR ZMW ZWG"
).split()

_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO_DECIMAL, 2),
    **dict.fromkeys(_ZERO_DECIMAL, 0),
    **dict.fromkeys(_THREE_DECIMAL, 3),
    **dict.fromkeys(_FOUR_DECIMAL, 4),
}

# Enough digits for any token count times any price; traps make silent loss impossible.
_CONTEXT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


def is_known_currency(currency: str) -> bool:
    """True when ``currency`` is an ISO 4217 code this module knows."""
    return isinstance(currency, str) and currency.upper() in _EXPONENTS


def currency_exponent(currency: str) -> int:
    """Number of decimal digits of the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    if not is_known_currency(currency):
        raise ValueError(f"unknown currency {currency!r}")
    return _EXPONENTS[currency.upper()]


def _as_decimal(amount: Decimal | int) -> Decimal:
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"money must be Decimal or int, got {type(amount).__name__}")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError(f"money must be finite, got {value}")
    return value


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {rounding!r}")


def quantize(amount: Decimal | int, currency: str, rounding: str = ROUND_HALF_UP) -> Decimal:
    """``amount`` rounded once to the currency's exponent with ``rounding``."""
    value = _as_decimal(amount)
    _check_rounding(rounding)
    step = Decimal(1).scaleb(-currency_exponent(currency))
    return value.quantize(step, rounding=rounding, context=_CONTEXT)


def to_minor(amount: Decimal | int, currency: str, rounding: str = ROUND_HALF_UP) -> int:
    """``amount`` (major units) rounded once and expressed in integer minor units."""
    rounded = quantize(amount, currency, rounding)
    return int(rounded.scaleb(currency_exponent(currency), context=_CONTEXT))


def from_minor(minor: int, currency: str) -> Decimal:
    """Exact major-unit ``Decimal`` for an integer of minor units (12345 USD → 123.45)."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"minor units must be int, got {type(minor).__name__}")
    exponent = currency_exponent(currency)
    return (
        Decimal(minor)
        .scaleb(-exponent, context=_CONTEXT)
        .quantize(Decimal(1).scaleb(-exponent), context=_CONTEXT)
    )


def decimal_text(value: Decimal) -> str:
    """An exact Decimal as plain digits without trailing zeros, never in scientific
    notation ("4.000000000000" -> "4", "0E-12" -> "0", "61.730" -> "61.73")."""
    # Not value.normalize(): it rounds to the context's 28 digits, and a prorated day's
    # share can carry 30 or more.
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
