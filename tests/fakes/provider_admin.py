"""Local stand-ins for the OpenAI and Anthropic admin report APIs (usage and cost).

Each `FakeProviderAdmin` is a real HTTP server on 127.0.0.1 (random free port, background
thread) speaking one provider's wire format; point a `ProviderAccount.admin_base_url` (or
the official openai SDK's `base_url`) at `fake.url`, which includes the `/v1` segment::

    with FakeProviderAdmin("openai", admin_key="sk-admin-test") as fake:
        fake.events.extend(events_from_simulator(sim_url, key_ids={"sk-up-a": "key_a"}))
        fake.prices["sim-reasoner"] = ModelPrice(input=Decimal("1.25"), output=Decimal("10"))
        ... import from fake.url ...

What it serves, in the providers' documented shapes:

* OpenAI (`Authorization: Bearer <admin key>`): `GET /v1/organization/usage/completions`
  (`start_time`/`end_time` unix s, `bucket_width` 1m|1h|1d, `group_by` of project_id,
  user_id, api_key_id, model, batch, service_tier as `group_by=a,b`, repeated or
  `group_by[]=`; `limit`, `page`) and `GET /v1/organization/costs` (1d only, `group_by`
  project_id, line_item, api_key_id; amounts as JSON numbers with every digit).
* Anthropic (`x-api-key`, `anthropic-version` required):
  `GET /v1/organizations/usage_report/messages` (`starting_at`/`ending_at` RFC 3339,
  `bucket_width`, `group_by[]` of model, api_key_id, workspace_id, service_tier,
  context_window) and `GET /v1/organizations/cost_report` (1d only, `group_by[]`
  workspace_id, description; amounts in cents as decimal strings). Cache creation comes
  nested (`cache_creation.ephemeral_5m_input_tokens`) or, with `flat_cache_creation`,
  flattened (`cache_creation_5m_input_tokens`).

Every bucket of the window is listed, empty ones included; buckets are aligned to the
width in UTC; a page holds at most `limit` buckets (default and maximum per width as the
providers document them) and the rest is reached through `next_page` (sent back as
`page=`). Grouping fields not grouped by are null. A 401 in the provider's error shape
answers a wrong key.

The data are `events` (what was served: time, model, the provider's key id, the five
token classes) priced by `prices` (per million tokens; OpenAI bills cache writes at the
input price, as its usage report counts them as input). Knobs change what is *reported*
without touching the events: `drop_reasoning`, `scale`, `skew` (seconds added to every
time), `adjustments` (late revisions: more usage in a past bucket) and `hidden` (usage
removed from the report). Failures: `fail_next` (n answers with a status, e.g. 429 with
`retry-after` or 500) and `fail_page` (always fail the k-th page of a paginated read).
`requests` records every request (path, query, headers without credentials).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from urllib.request import urlopen

from tests.fakes.loopback import Loopback, LoopbackServer

OPENAI = "openai"
ANTHROPIC = "anthropic"
OPENAI_USAGE_PATH = "/v1/organization/usage/completions"
OPENAI_COSTS_PATH = "/v1/organization/costs"
ANTHROPIC_USAGE_PATH = "/v1/organizations/usage_report/messages"
ANTHROPIC_COST_PATH = "/v1/organizations/cost_report"
MILLION = Decimal(1_000_000)

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# (default, maximum) buckets per page, as the providers document them.
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
OPENAI_COST_LIMITS = (7, 180)
ANTHROPIC_COST_LIMITS = (7, 31)
OPENAI_USAGE_GROUPS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier")
OPENAI_COST_GROUPS = ("project_id", "line_item", "api_key_id")
ANTHROPIC_USAGE_GROUPS = ("model", "api_key_id", "workspace_id", "service_tier", "context_window")
ANTHROPIC_COST_GROUPS = ("workspace_id", "description")
# OpenAI line items are "<model>, <token type>" (observed; not a documented contract).
OPENAI_LINE_ITEM_TYPES = {"input": "input", "cache_read": "cached input", "output": "output"}
ANTHROPIC_TOKEN_TYPES = {
    "input": ("uncached_input_tokens", "Input Tokens"),
    "cache_read": ("cache_read_input_tokens", "Cache Read Input Tokens"),
    "cache_write_5m": ("cache_creation.ephemeral_5m_input_tokens", "Cache Write 5m Tokens"),
    "cache_write_1h": ("cache_creation.ephemeral_1h_input_tokens", "Cache Write 1h Tokens"),
    "output": ("output_tokens", "Output Tokens"),
}


def fingerprint(key: str) -> str:
    """The simulator's fingerprint of an upstream key: sha256 hex, first 16 digits."""
    return hashlib.sha256(key.strip().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServedEvent:
    """One generation as the provider would have metered it (Reckon's disjoint classes)."""

    at: dt.datetime  # when it finished, UTC
    model: str
    api_key_id: str  # the provider's id of the upstream key
    uncached_input: int = 0
    cache_read: int = 0
    cache_write: int = 0  # 5-minute cache writes (OpenAI: counted as input)
    output: int = 0  # visible output only
    reasoning: int = 0
    cache_write_1h: int = 0  # Anthropic 1-hour cache writes
    requests: int = 1
    project_id: str = "proj_default"  # OpenAI project / Anthropic workspace
    service_tier: str = ""  # '' = the provider's default ("default" / "standard")


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens."""

    input: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    cache_write_1h: Decimal | None = None  # defaults to cache_write


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    status: int
    headers: dict[str, str]  # credentials removed


@dataclass
class _Failure:
    status: int
    remaining: int  # -1: forever
    path: str | None
    page: int | None  # 1-based page index of a paginated read; None: any request
    retry_after: str | None


def events_from_simulator(
    simulator_url: str,
    *,
    key_ids: Mapping[str, str],
    unknown_key_id: Callable[[str], str] | None = None,
    project_id: str = "proj_default",
) -> list[ServedEvent]:
    """Events from the simulator's `/_sim/served` log (what it actually served).

    `key_ids` maps an upstream key (or its fingerprint) to the provider's key id the test
    chooses. A fingerprint not in the map becomes `unknown_key_id(fingerprint)`, by
    default `key_<fingerprint>`.
    """
    by_fingerprint: dict[str, str] = {}
    for key, key_id in key_ids.items():
        by_fingerprint[key if _is_fingerprint(key) else fingerprint(key)] = key_id
    with urlopen(simulator_url.rstrip("/") + "/_sim/served", timeout=10) as response:
        log = json.loads(response.read())
    events = []
    for entry in log["served"]:
        fp = entry["key_fingerprint"]
        key_id = by_fingerprint.get(fp)
        if key_id is None:
            key_id = unknown_key_id(fp) if unknown_key_id else f"key_{fp}"
        events.append(
            ServedEvent(
                at=dt.datetime.fromisoformat(entry["finished_at"]),
                model=entry["model"],
                api_key_id=key_id,
                uncached_input=entry["input_tokens"],
                cache_read=entry["cached_input_tokens"],
                cache_write=entry["cache_write_tokens"],
                output=entry["output_tokens"],
                reasoning=entry["reasoning_tokens"],
                project_id=project_id,
            )
        )
    return events


def _is_fingerprint(value: str) -> bool:
    return len(value) == 16 and all(c in "0123456789abcdef" for c in value)


def decimal_json(value: Any) -> str:
    """JSON text where a Decimal is written as a JSON number with all its digits."""
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text if "." in text or "e" in text.lower() else text + ".0"
    if isinstance(value, dict):
        items = (json.dumps(str(k)) + ":" + decimal_json(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(decimal_json(v) for v in value) + "]"
    return json.dumps(value)


class FakeProviderAdmin:
    """One provider's admin report API on 127.0.0.1 (random free port), in a thread."""

    def __init__(
        self,
        provider: str,
        *,
        admin_key: str = "sk-admin-fake",
        events: Iterable[ServedEvent] = (),
        prices: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        if provider not in (OPENAI, ANTHROPIC):
            raise ValueError(f"unknown provider {provider!r}")
        self.provider = provider
        self.admin_key = admin_key
        self.events: list[ServedEvent] = list(events)
        self.prices: dict[str, ModelPrice] = dict(prices or {})
        # Knobs on what is reported (the events stay as served).
        self.drop_reasoning = False  # report output without reasoning
        self.scale = Decimal(1)  # multiply every reported count and cost (rounded half even)
        self.skew = dt.timedelta(0)  # added to every event's time
        self.adjustments: list[ServedEvent] = []  # late revisions: usage added afterwards
        self.hidden: Callable[[ServedEvent], bool] | None = None  # usage left out
        self.flat_cache_creation = False  # Anthropic: flattened cache-creation fields
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._server: Loopback | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeProviderAdmin:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = Loopback(self, _Handler, "FakeProviderAdmin")
        self.url = f"http://127.0.0.1:{self._server.port}/v1"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()

    def __enter__(self) -> FakeProviderAdmin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        retry_after: str | None = None,
        report: str | None = None,
    ) -> None:
        """The next `n` requests (to `report` "usage"/"cost" only, if given) answer
        `status` in the provider's error shape, with `retry-after` if given."""
        with self._lock:
            self._failures.append(_Failure(status, n, self._path_of(report), None, retry_after))

    def fail_page(self, page: int, status: int = 500, *, report: str | None = None) -> None:
        """Every request for the `page`-th page (1-based) of a read fails, forever."""
        with self._lock:
            self._failures.append(_Failure(status, -1, self._path_of(report), page, None))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def add_usage(self, event: ServedEvent) -> None:
        """A late revision: usage the provider adds to a past bucket after the fact."""
        with self._lock:
            self.adjustments.append(event)

    def _path_of(self, report: str | None) -> str | None:
        if report is None:
            return None
        if report not in ("usage", "cost"):
            raise ValueError("report is 'usage' or 'cost'")
        if self.provider == OPENAI:
            return OPENAI_USAGE_PATH if report == "usage" else OPENAI_COSTS_PATH
        return ANTHROPIC_USAGE_PATH if report == "usage" else ANTHROPIC_COST_PATH

    # -- what is reported --------------------------------------------------------------

    def reported_events(self) -> list[ServedEvent]:
        """The events as the report sees them, all knobs applied."""
        with self._lock:
            events = [*self.events, *self.adjustments]
            hidden, scale, skew = self.hidden, self.scale, self.skew
            drop = self.drop_reasoning
        out = []
        for event in events:
            if hidden is not None and hidden(event):
                continue
            out.append(
                replace(
                    event,
                    at=event.at + skew,
                    uncached_input=_scaled(event.uncached_input, scale),
                    cache_read=_scaled(event.cache_read, scale),
                    cache_write=_scaled(event.cache_write, scale),
                    cache_write_1h=_scaled(event.cache_write_1h, scale),
                    output=_scaled(event.output, scale),
                    reasoning=0 if drop else _scaled(event.reasoning, scale),
                )
            )
        return out

    # -- HTTP --------------------------------------------------------------------------

    def _dispatch(
        self, method: str, target: str, headers: Mapping[str, str]
    ) -> tuple[int, str, dict[str, str]]:
        parts = urlsplit(target)
        query = parse_qsl(parts.query, keep_blank_values=True)
        status, body, extra = self._answer(method, parts.path, query, headers)
        safe = {
            k.lower(): v
            for k, v in headers.items()
            if k.lower() not in ("authorization", "x-api-key")
        }
        with self._lock:
            self.requests.append(RecordedRequest(method, parts.path, query, status, safe))
        return status, body, extra

    def _answer(
        self, method: str, path: str, query: list[tuple[str, str]], headers: Mapping[str, str]
    ) -> tuple[int, str, dict[str, str]]:
        routes = (
            {OPENAI_USAGE_PATH: self._openai_usage, OPENAI_COSTS_PATH: self._openai_costs}
            if self.provider == OPENAI
            else {
                ANTHROPIC_USAGE_PATH: self._anthropic_usage,
                ANTHROPIC_COST_PATH: self._anthropic_costs,
            }
        )
        handler = routes.get(path)
        if handler is None:
            return self._error(404, f"Invalid URL ({method} {path})")
        if method != "GET":
            return self._error(405, f"Method {method} not allowed")
        if not self._authorized(headers):
            return self._error(401, self._auth_message(headers))
        if self.provider == ANTHROPIC and not headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        params = _Params(query)
        failure = self._take_failure(path, params.page_index())
        if failure is not None:
            extra = {"retry-after": failure.retry_after} if failure.retry_after else {}
            status, body, _ = self._error(failure.status, _failure_message(failure.status))
            return status, body, extra
        try:
            return 200, handler(params), {}
        except _BadRequest as exc:
            return self._error(400, str(exc))

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self.provider == OPENAI:
            value = headers.get("authorization") or ""
            return value == f"Bearer {self.admin_key}"
        return (headers.get("x-api-key") or "") == self.admin_key

    def _auth_message(self, headers: Mapping[str, str]) -> str:
        if self.provider == ANTHROPIC:
            return "invalid x-api-key"
        if not headers.get("authorization"):
            return "You didn't provide an API key."
        return "Incorrect API key provided. You can find your API key at the admin keys page."

    def _take_failure(self, path: str, page: int) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.path is not None and failure.path != path:
                    continue
                if failure.page is not None and failure.page != page:
                    continue
                if failure.remaining == 0:
                    continue
                if failure.remaining > 0:
                    failure.remaining -= 1
                return failure
        return None

    def _error(self, status: int, message: str) -> tuple[int, str, dict[str, str]]:
        if self.provider == ANTHROPIC:
            kinds = {
                400: "invalid_request_error",
                401: "authentication_error",
                403: "permission_error",
                404: "not_found_error",
                405: "invalid_request_error",
                429: "rate_limit_error",
                529: "overloaded_error",
            }
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": kinds.get(status, "api_error"), "message": message},
            }
        else:
            kinds_openai = {
                400: ("invalid_request_error", None),
                401: ("invalid_request_error", "invalid_api_key"),
                404: ("invalid_request_error", "unknown_url"),
                429: ("requests", "rate_limit_exceeded"),
            }
            kind, code = kinds_openai.get(status, ("server_error", None))
            payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return status, json.dumps(payload), {}

    # -- windows and pages ---------------------------------------------------------------

    def _page(
        self,
        params: _Params,
        *,
        width: str,
        start: int,
        end: int,
        limits: tuple[int, int],
        bucket: Callable[[int, int], dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], bool, str | None]:
        seconds = WIDTHS[width]
        default, maximum = limits
        limit = params.integer("limit", default)
        if not 1 <= limit <= maximum:
            raise _BadRequest(f"limit must be between 1 and {maximum} for bucket_width {width}")
        first = start - start % seconds
        cursor = params.cursor()
        position = cursor if cursor is not None else first
        if position < first or (position - first) % seconds:
            raise _BadRequest("page is not a cursor of this query")
        data = []
        while position < end and len(data) < limit:
            data.append(bucket(position, position + seconds))
            position += seconds
        has_more = position < end
        next_page = _encode_cursor(position, params.page_index() + 1) if has_more else None
        return data, has_more, next_page

    def _grouped(
        self,
        events: Iterable[ServedEvent],
        start: int,
        end: int,
        key: Callable[[ServedEvent], tuple[Any, ...]],
    ) -> dict[tuple[Any, ...], list[ServedEvent]]:
        groups: dict[tuple[Any, ...], list[ServedEvent]] = {}
        for event in events:
            at = int(event.at.timestamp())
            if start <= at < end:
                groups.setdefault(key(event), []).append(event)
        return dict(sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])))

    # -- OpenAI --------------------------------------------------------------------------

    def _openai_window(self, params: _Params, widths: tuple[str, ...]) -> tuple[str, int, int]:
        width = params.get("bucket_width") or "1d"
        if width not in widths:
            raise _BadRequest(f"bucket_width must be one of {', '.join(widths)}")
        start = params.integer("start_time", None)
        if start is None:
            raise _BadRequest("Missing required parameter: 'start_time'.")
        end = params.integer("end_time", None)
        if end is None:
            default_limit = params.integer("limit", USAGE_LIMITS.get(width, (7, 0))[0])
            end = start - start % WIDTHS[width] + default_limit * WIDTHS[width]
        return width, start, end

    def _openai_usage(self, params: _Params) -> str:
        width, start, end = self._openai_window(params, ("1m", "1h", "1d"))
        groups = params.groups(OPENAI_USAGE_GROUPS)
        events = self.reported_events()

        def bucket(b_start: int, b_end: int) -> dict[str, Any]:
            results = []
            for key, members in self._grouped(
                events, b_start, b_end, lambda e: _openai_key(e, groups)
            ).items():
                fields = dict(zip(OPENAI_USAGE_GROUPS, key, strict=True))
                uncached = sum(e.uncached_input + e.cache_write + e.cache_write_1h for e in members)
                cached = sum(e.cache_read for e in members)
                results.append(
                    {
                        "object": "organization.usage.completions.result",
                        "input_tokens": uncached + cached,
                        "output_tokens": sum(e.output + e.reasoning for e in members),
                        "input_cached_tokens": cached,
                        "input_audio_tokens": 0,
                        "output_audio_tokens": 0,
                        "num_model_requests": sum(e.requests for e in members),
                        "project_id": fields["project_id"],
                        "user_id": fields["user_id"],
                        "api_key_id": fields["api_key_id"],
                        "model": fields["model"],
                        "batch": fields["batch"],
                        "service_tier": fields["service_tier"],
                    }
                )
            return {
                "object": "bucket",
                "start_time": b_start,
                "end_time": b_end,
                "results": results,
            }

        data, has_more, next_page = self._page(
            params, width=width, start=start, end=end, limits=USAGE_LIMITS[width], bucket=bucket
        )
        return decimal_json(
            {"object": "page", "data": data, "has_more": has_more, "next_page": next_page}
        )

    def _openai_costs(self, params: _Params) -> str:
        width, start, end = self._openai_window(params, ("1d",))
        groups = params.groups(OPENAI_COST_GROUPS)
        lines = self._cost_lines(self.reported_events())

        def bucket(b_start: int, b_end: int) -> dict[str, Any]:
            sums: dict[tuple[Any, ...], Decimal] = {}
            for at, event, kind, amount in lines:
                if not b_start <= at < b_end:
                    continue
                item = f"{event.model}, {OPENAI_LINE_ITEM_TYPES[_openai_kind(kind)]}"
                key = (
                    event.project_id if "project_id" in groups else None,
                    item if "line_item" in groups else None,
                    event.api_key_id if "api_key_id" in groups else None,
                )
                sums[key] = sums.get(key, Decimal(0)) + amount
            results = [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": amount, "currency": "usd"},
                    "line_item": line_item,
                    "project_id": project_id,
                    "api_key_id": api_key_id,
                }
                for (project_id, line_item, api_key_id), amount in sorted(
                    sums.items(), key=lambda item: tuple(str(v) for v in item[0])
                )
            ]
            return {
                "object": "bucket",
                "start_time": b_start,
                "end_time": b_end,
                "results": results,
            }

        data, has_more, next_page = self._page(
            params, width=width, start=start, end=end, limits=OPENAI_COST_LIMITS, bucket=bucket
        )
        return decimal_json(
            {"object": "page", "data": data, "has_more": has_more, "next_page": next_page}
        )

    # -- Anthropic -----------------------------------------------------------------------

    def _anthropic_window(self, params: _Params, widths: tuple[str, ...]) -> tuple[str, int, int]:
        width = params.get("bucket_width") or "1d"
        if width not in widths:
            raise _BadRequest(f"bucket_width: must be one of {', '.join(widths)}")
        start_text = params.get("starting_at")
        if not start_text:
            raise _BadRequest("starting_at: Field required")
        start = _parse_rfc3339(start_text, "starting_at")
        end_text = params.get("ending_at")
        if end_text:
            end = _parse_rfc3339(end_text, "ending_at")
        else:
            limits = USAGE_LIMITS[width] if width != "1d" else ANTHROPIC_COST_LIMITS
            end = start - start % WIDTHS[width] + params.integer("limit", limits[0]) * WIDTHS[width]
        return width, start, end

    def _anthropic_usage(self, params: _Params) -> str:
        width, start, end = self._anthropic_window(params, ("1m", "1h", "1d"))
        groups = params.groups(ANTHROPIC_USAGE_GROUPS)
        events = self.reported_events()
        flat = self.flat_cache_creation

        def bucket(b_start: int, b_end: int) -> dict[str, Any]:
            results = []
            for key, members in self._grouped(
                events, b_start, b_end, lambda e: _anthropic_key(e, groups)
            ).items():
                fields = dict(zip(ANTHROPIC_USAGE_GROUPS, key, strict=True))
                five = sum(e.cache_write for e in members)
                hour = sum(e.cache_write_1h for e in members)
                result: dict[str, Any] = {
                    "uncached_input_tokens": sum(e.uncached_input for e in members),
                    "cache_read_input_tokens": sum(e.cache_read for e in members),
                }
                if flat:
                    result["cache_creation_5m_input_tokens"] = five
                    result["cache_creation_1h_input_tokens"] = hour
                else:
                    result["cache_creation"] = {
                        "ephemeral_5m_input_tokens": five,
                        "ephemeral_1h_input_tokens": hour,
                    }
                result["output_tokens"] = sum(e.output + e.reasoning for e in members)
                result["server_tool_use"] = {"web_search_requests": 0}
                result.update(fields)
                results.append(result)
            return {
                "starting_at": _rfc3339(b_start),
                "ending_at": _rfc3339(b_end),
                "results": results,
            }

        data, has_more, next_page = self._page(
            params, width=width, start=start, end=end, limits=USAGE_LIMITS[width], bucket=bucket
        )
        return decimal_json({"data": data, "has_more": has_more, "next_page": next_page})

    def _anthropic_costs(self, params: _Params) -> str:
        width, start, end = self._anthropic_window(params, ("1d",))
        groups = params.groups(ANTHROPIC_COST_GROUPS)
        lines = self._cost_lines(self.reported_events())
        by_description = "description" in groups

        def bucket(b_start: int, b_end: int) -> dict[str, Any]:
            sums: dict[tuple[Any, ...], Decimal] = {}
            for at, event, kind, amount in lines:
                if not b_start <= at < b_end:
                    continue
                key = (
                    event.project_id if "workspace_id" in groups else None,
                    (event.model, kind, event.service_tier or "standard")
                    if by_description
                    else None,
                )
                sums[key] = sums.get(key, Decimal(0)) + amount
            results = []
            for (workspace, detail), dollars in sorted(
                sums.items(), key=lambda item: tuple(str(v) for v in item[0])
            ):
                model, kind, tier = detail if detail else (None, None, None)
                token_type, label = ANTHROPIC_TOKEN_TYPES[kind] if kind else (None, None)
                results.append(
                    {
                        "currency": "USD",
                        "amount": format(dollars * 100, "f"),
                        "workspace_id": workspace,
                        "description": f"{model} Usage - {label}" if detail else None,
                        "cost_type": "tokens" if detail else None,
                        "context_window": "0-200k" if detail else None,
                        "model": model,
                        "service_tier": tier,
                        "token_type": token_type,
                        "inference_geo": None,
                    }
                )
            return {
                "starting_at": _rfc3339(b_start),
                "ending_at": _rfc3339(b_end),
                "results": results,
            }

        data, has_more, next_page = self._page(
            params, width=width, start=start, end=end, limits=ANTHROPIC_COST_LIMITS, bucket=bucket
        )
        return decimal_json({"data": data, "has_more": has_more, "next_page": next_page})

    # -- prices ----------------------------------------------------------------------------

    def _cost_lines(
        self, events: Iterable[ServedEvent]
    ) -> list[tuple[int, ServedEvent, str, Decimal]]:
        """(unix time, event, token kind, exact USD) per priced class of each event."""
        lines = []
        for event in events:
            price = self.prices.get(event.model)
            if price is None:
                continue
            at = int(event.at.timestamp())
            write_price = price.cache_write
            hour_price = price.cache_write if price.cache_write_1h is None else price.cache_write_1h
            if self.provider == OPENAI:  # OpenAI bills cache writes as input
                write_price = hour_price = price.input
            for kind, tokens, per_million in (
                ("input", event.uncached_input, price.input),
                ("cache_read", event.cache_read, price.cache_read),
                ("cache_write_5m", event.cache_write, write_price),
                ("cache_write_1h", event.cache_write_1h, hour_price),
                ("output", event.output + event.reasoning, price.output),
            ):
                if tokens:
                    lines.append((at, event, kind, tokens * per_million / MILLION))
        return lines

    def expected_cost(self, *, model: str | None = None) -> Decimal:
        """The exact USD the cost report adds up to (all of it, or one model's)."""
        return sum(
            (
                amount
                for _, event, _, amount in self._cost_lines(self.reported_events())
                if model is None or event.model == model
            ),
            Decimal(0),
        )


