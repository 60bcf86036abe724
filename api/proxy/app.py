"""The proxy's ASGI application: the hot path, outside Django's request cycle.

Per call it does only what metering needs: read the body, resolve the caller from a
process-local cache (metering.proxy.callers), check the request, take its hold
(metering.control.holds), rewrite the model, and hand the call to api.proxy.call, which
forwards it over a pooled HTTP client, follows the response for usage, and waits for the
ledger's group commit before the last byte (non-streaming) or the terminal event
(streaming) reaches the client. This module frames requests and answers; the domain
decides. The rest of the service (REST API, admin) is plain Django behind config.asgi.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, connection

from api.proxy import errors
from api.proxy.call import Call
from api.proxy.wire import (
    JSON_HEADERS,
    Receive,
    Scope,
    Send,
    caller_key,
    read_body,
    relay_client,
    send_error,
    send_response,
    send_unavailable,
    wants_anthropic,
)
from metering.control.governance import apply_reasoning_rules, request_effort
from metering.control.holds import Hold, Holds, Refusal, Refused
from metering.control.scopes import BudgetScope, ceil_tokens
from metering.control.store import ControlStore
from metering.control.terms import alert_thresholds_crossed
from metering.keys import api_key_hash
from metering.ledger import LedgerWriter
from metering.proxy.adapters import ENDPOINTS_BY_PATH, Endpoint, InvalidRequest, prepare_call
from metering.proxy.callers import (
    ANTHROPIC_DEFAULT_VERSION,
    REFRESH_AHEAD,
    AliasPlan,
    CallerContext,
    CallerLoader,
    LookupExecutor,
    LookupUnavailable,
    TtlCache,
)
from metering.proxy.upstream import UpstreamClient
from metering.routing.policies import Features, Pick
from metering.routing.state import RoutingState

logger = logging.getLogger(__name__)

_FORWARDED_REQUEST_HEADERS = {b"openai-beta": "OpenAI-Beta", b"anthropic-beta": "anthropic-beta"}
# How each refusal of admission reaches the caller.
_REFUSED_AS = {
    Refused.SPEND: errors.SPEND_EXCEEDED,
    Refused.REQUESTS: errors.REQUESTS_LIMITED,
    Refused.TOKENS: errors.TOKENS_LIMITED,
}


class _TrackedSend:
    """The server's send, noting whether the response started (an object rather than a
    closure and its cell: it lives as long as the call does, a stream's included)."""

    __slots__ = ("send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    def __call__(self, message: MutableMapping[str, Any]) -> Awaitable[None]:
        # the server's send itself is awaited: no coroutine of ours per message
        if message["type"] == "http.response.start":
            self.started = True
        return self.send(message)


class ProxyApp:
    def __init__(self) -> None:
        self._lookups = LookupExecutor()
        self._lookup_timeout = settings.RECKON_AUTH_LOOKUP_TIMEOUT_SECONDS
        ttl = settings.RECKON_AUTH_CACHE_SECONDS
        # What every key of a tenant shares is read once per refresh period for all of
        # them (a context is aged from its oldest data: the cache's bound still holds).
        self.caller_loader = CallerLoader(share_for=ttl * REFRESH_AHEAD)
        self.callers: TtlCache[str, CallerContext | None] = TtlCache(
            self.caller_loader,
            ttl=ttl,
            executor=self._lookups,
            read_at=lambda caller: caller.read_at if caller is not None else None,
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
        # settings read once: the hot path asks for them on every controlled call
        self.holds = Holds(
            self.control,
            load_in_thread=self._in_thread,
            ceiling=settings.RECKON_HOLD_CEILING_TOKENS,
            share=settings.RECKON_HOLD_SHARE,
            unseen_input=settings.RECKON_HOLD_UNSEEN_INPUT_TOKENS,
        )
        self.upstream = UpstreamClient(
            connect_timeout=settings.RECKON_UPSTREAM_CONNECT_TIMEOUT,
            read_timeout=settings.RECKON_UPSTREAM_READ_TIMEOUT,
        )
        # Breakers, learned costs and concurrency shares of the multi-target aliases this
        # process serves, refreshed in the background (decision 0117).
        self.routing = RoutingState(settings.REDIS_URL or None)
        self._routing_started = False
        self._rng = random.Random()

    # --- lifecycle ---------------------------------------------------------------

    async def startup(self) -> None:
        """Start the background parts before the first request (the server's lifespan)."""
        self.ledger.start()  # load what an earlier process spooled now
        await self._start_routing()

    async def _start_routing(self) -> None:
        if not self._routing_started:
            self._routing_started = True
            await self.routing.start()

    async def shutdown(self) -> None:
        if self._routing_started:
            await self.routing.close()
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
        tracked = _TrackedSend(send)
        try:
            call = await self._dispatch(scope, receive, tracked)
            if call is not None:
                # The proxied call runs here, once the frames that admitted it (the
                # request's parsing, auth, controls) are gone: a stream holds only this
                # frame and the call's own while it is open.
                await call
        except Exception as exc:
            if tracked.started:
                logger.exception("proxy failure after the response started (%s)", scope["path"])
                raise  # the server cuts the connection: the client sees a broken response
            logger.exception("proxy failure before the response started (%s)", scope["path"])
            anthropic = wants_anthropic(scope) or scope["path"] == "/v1/messages"
            if isinstance(exc, DatabaseError):
                await send_unavailable(send, anthropic)
            else:
                await send_error(
                    send, errors.INTERNAL, "The server had an error; please retry.", anthropic
                )

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send
    ) -> Coroutine[Any, Any, None] | None:
        """Answer what needs no upstream; for a proxied call, its run (not yet awaited)."""
        path = scope["path"]
        endpoint = ENDPOINTS_BY_PATH.get(path)
        if endpoint is not None:
            if scope["method"] != "POST":
                await send_error(
                    send, errors.METHOD_NOT_ALLOWED, "Use POST.", endpoint.anthropic_format
                )
                return None
            return await self._proxy(scope, receive, send, endpoint)
        if path == "/v1/models" and scope["method"] == "GET":
            await self._models(scope, send)
        else:
            await send_error(
                send, errors.NOT_FOUND, f"Unknown path {path}.", wants_anthropic(scope)
            )
        return None

    async def _caller(self, scope: Scope, anthropic: bool, send: Send) -> CallerContext | None:
        raw_key = caller_key(scope["headers"])
        if not raw_key:
            message = (
                "x-api-key header is required"
                if anthropic
                else "You didn't provide an API key. Use 'Authorization: Bearer rk_...'."
            )
            await send_error(send, errors.AUTHENTICATION, message, anthropic)
            return None
        try:
            key_hash = api_key_hash(raw_key)
            ready = self.callers.ready(key_hash)  # the cached context: no coroutine
            caller = ready[1] if ready is not None else await self.callers.get(key_hash)
        except LookupUnavailable as exc:
            logger.error("cannot look up a caller's key: %s", exc)
            await send_unavailable(send, anthropic)
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
            await send_error(send, errors.AUTHENTICATION, message, anthropic)
            return None
        return caller

    async def _models(self, scope: Scope, send: Send) -> None:
        anthropic = wants_anthropic(scope)
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
        await send_response(send, 200, JSON_HEADERS, orjson.dumps(body))

    # --- the hot path -----------------------------------------------------------------

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint
    ) -> Coroutine[Any, Any, None] | None:
        """Admit a call (auth, body, model, controls, hold) and return its run for the
        caller to await; None once it was answered with an error."""
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
            return None
        body = await read_body(receive, settings.RECKON_MAX_BODY_BYTES)
        if body is None:
            limit = settings.RECKON_MAX_BODY_BYTES
            await send_error(
                send, errors.TOO_LARGE, f"Request body exceeds {limit} bytes.", anthropic
            )
            return None
        if not content_type.startswith(b"application/json"):
            await send_error(
                send, errors.UNSUPPORTED_MEDIA, "Content-Type must be application/json.", anthropic
            )
            return None
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await send_error(send, errors.INVALID_REQUEST, f"Malformed JSON body: {exc}", anthropic)
            return None
        if not isinstance(request, dict):
            await send_error(
                send, errors.INVALID_REQUEST, "The body must be a JSON object.", anthropic
            )
            return None
        alias = request.get("model")
        if not isinstance(alias, str) or not alias:
            await send_error(
                send,
                errors.INVALID_REQUEST,
                "'model' is required and must be a string.",
                anthropic,
                "model",
            )
            return None
        route = caller.routes.get(alias)
        if route is None:
            message = f"The model '{alias}' does not exist or you do not have access to it."
            await send_error(send, errors.MODEL_NOT_FOUND, message, anthropic, "model")
            return None
        if route.provider not in endpoint.providers:
            message = f"The model '{alias}' is not served on this endpoint."
            await send_error(send, errors.INVALID_REQUEST, message, anthropic, "model")
            return None
        plan = caller.plans.get(alias) if caller.plans else None
        if route.credential_missing and (
            plan is None or all(t.credential_missing for t in plan.targets)
        ):
            message = (
                f"Route '{alias}' is misconfigured on this server (upstream credential missing)."
            )
            await send_error(send, errors.MISCONFIGURED, message, anthropic)
            return None
        hold: Hold | None = None
        controls = caller.controls
        if controls is not None:
            for rules in controls.reasoning:
                refusal = apply_reasoning_rules(endpoint.name, request, rules)
                if refusal:
                    await send_error(send, errors.INVALID_REQUEST, refusal, anthropic)
                    return None
        effort = request_effort(endpoint.name, request)  # after governance: what is sent
        picks: list[Pick] = []
        if plan is not None:
            picks = await self._picks(plan, effort, len(body), endpoint.name)
            route = plan.targets[picks[0].index]
        if controls is not None:
            if controls.budgets or controls.rates:
                admitted = await self.holds.take(controls, route, endpoint.name, request, len(body))
                if isinstance(admitted, Refusal):
                    await _refuse(send, admitted, anthropic)
                    return None
                hold = admitted
        try:
            prepared = prepare_call(endpoint, request, route.upstream_model)
        except InvalidRequest as exc:
            if hold is not None:
                self.holds.release(hold)
            await send_error(send, errors.INVALID_REQUEST, exc.message, anthropic, exc.param)
            return None

        call = Call(
            self, caller, route, endpoint, prepared, started_at, started_ns, hold, effort, plan
        )
        call.client = relay_client(scope)  # the server's relay extension (api.proxy.server)
        if plan is None:
            return call.run(receive, send, route.upstream_headers(anthropic_version, forwarded))
        return call.run_routed(
            receive,
            send,
            picks,
            request,
            lambda target: target.upstream_headers(anthropic_version, forwarded),
        )

    async def _picks(
        self, plan: AliasPlan, effort: str, body_size: int, endpoint: str
    ) -> list[Pick]:
        """The attempts a routed call makes, chosen from memory; targets whose credential
        is missing here are left out (the caller checked that one is left)."""
        if not self._routing_started:  # no lifespan (an embedded app): start on first use
            await self._start_routing()
        picks = self.routing.choose(
            plan, Features(effort, ceil_tokens(body_size), endpoint), self._rng
        )
        usable = [p for p in picks if not plan.targets[p.index].credential_missing]
        if len(usable) < len(picks):
            missing = [plan.targets[p.index].target for p in picks if p not in usable]
            logger.error(
                "alias %s: targets %s have no upstream credential here", plan.alias, missing
            )
        if usable:
            return usable
        first = next(i for i, t in enumerate(plan.targets) if not t.credential_missing)
        return [Pick(first, "priority")]

    def _in_thread(self, fn: Callable[[], int]) -> "asyncio.Future[int]":
        """Run a ledger lookup on the lookup thread (loading a budget into Redis), for at
        most the lookup timeout (TimeoutError past it, and once the lookup thread is shut
        down: the server is stopping, so the lookup fails as one that timed out would)."""
        loaded = self._lookups.try_run(fn)
        if loaded is None:
            stopped: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            stopped.set_exception(TimeoutError("lookups are shut down"))
            return stopped
        return asyncio.ensure_future(asyncio.wait_for(loaded, self._lookup_timeout))

    def _alert(self, budget: BudgetScope) -> None:
        """A settlement took a budget across an alert percentage: evaluate now (best
        effort: once the lookup thread is shut down, the beat's sweep catches up)."""
        if budget.tenant_id is None:
            return
        if self._lookups.try_submit(alert_thresholds_crossed, budget.tenant_id) is None:
            logger.info("alert for tenant %s left to the sweep: stopping", budget.tenant_id)


async def _refuse(send: Send, refusal: Refusal, anthropic: bool) -> None:
    """Answer a call that admission refused, in the caller's format."""
    if refusal.kind == Refused.UNAVAILABLE:
        await send_unavailable(send, anthropic)
    elif refusal.kind == Refused.CONTROL_UNAVAILABLE:
        await send_unavailable(send, anthropic, errors.CONTROL_UNAVAILABLE, refusal.message)
    else:
        await send_error(
            send,
            _REFUSED_AS[refusal.kind],
            refusal.message,
            anthropic,
            extra_headers=refusal.headers,
        )
