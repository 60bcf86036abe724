"""Parsing report pages into Reckon's classes, exactly as decision 0116's table says, and
exact money (Decimal from the JSON text; Anthropic's cents strings)."""

import datetime as dt
import json
from decimal import Decimal

import pytest

from metering.providers import anthropic_reports, openai_reports
from metering.providers.reports import COST, USAGE, ReportFormatError

T0 = 1793577600  # 2026-11-02T00:00:00Z


def openai_usage_page(results: list[dict], **page: object) -> str:
    return json.dumps(
        {
            "object": "page",
            "data": [
                {"object": "bucket", "start_time": T0, "end_time": T0 + 3600, "results": results}
            ],
            "has_more": False,
            "next_page": None,
            **page,
        }
    )


def test_openai_usage_result_in_reckon_classes() -> None:
    page = openai_reports.parse(
        USAGE,
        openai_usage_page(
            [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 1000,
                    "input_cached_tokens": 300,
                    "output_tokens": 500,
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "num_model_requests": 4,
                    "project_id": None,
                    "user_id": None,
                    "api_key_id": "key_abc",
                    "model": "gpt-r",
                    "batch": None,
                    "service_tier": None,
                }
            ]
        ),
    )
    (row,) = page.rows
    assert row.bucket_start == dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    assert row.bucket_width == "1h"
    assert (row.model, row.api_key_id, row.workspace, row.service_tier) == (
        "gpt-r",
        "key_abc",
        "",
        "",
    )
    assert row.input_uncached == 700  # input_tokens includes the cached ones
    assert row.cache_read == 300
    assert row.cache_write is None  # not reported by OpenAI
    assert row.output == 500  # reasoning included, as reported
    assert row.requests == 4
    assert page.has_more is False and page.next_page is None


def test_openai_usage_without_cached_field_and_with_pagination() -> None:
    page = openai_reports.parse(
        USAGE,
        openai_usage_page(
            [{"input_tokens": 10, "output_tokens": 2, "num_model_requests": 1}],
            has_more=True,
            next_page="page_xyz",
        ),
    )
    (row,) = page.rows
    assert row.input_uncached == 10 and row.cache_read is None
    assert page.has_more and page.next_page == "page_xyz"


def test_openai_cost_amount_keeps_more_than_17_significant_digits() -> None:
    text = (
        '{"object":"page","has_more":false,"next_page":null,"data":[{"object":"bucket",'
        f'"start_time":{T0},"end_time":{T0 + 86400},"results":['
        '{"object":"organization.costs.result","amount":{"value":0.123456789012345678901,'
        '"currency":"usd"},"line_item":"gpt-r-2026-01-01, input","project_id":"proj_1"},'
        '{"object":"organization.costs.result","amount":{"value":12,"currency":"usd"},'
        '"line_item":"web search","project_id":null}]}]}'
    )
    first, second = openai_reports.parse(COST, text).rows
    assert first.amount_usd == Decimal("0.123456789012345678901")
    assert first.amount_text == "0.123456789012345678901"
    assert len(first.amount_usd.as_tuple().digits) == 21
    assert float(first.amount_text) != first.amount_usd  # a float would have lost digits
    assert (first.model, first.token_type, first.workspace) == (
        "gpt-r-2026-01-01",
        "input",
        "proj_1",
    )
    assert first.bucket_width == "1d"
    assert second.amount_usd == Decimal(12) and second.amount_text == "12"
    assert (second.model, second.token_type, second.line_item) == ("", "", "web search")


@pytest.mark.parametrize(
    ("line_item", "parts"),
    [
        ("gpt-4o-2024-08-06, input", ("gpt-4o-2024-08-06", "input")),
        ("o3, cached input", ("o3", "cached input")),
        ("gpt-r, output_tokens", ("gpt-r", "output_tokens")),
        ("fine-tuning training", ("", "")),
        (", input", ("", "")),
        ("a, b, c", ("", "")),
    ],
)
def test_openai_line_item_parts(line_item: str, parts: tuple[str, str]) -> None:
    assert openai_reports.line_item_parts(line_item) == parts


def anthropic_usage_page(result: dict) -> str:
    return json.dumps(
        {
            "data": [
                {
                    "starting_at": "2026-11-02T01:00:00Z",
                    "ending_at": "2026-11-02T02:00:00Z",
                    "results": [result],
                }
            ],
            "has_more": False,
            "next_page": None,
        }
    )


BASE_RESULT = {
    "uncached_input_tokens": 1500,
    "cache_read_input_tokens": 200,
    "output_tokens": 500,
    "server_tool_use": {"web_search_requests": 0},
    "api_key_id": "apikey_01",
    "workspace_id": "wrkspc_01",
    "model": "claude-r",
    "service_tier": "standard",
    "context_window": None,
}


