"""One GET to a provider's admin API, keeping the body's text exactly as received.

Plain urllib (as billing's webhook delivery): the importer stores each page verbatim and
parses amounts from that text as exact decimals, which an SDK (floats) would not allow.

Invariants:
- redirects are never followed (an admin key goes to the configured host only);
- the body is read whole (up to the caller's cap: a larger one is refused, never
  truncated) and decoded as UTF-8 (undecodable bytes become U+FFFD, so a
  garbage body is still stored and then fails to parse, never crashes the import);
- any HTTP status is a response (the caller decides what is retried); only a failure to
  get one at all is `AdminUnreachable`, whose message never holds the URL or a header.
"""

import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "Reckon-Reconciliation/1"


class AdminUnreachable(Exception):
    """No HTTP response: connection refused or reset, timeout, DNS, TLS."""


class AdminBodyTooLarge(Exception):
    """The answer's body is larger than the caller's `max_bytes` (it was not read whole)."""


@dataclass(frozen=True)
class AdminResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    text: str


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def admin_get(
    url: str, *, headers: dict[str, str], timeout_s: float, max_bytes: int
) -> AdminResponse:  # float-ok: seconds
    """GET `url`; a body of more than `max_bytes` raises AdminBodyTooLarge (at most
    max_bytes + 1 bytes are read)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdminUnreachable("the admin base URL must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        headers={
            **headers,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        },
        method="GET",
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return AdminResponse(
                status=int(response.status),
                headers={k.lower(): v for k, v in response.headers.items()},
                text=_read_capped(response, max_bytes),
            )
    except urllib.error.HTTPError as exc:
        try:
            body = _read_capped(exc, max_bytes)
        except (OSError, http.client.HTTPException, AdminBodyTooLarge):
            body = ""  # an error's body is only read for its message
        finally:
            exc.close()
        return AdminResponse(
            status=int(exc.code),
            headers={k.lower(): v for k, v in (exc.headers or {}).items()},
            text=body,
        )
    except urllib.error.URLError as exc:
        raise AdminUnreachable(_reason(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise AdminUnreachable(_reason(exc)) from None


def _read_capped(response: Any, max_bytes: int) -> str:
    data = response.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AdminBodyTooLarge(f"the answer is larger than {max_bytes} bytes")
    return str(data.decode("utf-8", "replace"))


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if not isinstance(reason, str) else reason
