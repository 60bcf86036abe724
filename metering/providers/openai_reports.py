"""OpenAI's organization usage (completions) and costs reports: queries and parsing.

- Usage: `GET /organization/usage/completions`, 1h buckets grouped by model, api_key_id,
  project_id and service_tier. `input_tokens` includes the cached tokens (and the cache
  writes, which this report does not give apart), `output_tokens` includes reasoning:
  stored as `input_uncached = input_tokens - input_cached_tokens`, `cache_read =
  input_cached_tokens`, `cache_write = None`, `output = output_tokens`.
- Costs: `GET /organization/costs`, 1d buckets grouped by line_item and project_id.
  `amount.value` is a JSON number, read as a Decimal from the text. The model and token
  type are parsed from `line_item` when it reads "<model>, <token type>" (observed, not a
  documented contract), else left blank.
- Arrays are sent as `group_by[]=` (as the official SDK sends them); times as unix seconds.
"""

import datetime as dt
from typing import Any

from metering.providers.reports import (
    USAGE,
    CostRow,
    Page,
    ReportFormatError,
    UsageRow,
    count,
    exact_amount,
    page_query,
    parse_page,
    parse_unix,
    results_of,
    text,
    usd,
    usd_currency,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USAGE_PATH = "/organization/usage/completions"
COSTS_PATH = "/organization/costs"
USAGE_WIDTH = "1h"
COST_WIDTH = "1d"
USAGE_GROUPS = ("model", "api_key_id", "project_id", "service_tier")
COST_GROUPS = ("line_item", "project_id")
USAGE_LIMIT = 168  # the documented maximum of 1h buckets per page
COST_LIMIT = 180  # the documented maximum for costs


def headers(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


def request(
    report: str, *, start: dt.datetime, end: dt.datetime, page: str | None
) -> tuple[str, list[tuple[str, str]]]:
    """(path, query) of one page of `report` for buckets in [start, end)."""
    groups: tuple[str, ...]
    if report == USAGE:
        path, width, groups, limit = USAGE_PATH, USAGE_WIDTH, USAGE_GROUPS, USAGE_LIMIT
    else:
        path, width, groups, limit = COSTS_PATH, COST_WIDTH, COST_GROUPS, COST_LIMIT
    query = page_query(
        times=[
            ("start_time", str(int(start.timestamp()))),
            ("end_time", str(int(end.timestamp()))),
        ],
        width=width,
        groups=groups,
        limit=limit,
        page=page,
    )
    return path, query


def parse(report: str, body: str) -> Page[Any]:
    return parse_page(report, body, usage=_usage_bucket, cost=_cost_bucket, check=_check_page)


def _check_page(document: dict[str, Any]) -> None:
    if document.get("object") not in (None, "page"):
        raise ReportFormatError("the page's `object` is not 'page'")


def _bucket_start(bucket: dict[str, Any]) -> dt.datetime:
    return parse_unix(bucket.get("start_time"), "start_time")


def _usage_bucket(bucket: dict[str, Any]) -> list[UsageRow]:
    start = _bucket_start(bucket)
    rows = []
    for result in results_of(bucket):
        input_tokens = count(result, "input_tokens")
        cached = count(result, "input_cached_tokens")
        if input_tokens is not None and cached is not None and cached > input_tokens:
            raise ReportFormatError("`input_cached_tokens` is larger than `input_tokens`")
        uncached = None if input_tokens is None else input_tokens - (cached or 0)
        rows.append(
            UsageRow(
                bucket_start=start,
                bucket_width=USAGE_WIDTH,
                model=text(result, "model"),
                api_key_id=text(result, "api_key_id"),
                service_tier=text(result, "service_tier"),
                workspace=text(result, "project_id"),
                requests=count(result, "num_model_requests"),
                input_uncached=uncached,
                cache_read=cached,
                cache_write=None,
                output=count(result, "output_tokens"),
                raw=result,
            )
        )
    return rows


def line_item_parts(line_item: str) -> tuple[str, str]:
    """(model, token type) from "<model>, <token type>", or ('', '') if it does not read so."""
    model, sep, token_type = line_item.rpartition(", ")
    if not sep or not model.strip() or not token_type.strip() or ", " in model:
        return "", ""
    return model.strip(), token_type.strip()


def _cost_bucket(bucket: dict[str, Any]) -> list[CostRow]:
    start = _bucket_start(bucket)
    rows = []
    for result in results_of(bucket):
        amount = result.get("amount")
        if not isinstance(amount, dict):
            raise ReportFormatError("a cost result has no `amount` object")
        value = exact_amount(amount.get("value"), "amount.value")
        currency = usd_currency(amount)
        line_item = text(result, "line_item")
        model, token_type = line_item_parts(line_item)
        rows.append(
            CostRow(
                bucket_start=start,
                bucket_width=COST_WIDTH,
                line_item=line_item,
                model=model,
                cost_type="",
                token_type=token_type,
                service_tier="",
                workspace=text(result, "project_id"),
                amount_text=str(value),  # the JSON number's own digits (Decimal keeps them)
                amount_usd=usd(value, "amount.value"),
                currency=currency,
                raw=result,
            )
        )
    return rows
