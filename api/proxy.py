"""The proxy's ASGI application: the hot path, outside Django's request cycle.

Per call it does only what metering needs: read the body, resolve the caller from a
process-local cache (metering.proxy.context), rewrite the model, forward over a pooled
HTTP client, follow the response for usage, and wait for the ledger's group commit
before the last byte (non-streaming) or the terminal event (streaming) reaches the client.
The rest of the service (REST API, admin) is plain Django behind config.asgi.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, connection

from api import proxy_errors as errors
from metering.control import (
    NANO,
    BudgetCost,
    BudgetScope,
    ControlStore,
    ControlUnavailable,
    Grant,
    ceil_tokens,
    to_nano,
)
from metering.costs import serving_cost
from metering.keys import api_key_hash
from metering.leases import Lease
from metering.ledger import LedgerWriter
from metering.models import UsageRecord
from metering.proxy.adapters import (
    ENDPOINTS_BY_PATH,
    Endpoint,
    InvalidRequest,
    Outcome,
    PreparedCall,
    prepare_call,
    stream_tracker_for,
)
from metering.proxy.context import (
    ANTHROPIC_DEFAULT_VERSION,
    CallerContext,
    Controls,
    LookupUnavailable,
    RouteInfo,
    TtlCache,
    caller_context_load,
)
from metering.proxy.governance import (
    apply_reasoning_rules,
    requested_max_output,
    set_max_output,
)
from metering.proxy.sse import SseEvent, SseSplitter, format_event
from metering.proxy.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from metering.usage import TokenUsage

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REQUEST_ID_HEADER = b"x-reckon-request-id"
JSON_HEADERS = [(b"content-type", b"application/json")]
_PASSTHROUGH_RESPONSE_HEADERS = (
    "x-request-id",
    "request-id",
    "retry-after",
    "openai-processing-ms",
)
# Seconds a caller is asked to wait when the proxy cannot reach its database.
RETRY_AFTER_S = b"2"
_FORWARDED_REQUEST_HEADERS = {b"openai-beta": "OpenAI-Beta", b"anthropic-beta": "anthropic-beta"}

Status = UsageRecord.Status
MILLION = Decimal(1_000_000)


class ProxyApp:
    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookup")
        self._lookup_timeout = settings.RECKON_AUTH_LOOKUP_TIMEOUT_SECONDS
        self.callers: TtlCache[str, CallerContext | None] = TtlCache(
            caller_context_load,
            ttl=settings.RECKON_AUTH_CACHE_SECONDS,
            executor=self._lookups,
            stale_for=settings.RECKON_AUTH_STALE_SECONDS,
            load_timeout=self._lookup_timeout,
        )
        self.ledger = LedgerWriter(
            max_batch=settings.RECKON_LEDGER_MAX_BATCH,
            spool_dir=settings.RECKON_LEDGER_SPOOL_DIR,
            parallel_at=settings.RECKON_LEDGER_PARALLEL_AT,
        )
        self.control = (
            ControlStore(
                settings.REDIS_URL,
                window_s=settings.RECKON_RATE_WINDOW_SECONDS,
                lease_calls=settings.RECKON_CONTROL_LEASE_CALLS,
                on_crossed=self._alert,
                hold_ttl_s=settings.RECKON_CONTROL_HOLD_TTL_SECONDS,
            )
            if settings.REDIS_URL
            else None
        )
        # read once: the hot path asks for them on every controlled call
        self._hold_ceiling = settings.RECKON_HOLD_CEILING_TOKENS
        self._hold_share = settings.RECKON_HOLD_SHARE
        self._hold_unseen_input = settings.RECKON_HOLD_UNSEEN_INPUT_TOKENS
        self.upstream = UpstreamClient(
            connect_timeout=settings.RECKON_UPSTREAM_CONNECT_TIMEOUT,
            read_timeout=settings.RECKON_UPSTREAM_READ_TIMEOUT,
        )

    # --- lifecycle ---------------------------------------------------------------

    async def shutdown(self) -> None:
        await self.ledger.close()
        if self.control is not None:  # its last reports may still signal alerts
            await self.control.close()
        self._lookups.submit(lambda: connection.close()).result()
        self._lookups.shutdown(wait=True)
        await self.upstream.close()

    # --- dispatch ----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one call; whatever fails inside, the caller gets its own error format,
        never the server's plain 500 nor a traceback."""
        started = False

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._dispatch(scope, receive, tracked_send)
        except Exception as exc:
            if started:
                logger.exception("proxy failure after the response started (%s)", scope["path"])
                raise  # the server cuts the connection: the client sees a broken response
            logger.exception("proxy failure before the response started (%s)", scope["path"])
            anthropic = _wants_anthropic(scope) or scope["path"] == "/v1/messages"
            if isinstance(exc, DatabaseError):
                await _send_unavailable(send, anthropic)
            else:
                await _send_error(
                    send, errors.INTERNAL, "The server had an error; please retry.", anthropic
                )

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        endpoint = ENDPOINTS_BY_PATH.get(path)
        if endpoint is not None:
            if scope["method"] != "POST":
                await _send_error(
                    send, errors.METHOD_NOT_ALLOWED, "Use POST.", endpoint.anthropic_format
                )
                return
            await self._proxy(scope, receive, send, endpoint)
        elif path == "/v1/models" and scope["method"] == "GET":
            await self._models(scope, send)
        else:
            await _send_error(
                send, errors.NOT_FOUND, f"Unknown path {path}.", _wants_anthropic(scope)
            )

    async def _caller(self, scope: Scope, anthropic: bool, send: Send) -> CallerContext | None:
        raw_key = _credential(scope["headers"])
        if not raw_key:
            message = (
                "x-api-key header is required"
                if anthropic
                else "You didn't provide an API key. Use 'Authorization: Bearer rk_...'."
            )
            await _send_error(send, errors.AUTHENTICATION, message, anthropic)
            return None
        try:
            caller = await self.callers.get(api_key_hash(raw_key))
        except LookupUnavailable as exc:
            logger.error("cannot look up a caller's key: %s", exc)
            await _send_unavailable(send, anthropic)
            return None
        if caller is None or (
            caller.expires_at is not None and caller.expires_at <= datetime.now(UTC)
        ):
            shown = raw_key[:10] + "…" if len(raw_key) > 10 else raw_key
            message = (
                "invalid x-api-key"
                if anthropic
                else f"Incorrect API key provided: {shown}. The key may be revoked or expired."
            )
            await _send_error(send, errors.AUTHENTICATION, message, anthropic)
            return None
        return caller

    async def _models(self, scope: Scope, send: Send) -> None:
        anthropic = _wants_anthropic(scope)
        caller = await self._caller(scope, anthropic, send)
        if caller is None:
            return
        aliases = sorted(caller.routes)
        if anthropic:
            body = {
                "data": [
                    {
                        "type": "model",
                        "id": a,
                        "display_name": a,
                        "created_at": "2025-01-01T00:00:00Z",
                    }
                    for a in aliases
                ],
                "has_more": False,
                "first_id": aliases[0] if aliases else None,
                "last_id": aliases[-1] if aliases else None,
            }
        else:
            body = {
                "object": "list",
                "data": [
                    {"id": a, "object": "model", "created": 0, "owned_by": "reckon"}
                    for a in aliases
                ],
            }
        await _send_response(send, 200, JSON_HEADERS, orjson.dumps(body))

    # --- the hot path -----------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        started_ns = time.perf_counter_ns()
        started_at = datetime.now(UTC)
        anthropic = endpoint.anthropic_format
        content_type = b""
        forwarded: dict[str, str] = {}
        anthropic_version = ANTHROPIC_DEFAULT_VERSION
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"anthropic-version":
                anthropic_version = value.decode("latin-1")
            elif name in _FORWARDED_REQUEST_HEADERS:
                forwarded[_FORWARDED_REQUEST_HEADERS[name]] = value.decode("latin-1")

        caller = await self._caller(scope, anthropic, send)
        if caller is None:
            return
        body = await _read_body(receive, settings.RECKON_MAX_BODY_BYTES)
        if body is None:
            limit = settings.RECKON_MAX_BODY_BYTES
            await _send_error(
                send, errors.TOO_LARGE, f"Request body exceeds {limit} bytes.", anthropic
            )
            return
        if not content_type.startswith(b"application/json"):
            await _send_error(
                send, errors.UNSUPPORTED_MEDIA, "Content-Type must be application/json.", anthropic
            )
            return
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await _send_error(
                send, errors.INVALID_REQUEST, f"Malformed JSON body: {exc}", anthropic
            )
            return
        if not isinstance(request, dict):
            await _send_error(
                send, errors.INVALID_REQUEST, "The body must be a JSON object.", anthropic
            )
            return
        alias = request.get("model")
        if not isinstance(alias, str) or not alias:
            await _send_error(
                send,
                errors.INVALID_REQUEST,
                "'model' is required and must be a string.",
                anthropic,
                "model",
            )
            return
        route = caller.routes.get(alias)
        if route is None:
            message = f"The model '{alias}' does not exist or you do not have access to it."
            await _send_error(send, errors.MODEL_NOT_FOUND, message, anthropic, "model")
            return
        if route.provider not in endpoint.providers:
            message = f"The model '{alias}' is not served on this endpoint."
            await _send_error(send, errors.INVALID_REQUEST, message, anthropic, "model")
            return
        if route.credential_missing:
            message = (
                f"Route '{alias}' is misconfigured on this server (upstream credential missing)."
            )
            await _send_error(send, errors.MISCONFIGURED, message, anthropic)
            return
        hold: Hold | None = None
        controls = caller.controls
        if controls is not None:
            for rules in controls.reasoning:
                refusal = apply_reasoning_rules(endpoint.name, request, rules)
                if refusal:
                    await _send_error(send, errors.INVALID_REQUEST, refusal, anthropic)
                    return
            if controls.budgets or controls.rates:
                hold = await self._admit(
                    controls, route, endpoint, request, len(body), send, anthropic
                )
                if hold is None:
                    return
        try:
            prepared = prepare_call(endpoint, request, route.upstream_model)
        except InvalidRequest as exc:
            if hold is not None:
                self._release(hold)
            await _send_error(send, errors.INVALID_REQUEST, exc.message, anthropic, exc.param)
            return

        call = _Call(self, caller, route, endpoint, prepared, started_at, started_ns, hold)
        await call.run(receive, send, route.upstream_headers(anthropic_version, forwarded))

    async def _admit(
        self,
        controls: Controls,
        route: RouteInfo,
        endpoint: Endpoint,
        request: dict[str, Any],
        body_size: int,
        send: Send,
        anthropic: bool,
    ) -> "Hold | None":
        """Hold the call against its budgets and count it in its rate windows, or answer
        the refusal and return None. Where the grant is below what the call would
        otherwise be allowed, the request's output maximum is set to the grant."""
        prices = route.spend_rates
        if controls.money_budgets and prices is None:
            message = (
                f"Spend limits apply to this key but '{route.alias}' has no price on your plan."
            )
            await _send_error(send, errors.SPEND_EXCEEDED, message, anthropic)
            return None
        ceiling = self._hold_ceiling
        plausible = min(route.hold_cap or ceiling, ceiling)
        asked = requested_max_output(endpoint.name, request)
        if asked is None:
            grant = Grant(plausible, ceiling, self._hold_share)
        elif controls.clamp_to_budget:  # lowered to what is left, refused once nothing is
            grant = Grant(min(asked, route.hold_cap or 1), asked)
        else:
            grant = Grant(asked, asked)
        in_tokens = ceil_tokens(body_size)
        if "previous_response_id" in request or "conversation" in request:
            # the input lives upstream, not in this body: hold for a whole context
            in_tokens += self._hold_unseen_input
        choices = request.get("n")
        per_choice = choices if type(choices) is int and choices > 1 else 1
        costs = _budget_costs(controls.budgets, route.hold_prices, in_tokens, per_choice)
        hold = Hold(controls.budgets, controls.rates, in_tokens + grant.out_max)
        if self.control is None:
            if settings.RECKON_CONTROL_FAIL_OPEN:
                return hold.unchecked()
            await _send_unavailable(
                send, anthropic, errors.CONTROL_UNAVAILABLE, "Spend control is not configured."
            )
            return None
        try:
            admission = self.control.admit_leased(
                controls.budgets, costs, grant, controls.rates, hold.est_tokens, self._in_thread
            ) or await self.control.admit(
                budgets=controls.budgets,
                costs=costs,
                grant=grant,
                rates=controls.rates,
                est_tokens=hold.est_tokens,
                load_in_thread=self._in_thread,
                leased_tried=True,
            )
        except (DatabaseError, TimeoutError) as exc:  # a budget could not be loaded
            logger.error("cannot load a budget from the database: %r", exc)
            await _send_unavailable(send, anthropic)
            return None
        except ControlUnavailable:
            logger.error(
                "spend control store unreachable; failing %s",
                "open" if settings.RECKON_CONTROL_FAIL_OPEN else "closed",
            )
            if settings.RECKON_CONTROL_FAIL_OPEN:
                return hold.unchecked()
            await _send_unavailable(
                send,
                anthropic,
                errors.CONTROL_UNAVAILABLE,
                "Spend control is unavailable; try again shortly.",
            )
            return None
        if admission.allowed:
            hold.headers = admission.headers
            hold.token_windows = admission.token_windows
            hold.lease = admission.lease
            if controls.budgets:
                granted = admission.output_tokens
                hold.holds = admission.holds or [c.fixed + c.per_token * granted for c in costs]
                hold.generations = admission.generations
                if asked is None or granted < asked:
                    set_max_output(endpoint.name, request, granted)
            return hold
        if admission.reason == "budget" and admission.budget is not None:
            message = _budget_refusal(admission.budget, admission.left, costs, controls, grant)
            await _send_error(
                send, errors.SPEND_EXCEEDED, message, anthropic, extra_headers=admission.headers
            )
        else:
            kind = (
                errors.REQUESTS_LIMITED if admission.reason == "requests" else errors.TOKENS_LIMITED
            )
            message = (
                f"Rate limit reached for {admission.reason} per minute. "
                f"Please try again in {admission.retry_after_s}s."
            )
            await _send_error(send, kind, message, anthropic, extra_headers=admission.headers)
        return None

    def _release(
        self,
        hold: "Hold",
        *,
        spend: Decimal | None = None,
        reasoning_tokens: int = 0,
        actual_tokens: int | None = None,
    ) -> None:
        """Settle a hold for what the call used (nothing, when it never reached upstream)."""
        if self.control is None or hold.checked is False:
            return
        spent = 0 if spend is None else to_nano(spend)
        actuals = [reasoning_tokens if b.kind == "reasoning" else spent for b in hold.budgets]
        delta = (actual_tokens if actual_tokens is not None else 0) - hold.est_tokens
        if hold.lease is not None:
            self.control.settle_leased(hold.lease, hold.holds, actuals, delta)
            return
        self.control.settle(
            budgets=hold.budgets,
            holds=hold.holds,
            actuals=actuals,
            rates=hold.rates,
            token_delta=delta,
            generations=hold.generations,
            token_windows=hold.token_windows,
            lease=hold.lease,
        )  # not awaited: the command is on its way, the response need not wait for it

    def _in_thread(self, fn: Callable[[], int]) -> "asyncio.Future[int]":
        """Run a ledger lookup on the lookup thread (loading a budget into Redis), for at
        most the lookup timeout (TimeoutError past it)."""
        loaded = asyncio.get_running_loop().run_in_executor(self._lookups, fn)
        return asyncio.ensure_future(asyncio.wait_for(loaded, self._lookup_timeout))

    def _alert(self, budget: BudgetScope) -> None:
        """A settlement took a budget across an alert percentage: evaluate now."""
        if budget.tenant_id is not None:
            self._lookups.submit(alerts_check, budget.tenant_id)


