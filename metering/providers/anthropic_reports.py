"""Anthropic's usage report (messages) and cost report: queries and parsing.

- Usage: `GET /organizations/usage_report/messages`, 1h buckets grouped by model,
  api_key_id, workspace_id and service_tier. Stored as `input_uncached =
  uncached_input_tokens`, `cache_read = cache_read_input_tokens`, `cache_write` = the 5m +
  1h cache creation, nested (`cache_creation.ephemeral_5m_input_tokens`, `..._1h_...`) or
  flattened (`cache_creation_5m_input_tokens`, `cache_creation_1h_input_tokens`), and
  `output = output_tokens` (thinking included). Requests are not reported (None).
- Costs: `GET /organizations/cost_report`, 1d buckets grouped by workspace_id and
  description. `amount` is a decimal string in cents: `amount_usd = Decimal(text) / 100`,
  exact. `description` is stored as the line item beside `model`, `cost_type`,
  `token_type` and `service_tier`.
- Headers: `x-api-key` and `anthropic-version: 2023-06-01`; arrays as `group_by[]=`;
  times as RFC 3339.
"""

import datetime as dt
from decimal import Decimal
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
    parse_rfc3339,
    results_of,
    rfc3339,
    text,
    usd,
    usd_currency,
)

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
USAGE_PATH = "/organizations/usage_report/messages"
COST_PATH = "/organizations/cost_report"
USAGE_WIDTH = "1h"
COST_WIDTH = "1d"
USAGE_GROUPS = ("model", "api_key_id", "workspace_id", "service_tier")
COST_GROUPS = ("workspace_id", "description")
USAGE_LIMIT = 168  # the documented maximum of 1h buckets per page
COST_LIMIT = 31  # the documented maximum of 1d buckets per page


def headers(admin_key: str) -> dict[str, str]:
    return {"x-api-key": admin_key, "anthropic-version": API_VERSION}


def request(
    report: str, *, start: dt.datetime, end: dt.datetime, page: str | None
) -> tuple[str, list[tuple[str, str]]]:
    """(path, query) of one page of `report` for buckets in [start, end)."""
    groups: tuple[str, ...]
    if report == USAGE:
        path, width, groups, limit = USAGE_PATH, USAGE_WIDTH, USAGE_GROUPS, USAGE_LIMIT
    else:
        path, width, groups, limit = COST_PATH, COST_WIDTH, COST_GROUPS, COST_LIMIT
    query = page_query(
        times=[("starting_at", rfc3339(start)), ("ending_at", rfc3339(end))],
        width=width,
        groups=groups,
        limit=limit,
        page=page,
    )
    return path, query


def parse(report: str, body: str) -> Page[Any]:
    return parse_page(report, body, usage=_usage_bucket, cost=_cost_bucket)


def _bucket_start(bucket: dict[str, Any]) -> dt.datetime:
    return parse_rfc3339(bucket.get("starting_at"), "starting_at")


def cache_write(result: dict[str, Any]) -> int | None:
    """5m + 1h cache creation, from the nested or the flattened shape (None if neither)."""
    nested = result.get("cache_creation")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ReportFormatError("`cache_creation` is not an object")
        parts = [
            count(nested, "ephemeral_5m_input_tokens"),
            count(nested, "ephemeral_1h_input_tokens"),
        ]
    else:
        parts = [
            count(result, "cache_creation_5m_input_tokens"),
            count(result, "cache_creation_1h_input_tokens"),
        ]
    if all(part is None for part in parts):
        return None
    return sum(part or 0 for part in parts)


def _usage_bucket(bucket: dict[str, Any]) -> list[UsageRow]:
    start = _bucket_start(bucket)
    return [
        UsageRow(
            bucket_start=start,
            bucket_width=USAGE_WIDTH,
            model=text(result, "model"),
            api_key_id=text(result, "api_key_id"),
            service_tier=text(result, "service_tier"),
            workspace=text(result, "workspace_id"),
            requests=None,
            input_uncached=count(result, "uncached_input_tokens"),
            cache_read=count(result, "cache_read_input_tokens"),
            cache_write=cache_write(result),
            output=count(result, "output_tokens"),
            raw=result,
        )
        for result in results_of(bucket)
    ]


def cents_to_dollars(cents: Decimal) -> Decimal:
    """cents / 100, exactly: the same digits with the exponent moved (a Decimal division
    would round to the context's 28 digits)."""
    sign, digits, exponent = cents.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by exact_amount
    return Decimal((sign, digits, exponent - 2))


def _cost_bucket(bucket: dict[str, Any]) -> list[CostRow]:
    start = _bucket_start(bucket)
    rows = []
    for result in results_of(bucket):
        raw_amount = result.get("amount")
        if not isinstance(raw_amount, str):
            raise ReportFormatError(f"`amount` is not a decimal string of cents: {raw_amount!r}")
        cents = exact_amount(raw_amount, "amount")
        currency = usd_currency(result)
        rows.append(
            CostRow(
                bucket_start=start,
                bucket_width=COST_WIDTH,
                line_item=text(result, "description"),
                model=text(result, "model"),
                cost_type=text(result, "cost_type"),
                token_type=text(result, "token_type"),
                service_tier=text(result, "service_tier"),
                workspace=text(result, "workspace_id"),
                amount_text=raw_amount,
                amount_usd=usd(cents_to_dollars(cents), "amount"),
                currency=currency,
                raw=result,
            )
        )
    return rows
