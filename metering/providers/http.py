"""One GET to a provider's admin API, keeping the body's text exactly as received.

Plain urllib (as billing's webhook delivery): the importer stores each page verbatim and
parses amounts from that text as exact decimals, which an SDK (floats) would not allow.

Invariants:
- redirects are never followed (an admin key goes to the configured host only);
- the body is read whole and decoded as UTF-8 (undecodable bytes become U+FFFD, so a
  garbage body is still stored and then fails to parse, never crashes the import);
- any HTTP status is a response (the caller decides what is retried); only a failure to
  get one at all is `AdminUnreachable`, whose message never holds the URL or a header.
"""

import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

USER_AGENT = "Reckon-Reconciliation/1"


class AdminUnreachable(Exception):
    """No HTTP response: connection refused or reset, timeout, DNS, TLS."""


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
    url: str, *, headers: dict[str, str], timeout_s: float
) -> AdminResponse:  # float-ok: seconds
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
                text=response.read().decode("utf-8", "replace"),
            )
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            body = ""
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


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if not isinstance(reason, str) else reason