def _budget_costs(
    budgets: tuple[BudgetScope, ...],
    hold_prices: tuple[int, int] | None,
    in_tokens: int,
    choices: int = 1,
) -> list[BudgetCost]:
    """The call's cost to each budget per output token granted (each of `choices` choices
    may spend the whole grant), in the budget's unit, rounded up."""
    reasoning = BudgetCost(0, choices)  # reasoning tokens are at most the output tokens
    if hold_prices is None:  # only reasoning budgets: a money budget is refused before
        return [reasoning] * len(budgets)
    per_million_input, per_output_token = hold_prices
    money = BudgetCost(-(-in_tokens * per_million_input // 1_000_000), choices * per_output_token)
    return [reasoning if b.kind == "reasoning" else money for b in budgets]


def _budget_refusal(
    budget: BudgetScope, left: int, costs: list[BudgetCost], controls: Controls, grant: Grant
) -> str:
    cost = costs[list(controls.budgets).index(budget)]
    if budget.kind == "reasoning":
        return (
            f"The {budget.label} has {max(left, 0)} tokens left and this call may use up to "
            f"{grant.out_min}. Lower max_completion_tokens or wait for the next month."
        )
    need = Decimal(cost.fixed + cost.per_token * grant.out_min) / NANO
    left_money = max(Decimal(left) / NANO, Decimal(0))
    return (
        f"This call could cost up to {need:.6f} and only {left_money:.6f} of your "
        f"{budget.label} remains. Lower max_completion_tokens or raise the limit."
    )


def alerts_check(tenant_id: uuid.UUID) -> None:
    """Ask billing to evaluate the tenant's alerts (a Celery task; durable evaluation runs
    every few minutes anyway, this only makes a crossing known sooner)."""
    from config.celery import app

    try:
        if app.conf.task_always_eager:
            app.tasks["billing.alerts_evaluate"].delay(str(tenant_id))
        else:
            app.send_task("billing.alerts_evaluate", args=[str(tenant_id)])
    except Exception:  # noqa: BLE001 - the sweep catches up; never fail a call for this
        logger.exception("could not enqueue the alert evaluation of tenant %s", tenant_id)


class Hold:
    """A call's admission: its holds and the budgets and rate scopes it was placed on."""

    __slots__ = (
        "budgets",
        "rates",
        "holds",
        "est_tokens",
        "generations",
        "token_windows",
        "headers",
        "checked",
        "lease",
    )

    def __init__(
        self,
        budgets: tuple[BudgetScope, ...],
        rates: Any,
        est_tokens: int,
    ) -> None:
        self.budgets = budgets
        self.rates = rates
        self.holds: list[int] = [0] * len(budgets)
        self.generations: list[int] = [0] * len(budgets)
        self.token_windows: list[str] | None = None
        self.est_tokens = est_tokens
        self.headers: list[tuple[bytes, bytes]] = []
        self.checked = True
        self.lease: Lease | None = None

    def unchecked(self) -> "Hold":
        self.checked = False
        return self


class _Call:
    """One proxied request from upstream call to committed record."""

    __slots__ = (
        "app",
        "caller",
        "route",
        "endpoint",
        "prepared",
        "started_at",
        "started_ns",
        "request_id",
        "ttft_ns",
        "client_gone",
        "upstream_status",
        "drain_deadline",
        "hold",
    )

    def __init__(
        self,
        app: ProxyApp,
        caller: CallerContext,
        route: RouteInfo,
        endpoint: Endpoint,
        prepared: PreparedCall,
        started_at: datetime,
        started_ns: int,
        hold: "Hold | None" = None,
    ) -> None:
        self.hold = hold
        self.app = app
        self.caller = caller
        self.route = route
        self.endpoint = endpoint
        self.prepared = prepared
        self.started_at = started_at
        self.started_ns = started_ns
        self.request_id = uuid.uuid4()
        self.ttft_ns: int | None = None
        self.client_gone = False
        self.upstream_status = 0
        self.drain_deadline: asyncio.TimerHandle | None = None

    async def run(self, receive: Receive, send: Send, upstream_headers: dict[str, str]) -> None:
        url = self.route.base_url + self.endpoint.upstream_path
        anthropic = self.endpoint.anthropic_format
        try:
            response = await self.app.upstream.post(url, self.prepared.body, upstream_headers)
        except UpstreamError as exc:
            logger.warning(
                "upstream failure for %s (%s): %s", self.request_id, self.route.alias, exc
            )
            await self.record(
                Outcome(TokenUsage(), None, "", Status.FAILED, ["upstream_unreachable"])
            )
            await _send_error(
                send,
                errors.UPSTREAM_UNAVAILABLE,
                f"The upstream for '{self.route.alias}' could not be reached (request {self.request_id}).",
                anthropic,
                extra_headers=[(REQUEST_ID_HEADER, str(self.request_id).encode())],
            )
            return
        self.upstream_status = response.status
        try:
            is_sse = response.content_type == "text/event-stream"
            if self.prepared.stream and response.status == 200 and is_sse:
                await self.relay_stream(response, receive, send)
            else:
                await self.relay_whole(response, send)
        finally:
            response.release()

    def headers_for(self, response: UpstreamResponse) -> list[tuple[bytes, bytes]]:
        headers = [
            (
                b"content-type",
                (response.headers.get("content-type") or "application/json").encode(),
            ),
            (REQUEST_ID_HEADER, str(self.request_id).encode()),
        ]
        for name in _PASSTHROUGH_RESPONSE_HEADERS:
            value = response.headers.get(name)
            if value is not None:
                headers.append((name.encode(), value.encode("latin-1")))
        if self.hold is not None:
            headers += self.hold.headers
        return headers

    async def relay_whole(self, response: UpstreamResponse, send: Send) -> None:
        try:
            body = await response.read()
        except UpstreamError as exc:
            logger.warning(
                "upstream failure for %s (%s): %s", self.request_id, self.route.alias, exc
            )
            await self.record(
                Outcome(TokenUsage(), None, "", Status.FAILED, ["upstream_read_failed"])
            )
            await _send_error(
                send,
                errors.UPSTREAM_UNAVAILABLE,
                f"The upstream response was cut (request {self.request_id}).",
                self.endpoint.anthropic_format,
            )
            return
        if response.status == 200:
            parsed = _loads_or_none(body)
            if isinstance(parsed, dict):
                outcome = self.endpoint.outcome_from_body(parsed, count_text=self.count_text)
                await self.record(outcome)
                await _send_response(send, response.status, self.headers_for(response), body)
                return
            # A 200 that is not the wire format: the caller's SDK could not parse it and it
            # may hold anything of the upstream's. Record it flagged (held back from rating,
            # for review: the upstream may have billed it) and answer a 502.
            logger.warning(
                "upstream answered 200 with no wire-format body for %s (%s): %r",
                self.request_id,
                self.route.alias,
                body[:_LOGGED_BODY_BYTES],
            )
            await self.record(
                Outcome(TokenUsage(), None, "", Status.UPSTREAM_ERROR, ["unparseable_response"])
            )
            await _send_error(
                send,
                errors.UPSTREAM_FAILED,
                f"The upstream provider answered something that is not an API response "
                f"(request {self.request_id}).",
                self.endpoint.anthropic_format,
                extra_headers=[(REQUEST_ID_HEADER, str(self.request_id).encode())],
            )
            return
        await self.relay_failure(response, body)
        await self.answer_failure(response, body, send)

    async def relay_failure(self, response: UpstreamResponse, body: bytes) -> None:
        """Record an upstream's error answer; its body goes to the server log only."""
        logger.warning(
            "upstream answered %d for %s (%s): %r",
            response.status,
            self.request_id,
            self.route.alias,
            body[:_LOGGED_BODY_BYTES],
        )
        flag = "upstream_auth_failed" if response.status in (401, 403) else "upstream_error_hidden"
        await self.record(Outcome(TokenUsage(), None, "", Status.UPSTREAM_ERROR, [flag]))

    async def answer_failure(self, response: UpstreamResponse, body: bytes, send: Send) -> None:
        """Tell the caller about an upstream's error answer in its own format, with nothing
        of the upstream's that could hold a secret or an internal address."""
        failure = errors.upstream_failure(response.status, body, response.content_type)
        headers = [(REQUEST_ID_HEADER, str(self.request_id).encode())]
        retry_after = response.headers.get("retry-after", "")
        if failure.kind.status == 429 and retry_after.isdigit():
            headers.append((b"retry-after", retry_after.encode()))
        if self.hold is not None:
            headers += self.hold.headers
        message = failure.message
        if failure.kind.status >= 500:
            message = f"{message} (request {self.request_id})"
        await _send_error(
            send,
            failure.kind,
            message,
            self.endpoint.anthropic_format,
            failure.param,
            extra_headers=headers,
        )

    async def relay_stream(self, response: UpstreamResponse, receive: Receive, send: Send) -> None:
        headers = self.headers_for(response)
        headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watcher = asyncio.get_running_loop().create_task(self.watch_client(receive, response))
        tracker = stream_tracker_for(
            self.endpoint, provider=self.route.provider, hide_usage=self.prepared.hide_usage
        )
        splitter = SseSplitter()
        recorded = False
        try:
            async for chunk in response.iter_chunks():
                out: list[bytes] = []
                for event in splitter.feed(chunk):
                    forward = tracker.feed(event)
                    if forward is not None and b"error" in event.data:
                        hidden = self.hide_error_event(event)
                        if hidden is not None:
                            forward = hidden
                            tracker.errored = True
                    if self.ttft_ns is None and tracker.first_output_seen:
                        self.ttft_ns = time.perf_counter_ns()
                    if tracker.terminal:
                        if out and not self.client_gone:
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": b"".join(out),
                                    "more_body": True,
                                }
                            )
                        out = []
                        await self.record(tracker.outcome(completed=True))
                        recorded = True
                        if forward is not None and not self.client_gone:
                            await send(
                                {"type": "http.response.body", "body": forward, "more_body": True}
                            )
                        break
                    if forward is not None:
                        out.append(forward)
                if recorded:
                    break
                if out and not self.client_gone:
                    await send(
                        {"type": "http.response.body", "body": b"".join(out), "more_body": True}
                    )
        except (UpstreamError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not self.client_gone:
                raise
            logger.info("upstream stream for %s ended early: %r", self.request_id, exc)
        finally:
            watcher.cancel()
            if self.drain_deadline is not None:
                self.drain_deadline.cancel()
            if not recorded:
                await self.record(tracker.outcome(completed=False))
        if not self.client_gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def hide_error_event(self, event: SseEvent) -> bytes | None:
        """An upstream's error event mid-stream, re-expressed with a generic message (the
        upstream's own goes to the server log); None for any other event."""
        payload = _loads_or_none(event.data)
        if not isinstance(payload, dict):
            return None
        name = event.event or str(payload.get("type", "")).encode()
        generic = f"The upstream provider failed mid-stream (request {self.request_id})."
        if self.endpoint.anthropic_format or name == b"error":
            if name != b"error" and payload.get("type") != "error":
                return None
            if self.endpoint.anthropic_format:
                error: dict[str, Any] = {"type": "error", "error": {"type": "api_error"}}
                error["error"]["message"] = generic
            else:  # the Responses API's error event
                error = {"type": "error", "code": "upstream_error", "message": generic}
                error["param"] = None
        elif name == b"response.failed":
            failed = payload.get("response")
            if not isinstance(failed, dict) or "error" not in failed:
                return None
            failed["error"] = {"code": "upstream_error", "message": generic}
            error = payload
        elif "error" in payload and "choices" not in payload:  # chat completions
            error = {"error": {"message": generic, "type": "api_error", "param": None}}
            error["error"]["code"] = "upstream_error"
        else:
            return None
        logger.warning(
            "upstream error event for %s (%s): %r",
            self.request_id,
            self.route.alias,
            event.data[:_LOGGED_BODY_BYTES],
        )
        return format_event(orjson.dumps(error), event.event)

    async def watch_client(self, receive: Receive, response: UpstreamResponse) -> None:
        """Notice a client that goes away; keep draining upstream, within a time limit."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        self.client_gone = True
        # Past the drain timeout, closing the upstream ends the read loop as a cut stream.
        self.drain_deadline = asyncio.get_running_loop().call_later(
            settings.RECKON_DRAIN_TIMEOUT_SECONDS, response.close
        )

    @property
    def count_text(self) -> bool:
        return self.route.provider == "openai-compatible"

    async def record(self, outcome: Outcome) -> None:
        now_ns = time.perf_counter_ns()
        usage = outcome.usage
        flags = list(usage.flags) + outcome.flags
        tokens = usage.by_class()
        prices = self.route.spend_rates
        spend = None if prices is None else serving_cost(prices, **tokens)[0]
        rates = self.route.cost_rates
        if rates is None:
            cost = reasoning_cost = None
        else:
            cost, reasoning_cost = serving_cost(rates, **tokens)
        await self.app.ledger.write(
            {
                "request_id": self.request_id,
                "tenant_id": self.caller.tenant_id,
                "api_key_id": self.caller.api_key_id,
                "alias": self.route.alias,
                "provider": self.route.provider,
                "upstream_model": self.route.upstream_model,
                "accelerator": self.route.accelerator,
                "endpoint": self.endpoint.name,
                "stream": self.prepared.stream,
                "status": outcome.status,
                "upstream_status": self.upstream_status,
                "upstream_response_id": outcome.response_id[:200],
                "input_tokens": usage.input_tokens,
                "cached_input_tokens": usage.cached_input_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "output_tokens": usage.output_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "reasoning_source": usage.reasoning_source,
                "flags": flags,
                "raw_usage": outcome.raw_usage,
                "cost_rate_id": self.route.cost_rate_id,
                "serving_cost_usd": cost,
                "reasoning_cost_usd": reasoning_cost,
                "spend_usd": spend,
                "client_disconnected": self.client_gone,
                "ttft_us": None
                if self.ttft_ns is None
                else (self.ttft_ns - self.started_ns) // 1000,
                "latency_us": (now_ns - self.started_ns) // 1000,
                "started_at": self.started_at,
                "finished_at": datetime.now(UTC),
            }
        )
        if self.hold is not None:  # the record is durable: now release the hold for actual use
            self.app._release(
                self.hold,
                spend=spend,
                reasoning_tokens=usage.reasoning_tokens,
                actual_tokens=sum(tokens.values()),
            )


# --- helpers -------------------------------------------------------------------------


def _credential(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return ""


def _wants_anthropic(scope: Scope) -> bool:
    return any(name == b"anthropic-version" or name == b"x-api-key" for name, _ in scope["headers"])


# How much of an upstream's error body the server log keeps.
_LOGGED_BODY_BYTES = 2048


def _loads_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it grows past `limit` bytes."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body if len(body) <= limit else None
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _discard_rest(receive, message, budget=_DISCARD_LIMIT)
            return None
        parts.append(chunk)
    return b"".join(parts)


# Past the body limit the rest of the body is read and dropped (up to this much), so the
# 413 reaches a client that is still sending instead of a connection reset.
_DISCARD_LIMIT = 64 * 1024 * 1024


async def _discard_rest(
    receive: Receive, message: MutableMapping[str, Any], *, budget: int
) -> None:
    while message.get("more_body") and budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))


async def _send_response(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(
    send: Send,
    kind: errors.ProxyErrorKind,
    message: str,
    anthropic: bool,
    param: str | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = errors.error_body(kind, message, anthropic=anthropic, param=param)
    await _send_response(send, kind.status, JSON_HEADERS + (extra_headers or []), body)


async def _send_unavailable(
    send: Send,
    anthropic: bool,
    kind: errors.ProxyErrorKind = errors.SERVICE_UNAVAILABLE,
    message: str = "The service is temporarily unavailable; please retry shortly.",
) -> None:
    """503 in the caller's format with Retry-After: something this call needs (the
    database, the control store) is out of reach; the caller's SDK retries later."""
    await _send_error(
        send, kind, message, anthropic, extra_headers=[(b"retry-after", RETRY_AFTER_S)]
    )
