"""`route_set --check`: one real call to a route's upstream, and what its answer means.

The call goes the way a proxied call goes: the route as the proxy loads it
(`route_info_from`: base URL, credential from the named environment variable), the
endpoint's upstream path and request rewrite (`metering.proxy.adapters`), and the proxy's
upstream client. The request is the smallest the endpoint takes (one user word, one
output token). The credential is never printed: it is named by its variable, and removed
from any upstream message that echoes it.
"""

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from metering.models import Route
from metering.proxy.adapters import CHAT, MESSAGES, prepare_call
from metering.proxy.callers import route_info_from
from metering.proxy.upstream import UpstreamClient, UpstreamError, UpstreamTimeout

_MESSAGE_LIMIT = 300  # characters of the upstream's own error message shown


@dataclass(frozen=True)
class RouteCheck:
    ok: bool
    url: str  # what was called
    status: int | None  # the upstream's HTTP status; None: no answer
    latency_ms: int | None  # request sent to whole response read
    diagnosis: str


def route_check(*, route: Route, timeout_s: float = 10.0) -> RouteCheck:  # float-ok: seconds
    """Call the route's upstream once and say what works and what to fix."""
    info = route_info_from(route)
    endpoint = MESSAGES if info.speaks_anthropic else CHAT
    url = info.base_url + endpoint.upstream_path
    parts = urlsplit(url)
    # What is called, as printed: a route saved before base URLs were checked may hold a
    # user:password@ part; the request still goes to the stored URL, as the proxy's would.
    called = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    if info.credential_missing:
        return RouteCheck(
            False,
            called,
            None,
            None,
            f"the environment variable {route.api_key_env} is not set here, so the proxy "
            f"refuses calls to '{route.alias}' (misconfigured). Set it where Reckon runs.",
        )
    request: dict[str, Any] = {"messages": [{"role": "user", "content": "ping"}]}
    if route.provider == Route.Provider.OPENAI:
        request["max_completion_tokens"] = 1  # what OpenAI's reasoning models accept
    else:
        request["max_tokens"] = 1  # Anthropic requires it; every compatible server takes it
    body = prepare_call(endpoint, request, info.upstream_model).body
    headers = info.upstream_headers()
    try:
        status, answer, latency_ms = asyncio.run(_call(url, body, headers, timeout_s))
    except UpstreamError as exc:
        return RouteCheck(False, called, None, None, _unreachable(exc, called, timeout_s))
    message = _upstream_message(answer, info.credential)
    return RouteCheck(
        status == 200, called, status, latency_ms, _diagnose(route, called, status, message)
    )


async def _call(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> tuple[int, bytes, int]:
    client = UpstreamClient(connect_timeout=timeout_s, read_timeout=timeout_s)
    started = time.perf_counter_ns()
    try:
        response = await client.post(url, body, headers)
        try:
            answer = await response.read()
        finally:
            response.release()
    finally:
        await client.close()
    return response.status, answer, (time.perf_counter_ns() - started) // 1_000_000


def _upstream_message(answer: bytes, credential: str) -> str:
    """The upstream's own error message (OpenAI and Anthropic shapes), credential removed."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        parsed = None
    message = ""
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("code") or error.get("type") or "")
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed.get("detail"), str):  # FastAPI-style servers
            message = parsed["detail"]
    elif answer:
        message = answer.decode("utf-8", "replace")
    if credential:
        message = message.replace(credential, "[credential]")
    message = " ".join(message.split())
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "..."
    return message


def _diagnose(route: Route, url: str, status: int, message: str) -> str:
    said = f" The upstream said: {message}" if message else ""
    if status == 200:
        return f"the route works: {url} answered a one-token request for '{route.upstream_model}'."
    if status in (401, 403):
        if not route.api_key_env:
            return (
                f"the upstream refused the call (HTTP {status}) and the route names no "
                "credential: put the key in an environment variable and give its name with "
                f"--api-key-env.{said}"
            )
        return (
            f"the credential in {route.api_key_env} was rejected (HTTP {status}): check that "
            f"the variable holds a valid key for this upstream.{said}"
        )
    if status == 404:
        if route.upstream_model in message or "model" in message.lower():
            return (
                f"the base URL answers, but the upstream does not serve model "
                f"'{route.upstream_model}' (HTTP 404): check --upstream-model.{said}"
            )
        return f"wrong base URL: nothing is served at {url} (HTTP 404). {_url_hint(route)}{said}"
    if status == 405:
        return f"wrong base URL: {url} does not take POST (HTTP 405). {_url_hint(route)}{said}"
    if status == 429:
        return f"the upstream is rate limiting or out of quota (HTTP 429).{said}"
    if status >= 500:
        return f"the upstream failed (HTTP {status}); try again later.{said}"
    return f"the upstream refused the test request (HTTP {status}).{said}"


def _url_hint(route: Route) -> str:
    if route.provider == Route.Provider.ANTHROPIC:
        return (
            "Anthropic's base URL is https://api.anthropic.com (Reckon calls "
            "<base>/v1/messages); for a gateway, give the URL its Anthropic SDK would use."
        )
    if route.provider == Route.Provider.OPENAI:
        return (
            "OpenAI's base URL is https://api.openai.com/v1 (Reckon calls <base>/chat/completions)."
        )
    return (
        "Give the base URL the server's OpenAI SDK clients use, usually ending in /v1 "
        "(vLLM, SGLang: http://HOST:PORT/v1); Reckon calls <base>/chat/completions."
    )


def _unreachable(exc: UpstreamError, url: str, timeout_s: float) -> str:
    cause = exc.__cause__
    if isinstance(exc, UpstreamTimeout):
        return f"no answer from {url} within {timeout_s:g} s (timeout): is the host reachable from here?"
    if isinstance(cause, ConnectionRefusedError):
        return f"connection refused: nothing listens at {url}; check the host and port."
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {url} is not trusted here ({cause.verify_message})."
    if isinstance(cause, ssl.SSLError):
        return (
            f"TLS handshake with {url} failed ({cause.reason or cause}): if the server speaks "
            "plain HTTP on that port, write http:// instead of https://."
        )
    if isinstance(cause, socket.gaierror):
        return f"the host of {url} cannot be resolved (DNS); check its spelling."
    return f"the upstream at {url} could not be reached: {cause or exc}"
