"""Money and token counts in the console's account pages, exactly: minor units through
the currency's exponent (`billing.pricing.currency.from_minor`), decimals as plain digits,
never through a float.

    {% load console_money %}
    {{ invoice.total_minor|minor:invoice.currency }}   -> "1,234.50 USD"
    {{ entry.amount|exact }}                            -> "12.5"
    {{ limit.amount_usd|usd }}                          -> "$25.00"
    {{ balance.remaining|amount:balance.currency }}     -> "9.00 USD", "0.125 USD"
"""

from decimal import Decimal

from django import template

from billing.pricing.currency import currency_exponent, decimal_text, from_minor

register = template.Library()


def _grouped(value: Decimal) -> str:
    """Thousands separated, every significant digit kept."""
    return _digits(decimal_text(value))


def _digits(text: str) -> str:
    """Plain digits ("-1234.50") with the thousands separated ("-1,234.50")."""
    whole, _, fraction = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    whole = whole.lstrip("-")
    grouped = f"{int(whole):,}"
    return f"{sign}{grouped}.{fraction}" if fraction else f"{sign}{grouped}"


@register.filter
def minor(value: int | None, currency: str) -> str:
    """An amount in integer minor units, in major units with its currency."""
    if value is None or value == "":
        return ""
    # from_minor keeps exactly the currency's decimals (USD 2, JPY 0, KWD 3)
    return f"{_digits(format(from_minor(int(value), currency), 'f'))} {currency}"


@register.filter
def usd(value: Decimal | str | None) -> str:
    """A USD amount (exact decimal): "$25.00", "$0.125"."""
    if value is None or value == "":
        return ""
    amount = Decimal(value)
    text = _money_text(amount)
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


@register.filter
def amount(value: Decimal | str | None, currency: str) -> str:
    """An exact amount in major units (a serializer's string) with its currency: at least
    the currency's decimals, every further digit kept."""
    if value is None or value == "":
        return ""
    exact_value = Decimal(value)
    step = Decimal(1).scaleb(-currency_exponent(currency))
    if exact_value == exact_value.quantize(step):
        return f"{_digits(format(exact_value.quantize(step), 'f'))} {currency}"
    return f"{_grouped(exact_value)} {currency}"


@register.filter
def exact(value: Decimal | str | None) -> str:
    """An exact decimal (a serializer's string) as plain digits, thousands grouped."""
    if value is None or value == "":
        return ""
    return _grouped(Decimal(value))


def _money_text(amount: Decimal) -> str:
    """At least two decimals (cents), more when the amount has them."""
    if amount == amount.quantize(Decimal("0.01")):
        return _digits(format(amount.quantize(Decimal("0.01")), "f"))
    return _grouped(amount)