# ---- helpers ---------------------------------------------------------------------------------


class _BadRequest(Exception):
    pass


class _Params:
    def __init__(self, query: list[tuple[str, str]]) -> None:
        self.query = query

    def get(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None

    def integer(self, name: str, default: int | None) -> Any:
        value = self.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise _BadRequest(f"{name} must be an integer") from None

    def groups(self, allowed: tuple[str, ...]) -> set[str]:
        chosen: set[str] = set()
        for key, value in self.query:
            if key in ("group_by", "group_by[]"):
                chosen.update(part.strip() for part in value.split(",") if part.strip())
        unknown = chosen - set(allowed)
        if unknown:
            raise _BadRequest(f"group_by: unsupported value(s) {', '.join(sorted(unknown))}")
        return chosen

    def cursor(self) -> int | None:
        page = self.get("page")
        if not page:
            return None
        try:
            text = base64.urlsafe_b64decode(page.encode()).decode()
            kind, position, _page_number = text.split(":")
            if kind != "bucket":
                raise ValueError(kind)
            return int(position)
        except (ValueError, UnicodeDecodeError):
            raise _BadRequest("page: invalid page token") from None

    def page_index(self) -> int:
        """1-based: the first read has no page token; each token names a later page."""
        page = self.get("page")
        if not page:
            return 1
        try:
            return int(base64.urlsafe_b64decode(page.encode()).decode().split(":")[2])
        except (ValueError, IndexError, UnicodeDecodeError):
            return 0


def _encode_cursor(position: int, page_number: int) -> str:
    """An opaque page token: the next bucket's start and the page number it leads to."""
    return base64.urlsafe_b64encode(f"bucket:{position}:{page_number}".encode()).decode()


def _scaled(value: int, scale: Decimal) -> int:
    if scale == 1:
        return value
    return int((value * scale).to_integral_value(rounding=ROUND_HALF_EVEN))


def _openai_kind(kind: str) -> str:
    return "input" if kind.startswith("cache_write") else kind


def _openai_key(event: ServedEvent, groups: set[str]) -> tuple[Any, ...]:
    values = {
        "project_id": event.project_id,
        "user_id": None,
        "api_key_id": event.api_key_id,
        "model": event.model,
        "batch": False,
        "service_tier": event.service_tier or "default",
    }
    return tuple(values[name] if name in groups else None for name in OPENAI_USAGE_GROUPS)


def _anthropic_key(event: ServedEvent, groups: set[str]) -> tuple[Any, ...]:
    values = {
        "model": event.model,
        "api_key_id": event.api_key_id,
        "workspace_id": event.project_id,
        "service_tier": event.service_tier or "standard",
        "context_window": "0-200k",
    }
    return tuple(values[name] if name in groups else None for name in ANTHROPIC_USAGE_GROUPS)


def _rfc3339(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str, name: str) -> int:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"{name}: invalid RFC 3339 timestamp") from None
    if value.tzinfo is None:
        raise _BadRequest(f"{name}: timestamp needs a time zone")
    return int(value.timestamp())


def _failure_message(status: int) -> str:
    if status == 429:
        return "Rate limit reached for admin API requests (simulated)."
    if status >= 500:
        return "The server had an error while processing your request (simulated)."
    return f"Simulated error {status}."


# ---- server ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeProviderAdmin/1.0"
    timeout = 30
    disable_nagle_algorithm = True
    server: LoopbackServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.server.fake._dispatch(method, self.path, headers)
        data = payload.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "FakeProviderAdmin",
    "ModelPrice",
    "ServedEvent",
    "decimal_json",
    "events_from_simulator",
    "fingerprint",
]
