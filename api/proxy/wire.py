"""ASGI helpers of the proxy: reading a request, answering in the caller's wire format.

Nothing here decides anything about a call; it frames bytes. Errors are answered in the
format the caller speaks (OpenAI's or Anthropic's, api.proxy.errors).
"""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson

from api.proxy import errors

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REQUEST_ID_HEADER = b"x-reckon-request-id"
RELAY_EXTENSION = "reckon.relay"


class RelayClient(Protocol):
    """What our server (api.proxy.server) offers a stream relay in
    scope["extensions"]["reckon.relay"]: writing chunks synchronously, from a callback."""

    def start_relay(self, on_disconnect: Callable[[], None]) -> None: ...

    def ready(self) -> bool: ...

    def write_chunk(self, body: bytes) -> None: ...


def relay_client(scope: Scope) -> RelayClient | None:
    """The relay extension of the server this call came through, if it offers one."""
    extensions = scope.get("extensions")
    return None if extensions is None else extensions.get(RELAY_EXTENSION)


JSON_HEADERS = [(b"content-type", b"application/json")]
# Seconds a caller is asked to wait when the proxy cannot reach its database.
RETRY_AFTER_S = b"2"


def caller_key(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's API key, from `Authorization: Bearer` or `x-api-key` ("" if none)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return ""


def wants_anthropic(scope: Scope) -> bool:
    """The caller speaks Anthropic's format (its headers say so): errors answer in it."""
    return any(name == b"anthropic-version" or name == b"x-api-key" for name, _ in scope["headers"])


# How much of an upstream's error body the server log keeps.
LOGGED_BODY_BYTES = 2048


def loads_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def read_body(receive: Receive, limit: int) -> bytes | None:
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
            await discard_rest(receive, message, budget=DISCARD_LIMIT)
            return None
        parts.append(chunk)
    return b"".join(parts)


# Past the body limit the rest of the body is read and dropped (up to this much), so the
# 413 reaches a client that is still sending instead of a connection reset.
DISCARD_LIMIT = 64 * 1024 * 1024


async def discard_rest(receive: Receive, message: MutableMapping[str, Any], *, budget: int) -> None:
    while message.get("more_body") and budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))


async def send_response(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send,
    kind: errors.ProxyErrorKind,
    message: str,
    anthropic: bool,
    param: str | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = errors.error_body(kind, message, anthropic=anthropic, param=param)
    await send_response(send, kind.status, JSON_HEADERS + (extra_headers or []), body)


async def send_unavailable(
    send: Send,
    anthropic: bool,
    kind: errors.ProxyErrorKind = errors.SERVICE_UNAVAILABLE,
    message: str = "The service is temporarily unavailable; please retry shortly.",
) -> None:
    """503 in the caller's format with Retry-After: something this call needs (the
    database, the control store) is out of reach; the caller's SDK retries later."""
    await send_error(
        send, kind, message, anthropic, extra_headers=[(b"retry-after", RETRY_AFTER_S)]
    )
