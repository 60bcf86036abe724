"""Route input from operators: the one home for what a route's base URL may be.

The proxy calls `base_url + endpoint path` (`/chat/completions`, `/responses`,
`/messages`, see `metering.proxy.adapters`), so the stored base URL must end where those
paths begin. Providers document different conventions: OpenAI's SDK takes
`https://api.openai.com/v1`, Anthropic's SDK takes `https://api.anthropic.com` and adds
`/v1` itself. Operators paste either, so each provider's documented forms are accepted
here and normalized to the one the adapters need; anything else is refused with a message
that says what to write. Pure: no ORM, no I/O. Used by `route_set` (the command, the
quick start) and the admin's route form.

Rules (after trimming whitespace and trailing slashes):
- every provider: http or https, a host, no `user:password@` (credentials go in an
  environment variable named by `api_key_env`), no query string or fragment, and no
  endpoint path at the end (`.../v1/messages`, `.../chat/completions`: Reckon adds it);
- anthropic: the SDK convention, so a base URL not ending in `/v1` gets `/v1` appended
  (`https://api.anthropic.com` -> `https://api.anthropic.com/v1`);
- openai: a bare host gets `/v1` (`https://api.openai.com` -> `https://api.openai.com/v1`);
  another path is kept, with a warning unless it ends in `/v1`;
- openai-compatible: the path is kept as given (servers differ: `/v1`, `/openai/v1`,
  `/api/v1`, none), with a warning unless it ends in `/v1`.
"""

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from config.errors import ApplicationError
from metering.models import Route

# Paths the adapters append (or a client would call): a base URL ending in one was pasted
# from an endpoint, not a base URL.
_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/responses", "/messages", "/models")

_EXAMPLES = {
    Route.Provider.OPENAI: "https://api.openai.com/v1",
    Route.Provider.ANTHROPIC: "https://api.anthropic.com",
    Route.Provider.OPENAI_COMPATIBLE: "http://vllm-host:8000/v1",
}


@dataclass(frozen=True)
class BaseUrl:
    url: str  # what the route stores: endpoint paths are appended to it
    warnings: tuple[str, ...] = ()


def base_url_normalize(*, provider: str, base_url: str) -> BaseUrl:
    """The base URL the proxy needs for `provider`, or ApplicationError saying what to write."""
    example = _EXAMPLES.get(provider, "https://api.openai.com/v1")  # type: ignore[call-overload]
    given = base_url.strip()
    try:
        parts = urlsplit(given)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ApplicationError(
            f"base URL {given!r} is not a valid URL; write it like {example}."
        ) from None
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ApplicationError(
            f"base URL must be an http(s) URL with a host, got {given!r}; write it like {example}."
        )
    if parts.username is not None or parts.password is not None:
        raise ApplicationError(
            "base URL must not carry credentials (user:password@): put the upstream key in "
            "an environment variable and name it with --api-key-env; "
            f"write the URL without them, like {example}."
        )
    if parts.query or parts.fragment or given.endswith(("?", "#")):
        bare = urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))
        raise ApplicationError(
            "base URL must not have a query string or fragment (a key in one would be "
            f"sent in every request line); write it without, e.g. {bare}."
        )
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            base = urlunsplit((parts.scheme.lower(), parts.netloc, path[: -len(suffix)], "", ""))
            raise ApplicationError(
                f"base URL {given!r} ends with the endpoint path {suffix!r}, which Reckon "
                f"appends itself; write the base URL, e.g. {base}."
            )
    warnings: list[str] = []
    if provider == Route.Provider.ANTHROPIC:
        # Anthropic's SDK convention: the base URL is the host (or a gateway prefix) and
        # the client adds /v1/messages; the adapter appends /messages only.
        if not path.endswith("/v1"):
            path += "/v1"
    elif not path and provider == Route.Provider.OPENAI:
        path = "/v1"
    elif not path.endswith("/v1"):
        normalized = urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))
        warnings.append(
            f"base URL {normalized} does not end in /v1: Reckon will call "
            f"{normalized}/chat/completions. Most OpenAI-compatible servers serve under /v1 "
            f"(e.g. {_EXAMPLES[Route.Provider.OPENAI_COMPATIBLE]}); run route_set with "
            "--check to see what the upstream answers."
        )
    return BaseUrl(urlunsplit((parts.scheme.lower(), parts.netloc, path, "", "")), tuple(warnings))


def route_unreachable_warning(alias: str) -> str:
    """What to say when a route exists that no tenant may use (every key gets a 404)."""
    return (
        f"No tenant may use {alias!r} yet: every API key gets 404 model_not_found for it. "
        f"Allow it with `manage.py route_set {alias} ... --allow-tenant TENANT` (an existing "
        f"tenant), `manage.py tenant_create NAME --allow {alias}` (a new one), or in the "
        "admin (the tenant's allowed routes)."
    )
