"""What a parsed report page holds, in Reckon's terms, whichever provider sent it.

Each provider module (`openai_reports`, `anthropic_reports`) builds its queries and turns
one page's text into a `Page` of `UsageRow`s or `CostRow`s, converting the provider's
counts into Reckon's disjoint classes (decision 0116, "What compares"):

- `input_uncached`: input that was neither read from nor (Anthropic) written to the cache
  (OpenAI: `input_tokens - input_cached_tokens`, so its cache writes stay in here);
- `cache_read`, `cache_write` (Anthropic: 5m + 1h creation; OpenAI: not reported, None);
- `output`: visible + reasoning, as both providers count it;
- `requests`: OpenAI's `num_model_requests`; Anthropic does not report it (None).

None means "the report does not give it", never zero. Amounts are Decimal from the JSON
text (never a float); `amount_text` is the amount as the report wrote it. A page that does
not have the documented shape raises `ReportFormatError` with a message fit for an operator.
"""

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Generic, TypeVar

USAGE = "usage"
COST = "cost"
# Decimal places `ProviderCostBucket.amount_usd` keeps; an amount with more is refused
# rather than rounded.
AMOUNT_PLACES = 24
# The largest count a bucket stores (a PostgreSQL bigint).
BIGINT_MAX = 2**63 - 1
# Digits before the point it holds (max_digits 44 - decimal_places 24).
AMOUNT_INTEGER_DIGITS = 20


# The fields that name a bucket (its key), in the order of `UsageRow.key` / `CostRow.key`;
# the same names as the bucket models' fields.
USAGE_KEY = ("bucket_start", "bucket_width", "model", "api_key_id", "service_tier", "workspace")
COST_KEY = (
    "bucket_start",
    "bucket_width",
    "line_item",
    "model",
    "cost_type",
    "token_type",
    "service_tier",
    "workspace",
)


class ReportFormatError(Exception):
    """A page that does not have the shape the provider documents."""


@dataclass(frozen=True)
class UsageRow:
    bucket_start: dt.datetime
    bucket_width: str
    model: str
    api_key_id: str
    service_tier: str
    workspace: str
    requests: int | None
    input_uncached: int | None
    cache_read: int | None
    cache_write: int | None
    output: int | None
    raw: dict[str, Any] = field(compare=False)

    @property
    def key(self) -> tuple[Any, ...]:
        return _key_of(self)


@dataclass(frozen=True)
class CostRow:
    bucket_start: dt.datetime
    bucket_width: str
    line_item: str
    model: str
    cost_type: str
    token_type: str
    service_tier: str
    workspace: str
    amount_text: str  # as the report wrote it (OpenAI: dollars; Anthropic: cents)
    amount_usd: Decimal
    currency: str
    raw: dict[str, Any] = field(compare=False)

    @property
    def key(self) -> tuple[Any, ...]:
        return _key_of(self)


Row = TypeVar("Row", UsageRow, CostRow)


def _key_of(row: UsageRow | CostRow) -> tuple[Any, ...]:
    return tuple(
        getattr(row, name) for name in (USAGE_KEY if isinstance(row, UsageRow) else COST_KEY)
    )


@dataclass(frozen=True)
class Page(Generic[Row]):
    rows: list[Row]
    has_more: bool
    next_page: str | None


# ---- shared parsing helpers ------------------------------------------------------------------


def load(text: str) -> dict[str, Any]:
    """The page's JSON with every non-integer number as an exact Decimal. A page holding a
    NUL character (`\\u0000`, which no report writes and neither database column can hold)
    is refused."""
    try:
        value = json.loads(text, parse_float=Decimal)
    except ValueError:
        raise ReportFormatError("the page is not JSON") from None
    if not isinstance(value, dict):
        raise ReportFormatError("the page is not a JSON object")
    if _holds_nul(value):
        raise ReportFormatError("the page holds a NUL character")
    return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def page_of(document: dict[str, Any], parse_bucket: Callable[[Any], list[Row]]) -> Page[Row]:
    data = document.get("data")
    has_more = document.get("has_more")
    next_page = document.get("next_page")
    if not isinstance(data, list):
        raise ReportFormatError("the page has no `data` list")
    if not isinstance(has_more, bool):
        raise ReportFormatError("the page has no boolean `has_more`")
    if next_page is not None and not isinstance(next_page, str):
        raise ReportFormatError("`next_page` is neither a string nor null")
    if has_more and not next_page:
        raise ReportFormatError("`has_more` is true but there is no `next_page`")
    rows: list[Row] = []
    for bucket in data:
        if not isinstance(bucket, dict):
            raise ReportFormatError("a bucket is not a JSON object")
        rows.extend(parse_bucket(bucket))
    return Page(rows=rows, has_more=has_more, next_page=next_page if has_more else None)


def parse_page(
    report: str,
    body: str,
    *,
    usage: Callable[[Any], list[UsageRow]],
    cost: Callable[[Any], list[CostRow]],
    check: Callable[[dict[str, Any]], None] | None = None,
) -> Page[Any]:
    """One page of `report`: `usage` or `cost` turns each bucket into rows; `check` looks
    at the whole document first (a provider's own page-level rule)."""
    document = load(body)
    if check is not None:
        check(document)
    if report == USAGE:
        return page_of(document, usage)
    if report == COST:
        return page_of(document, cost)
    raise ValueError(report)