@pytest.mark.parametrize(
    "cache_fields",
    [
        {"cache_creation": {"ephemeral_1h_input_tokens": 1000, "ephemeral_5m_input_tokens": 500}},
        {"cache_creation_1h_input_tokens": 1000, "cache_creation_5m_input_tokens": 500},
    ],
    ids=["nested", "flattened"],
)
def test_anthropic_usage_both_cache_creation_shapes(cache_fields: dict) -> None:
    (row,) = anthropic_reports.parse(USAGE, anthropic_usage_page(BASE_RESULT | cache_fields)).rows
    assert row.bucket_start == dt.datetime(2026, 11, 2, 1, tzinfo=dt.UTC)
    assert row.input_uncached == 1500
    assert row.cache_read == 200
    assert row.cache_write == 1500
    assert row.output == 500  # thinking included, as reported
    assert row.requests is None  # not reported by Anthropic
    assert (row.model, row.api_key_id, row.workspace, row.service_tier) == (
        "claude-r",
        "apikey_01",
        "wrkspc_01",
        "standard",
    )


def test_anthropic_usage_without_cache_creation_is_none() -> None:
    (row,) = anthropic_reports.parse(USAGE, anthropic_usage_page(BASE_RESULT)).rows
    assert row.cache_write is None


def test_anthropic_cost_cents_strings_are_exact() -> None:
    text = json.dumps(
        {
            "data": [
                {
                    "starting_at": "2026-11-02T00:00:00Z",
                    "ending_at": "2026-11-03T00:00:00Z",
                    "results": [
                        {
                            "currency": "USD",
                            "amount": "123.45",
                            "workspace_id": "wrkspc_01",
                            "description": "Claude R Usage - Input Tokens",
                            "cost_type": "tokens",
                            "context_window": "0-200k",
                            "model": "claude-r",
                            "service_tier": "standard",
                            "token_type": "uncached_input_tokens",
                        },
                        {
                            "currency": "USD",
                            "amount": "0.0000000000000000001234",
                            "workspace_id": None,
                            "description": None,
                            "cost_type": None,
                            "context_window": None,
                            "model": None,
                            "service_tier": None,
                            "token_type": None,
                        },
                    ],
                }
            ],
            "has_more": False,
            "next_page": None,
        }
    )
    first, second = anthropic_reports.parse(COST, text).rows
    assert first.amount_text == "123.45"
    assert first.amount_usd == Decimal("1.2345")
    assert first.currency == "usd"
    assert (first.line_item, first.model, first.cost_type, first.token_type) == (
        "Claude R Usage - Input Tokens",
        "claude-r",
        "tokens",
        "uncached_input_tokens",
    )
    assert second.amount_usd == Decimal("0.000000000000000000001234")  # 24 places
    assert second.line_item == "" and second.model == ""


def test_anthropic_cost_amount_as_json_number_is_refused() -> None:
    text = json.dumps(
        {
            "data": [
                {
                    "starting_at": "2026-11-02T00:00:00Z",
                    "ending_at": "2026-11-03T00:00:00Z",
                    "results": [{"currency": "USD", "amount": 12.5}],
                }
            ],
            "has_more": False,
            "next_page": None,
        }
    )
    with pytest.raises(ReportFormatError, match="decimal string of cents"):
        anthropic_reports.parse(COST, text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>502</html>", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"has_more": false}', "no `data` list"),
        ('{"data": [], "has_more": true, "next_page": null}', "no `next_page`"),
        ('{"data": [], "has_more": "no"}', "boolean `has_more`"),
        (openai_usage_page([{"input_tokens": -1}]), "non-negative integer"),
        (openai_usage_page([{"input_tokens": 1.5}]), "non-negative integer"),
        (openai_usage_page([{"input_tokens": 1, "input_cached_tokens": 2}]), "larger than"),
    ],
)
def test_malformed_pages_are_clear_errors(body: str, message: str) -> None:
    with pytest.raises(ReportFormatError, match=message):
        openai_reports.parse(USAGE, body)


def test_amount_with_more_places_than_stored_is_refused_not_rounded() -> None:
    text = (
        '{"object":"page","has_more":false,"next_page":null,"data":[{"object":"bucket",'
        f'"start_time":{T0},"end_time":{T0 + 86400},"results":['
        '{"amount":{"value":0.1234567890123456789012345,"currency":"usd"}}]}]}'
    )
    with pytest.raises(ReportFormatError, match="decimal places"):
        openai_reports.parse(COST, text)


def test_queries_carry_no_credentials_and_use_documented_parameters() -> None:
    start = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    path, query = openai_reports.request(USAGE, start=start, end=end, page="p2")
    assert path == "/organization/usage/completions"
    assert ("start_time", str(T0)) in query and ("bucket_width", "1h") in query
    assert ("group_by[]", "api_key_id") in query and ("page", "p2") in query
    path, query = anthropic_reports.request(COST, start=start, end=end, page=None)
    assert path == "/organizations/cost_report"
    assert ("starting_at", "2026-11-02T00:00:00Z") in query
    assert ("group_by[]", "description") in query
    assert not any(name == "page" for name, _ in query)
    assert anthropic_reports.headers("k") == {"x-api-key": "k", "anthropic-version": "2023-06-01"}
