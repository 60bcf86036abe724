"""Errors the proxy itself raises, in the caller's wire format.

OpenAI: {"error": {"message", "type", "param", "code"}}.
Anthropic: {"type": "error", "error": {"type", "message"}}.
"""

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
