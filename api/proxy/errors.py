"""Errors the proxy itself raises, in the caller's wire format.

OpenAI: {"error": {"message", "type", "param", "code"}}.
Anthropic: {"type": "error", "error": {"type", "message"}}.
"""

import re
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class ProxyErrorKind:
    status: int
    openai_type: str
    openai_code: str | None
    anthropic_type: str


AUTHENTICATION = ProxyErrorKind(
    401, "invalid_request_error", "invalid_api_key", "authentication_error"
)
INVALID_REQUEST = ProxyErrorKind(400, "invalid_request_error", None, "invalid_request_error")
MODEL_NOT_FOUND = ProxyErrorKind(404, "invalid_request_error", "model_not_found", "not_found_error")
NOT_FOUND = ProxyErrorKind(404, "invalid_request_error", "unknown_url", "not_found_error")
METHOD_NOT_ALLOWED = ProxyErrorKind(
    405, "invalid_request_error", "method_not_allowed", "invalid_request_error"
)
TOO_LARGE = ProxyErrorKind(413, "invalid_request_error", "request_too_large", "request_too_large")
UNSUPPORTED_MEDIA = ProxyErrorKind(
    415, "invalid_request_error", "unsupported_media_type", "invalid_request_error"
)
UPSTREAM_UNAVAILABLE = ProxyErrorKind(502, "api_error", "upstream_unavailable", "api_error")
MISCONFIGURED = ProxyErrorKind(500, "api_error", "route_misconfigured", "api_error")
SPEND_EXCEEDED = ProxyErrorKind(429, "insufficient_quota", "insufficient_quota", "billing_error")
REQUESTS_LIMITED = ProxyErrorKind(429, "requests", "rate_limit_exceeded", "rate_limit_error")
TOKENS_LIMITED = ProxyErrorKind(429, "tokens", "rate_limit_exceeded", "rate_limit_error")
CONTROL_UNAVAILABLE = ProxyErrorKind(503, "api_error", "spend_control_unavailable", "api_error")


def error_body(
    kind: ProxyErrorKind, message: str, *, anthropic: bool, param: str | None = None
) -> bytes:
    if anthropic:
        return orjson.dumps(
            {"type": "error", "error": {"type": kind.anthropic_type, "message": message}}
        )
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": kind.openai_type,
                "param": param,
                "code": kind.openai_code,
            }
        }
    )


# The database is out of reach and the caller's key is not known from a recent lookup.
SERVICE_UNAVAILABLE = ProxyErrorKind(503, "api_error", "service_unavailable", "api_error")
# Last resort: an unexpected failure inside the proxy (never shows internals).
INTERNAL = ProxyErrorKind(500, "api_error", "internal_error", "api_error")
# The upstream refused our own credential (401/403): the operator's problem.
UPSTREAM_AUTH = ProxyErrorKind(502, "api_error", "upstream_auth", "api_error")
# The upstream failed (5xx, or an answer we cannot pass on).
UPSTREAM_FAILED = ProxyErrorKind(502, "api_error", "upstream_error", "api_error")
# The upstream is out of capacity (429): the caller may retry after Retry-After.
UPSTREAM_RATE_LIMITED = ProxyErrorKind(
    429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error"
)
# Upstream statuses that say the caller's own request was bad: passed on, redacted.
UPSTREAM_CLIENT_ERRORS = {
    400: INVALID_REQUEST,
    404: NOT_FOUND,
    409: ProxyErrorKind(409, "invalid_request_error", "conflict", "invalid_request_error"),
    413: TOO_LARGE,
    422: ProxyErrorKind(422, "invalid_request_error", None, "invalid_request_error"),
}

# What may hide a secret or an internal address in an upstream's error message: URLs,
# bearer tokens, key-like strings (sk-..., rk_..., any long run of key characters),
# IPv4/IPv6 addresses, host:port pairs and dotted host names.
_REDACTIONS = (
    re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+"),
    re.compile(r"(?i)\bbearer\s+\S+"),
    re.compile(r"\b(?:sk|rk|pk|key|api|tok|token)[-_][A-Za-z0-9_\-.*…]{3,}"),
    re.compile(r"\b(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,}"),
    re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"),
    re.compile(r"\[?\b(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}\b\]?(?::\d+)?"),
    re.compile(r"\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*:\d{2,5}\b"),
    re.compile(r"\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\.(?:[a-z]{2,}|internal|local|lan)\b"),
)
_MAX_PASSED_MESSAGE = 500


def redact(text: str) -> str:
    """`text` with anything that looks like a key, URL, host:port or IP replaced."""
    for pattern in _REDACTIONS:
        text = pattern.sub("[redacted]", text)
    return text[:_MAX_PASSED_MESSAGE]


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """What the caller is told about an upstream's non-200 answer."""

    kind: ProxyErrorKind
    message: str
    param: str | None = None


def upstream_failure(status: int, body: bytes, content_type: str) -> UpstreamFailure:
    """Map an upstream's error answer to what the caller may see: never the upstream's
    body, only (for the caller's own mistakes) its message after redaction."""
    if status in (401, 403):
        return UpstreamFailure(
            UPSTREAM_AUTH, "The upstream provider refused this server's credentials."
        )
    if status == 429:
        return UpstreamFailure(
            UPSTREAM_RATE_LIMITED, "The upstream provider is out of capacity; retry later."
        )
    kind = UPSTREAM_CLIENT_ERRORS.get(status)
    if kind is None:
        return UpstreamFailure(UPSTREAM_FAILED, f"The upstream provider failed (status {status}).")
    message, param = _upstream_message(body) if content_type == "application/json" else (None, None)
    if message is None:
        return UpstreamFailure(kind, f"The upstream provider rejected the request ({status}).")
    return UpstreamFailure(kind, redact(message), param if param in _SAFE_PARAMS else None)


# Request fields an upstream may name as the faulty parameter (names from the wire formats).
_SAFE_PARAMS = frozenset(
    {
        "model",
        "messages",
        "input",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "reasoning_effort",
        "reasoning",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "stop",
        "system",
        "thinking",
    }
)


def _upstream_message(body: bytes) -> tuple[str | None, str | None]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message")
    param = error.get("param")
    return (
        message if isinstance(message, str) and message else None,
        param if isinstance(param, str) else None,
    )