def page_query(
    *,
    times: Sequence[tuple[str, str]],
    width: str,
    groups: Sequence[str],
    limit: int,
    page: str | None,
) -> list[tuple[str, str]]:
    """The query both providers read the same way: the window's two times (each provider
    names and writes them its own way), the bucket width, each group as `group_by[]`, the
    page size, and the cursor of the page after the first."""
    query = [
        *times,
        ("bucket_width", width),
        *(("group_by[]", group) for group in groups),
        ("limit", str(limit)),
    ]
    if page:
        query.append(("page", page))
    return query


def usd_currency(amount: dict[str, Any]) -> str:
    """The cost's currency, 'usd' when not given; any other currency is refused."""
    currency = text(amount, "currency").lower() or "usd"
    if currency != "usd":
        raise ReportFormatError(f"a cost is in {currency!r}; Reckon reads USD costs only")
    return currency


def results_of(bucket: dict[str, Any]) -> list[dict[str, Any]]:
    results = bucket.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ReportFormatError("a bucket has no `results` list of objects")
    return results


def count(result: dict[str, Any], name: str) -> int | None:
    """A token or request count: a non-negative JSON integer, or None when absent/null."""
    value = result.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportFormatError(f"`{name}` is not a non-negative integer: {str(value)[:40]!r}")
    if value > BIGINT_MAX:
        raise ReportFormatError(f"`{name}` is larger than Reckon stores ({BIGINT_MAX})")
    return value


def text(result: dict[str, Any], name: str) -> str:
    """A grouping field: its text, '' when null (not grouped by) or absent."""
    value = result.get(name)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str | int):
        raise ReportFormatError(f"`{name}` is not a string: {value!r}")
    return str(value)


def exact_amount(value: Any, name: str) -> Decimal:
    """A JSON number or decimal string as an exact, finite Decimal."""
    if isinstance(value, bool):
        raise ReportFormatError(f"`{name}` is not a number: {value!r}")
    if isinstance(value, Decimal | int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise ReportFormatError(f"`{name}` is not a decimal number: {value!r}") from None
    else:
        raise ReportFormatError(f"`{name}` is not a number: {value!r}")
    if not amount.is_finite():
        raise ReportFormatError(f"`{name}` is not a finite number: {value!r}")
    return amount


def usd(amount: Decimal, name: str) -> Decimal:
    """`amount` if Reckon can store it exactly (at most AMOUNT_PLACES decimal places and
    AMOUNT_INTEGER_DIGITS before the point)."""
    if amount.is_finite() and amount != 0 and amount.adjusted() >= AMOUNT_INTEGER_DIGITS:
        raise ReportFormatError(
            f"`{name}` has more than {AMOUNT_INTEGER_DIGITS} digits before the decimal point"
        )
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > AMOUNT_PLACES:
        with localcontext() as context:  # exact: as many digits as the amount has
            context.prec = len(amount.as_tuple().digits) + 1
            normalized = amount.normalize()
        exponent = normalized.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > AMOUNT_PLACES:
            raise ReportFormatError(
                f"`{name}` has more than {AMOUNT_PLACES} decimal places; "
                "Reckon does not round report amounts"
            )
        return normalized
    return amount


def amount_usd_from_text(*, provider: str, amount_text: str) -> Decimal:
    """The exact USD of a stored `amount_text` (parts joined by '+' when rows were merged):
    OpenAI writes dollars, Anthropic cents. On SQLite, which stores `amount_usd` as a float
    (NUMERIC affinity), this is the exact value; on PostgreSQL it equals `amount_usd`."""
    total = Decimal(0)
    with localcontext() as context:
        context.prec = 100
        for part in amount_text.split("+"):
            amount = exact_amount(part, "amount_text")
            if provider == "anthropic":
                amount = amount.scaleb(-2)
            total += amount
    return total


def jsonable(value: Any) -> Any:
    """A parsed result made storable as JSON without losing digits: Decimals become their
    exact text."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def content_hash(values: Sequence[Any]) -> str:
    """sha256 of the values that make a bucket what it is (their order matters; callers
    put the parts of merged rows in a canonical order first, see `canonical_order`)."""
    canonical = json.dumps(jsonable(list(values)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def canonical_order(parts: Sequence[Any]) -> list[Any]:
    """`parts` sorted by their canonical JSON: rows that share a bucket key merge to the
    same stored value (and hash) whatever order the provider listed them in."""
    return sorted(
        parts, key=lambda part: json.dumps(jsonable(part), sort_keys=True, separators=(",", ":"))
    )


def parse_unix(value: Any, name: str) -> dt.datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportFormatError(f"`{name}` is not a unix time: {value!r}")
    return dt.datetime.fromtimestamp(value, dt.UTC)


def parse_rfc3339(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, str):
        raise ReportFormatError(f"`{name}` is not an RFC 3339 time: {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportFormatError(f"`{name}` is not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ReportFormatError(f"`{name}` has no time zone: {value!r}")
    return parsed.astimezone(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_message(text_body: str) -> str:
    """The provider's own error message from an error body (both providers nest it as
    `{"error": {"message": ...}}`), at most 200 characters; '' if there is none."""
    try:
        document = json.loads(text_body)
    except ValueError:
        return ""
    error = document.get("error") if isinstance(document, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        return ""
    return " ".join(message.split())[:200]
