"""A local stand-in for the slice of the Stripe API that Reckon uses.

It is a real HTTP server on 127.0.0.1 (random free port, background thread).
Tests drive it with the real ``stripe`` SDK pointed at ``fake.url``; the SDK
is never patched::

    with FakeStripe() as fake:
        client = stripe.StripeClient(
            fake.api_key, base_addresses={"api": fake.url}, max_network_retries=0
        )
        # module-level style instead: stripe.api_key = fake.api_key; stripe.api_base = fake.url
        customer = client.v1.customers.create({"name": "Acme"})
        assert fake.customers[customer.id]["name"] == "Acme"

What it models, like the real API (v1, form-encoded bodies, JSON responses):

* ``POST /v1/customers``, ``POST|GET /v1/customers/{id}``
* ``POST /v1/invoiceitems``, ``GET /v1/invoiceitems`` (list), ``GET /v1/invoiceitems/{id}``
* ``POST /v1/invoices``, ``GET /v1/invoices/{id}``, ``GET /v1/invoices/{id}/lines`` and
  ``POST /v1/invoices/{id}/finalize|void|mark_uncollectible|pay``
* ``Authorization: Bearer <api_key>`` (401 otherwise), ``Idempotency-Key`` replay and
  mismatch detection (``idempotency_error``), Stripe's error body shape, 404 for
  unknown URLs, ``parameter_unknown`` for parameters the SDK itself does not know.

Parameters that the SDK knows but this fake does not model (e.g. ``tax_rates``) are
accepted and ignored; they are listed in ``RecordedCall.ignored_params``. ``expand``
is rejected (nothing is expandable here). No taxes, discounts, customer balances,
prices/products, subscriptions or real payments: ``pay`` always succeeds (use
``fail_next(status=402)`` to simulate a card error).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import stripe
import stripe.params as stripe_params

from tests.fakes.loopback import Loopback, LoopbackServer

API_VERSION: str = stripe.api_version
"""The API version the installed SDK pins; used in events and ``Stripe-Version``."""

LINES_INCLUDED = 10
"""Like Stripe, an invoice embeds at most this many ``lines``; page the rest via /lines."""

_ALPHABET = string.ascii_letters + string.digits
_REQUEST_OPTION_KEYS = frozenset(
    {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
    }
)
_ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
_DROP_CONNECTION = 0


def _new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------- webhooks


def sign_webhook(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload``: ``t=<ts>,v1=<hex>``.

    ``v1`` is HMAC-SHA256 keyed with ``secret`` over ``f"{ts}.{payload}"`` (payload as
    UTF-8 text), which is exactly what ``stripe.Webhook.construct_event`` verifies.
    Pass an old ``timestamp`` to produce a signature outside the tolerance window.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    text = payload.decode("utf-8") if isinstance(payload, bytes | bytearray) else payload
    digest = hmac.new(secret.encode("utf-8"), f"{ts}.{text}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def make_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    previous_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Stripe ``Event`` (snapshot) object wrapping ``obj``, as webhooks deliver it."""
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or _new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": _now() if created is None else int(created),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


# --------------------------------------------------------------------------- errors


class _APIError(Exception):
    """Raised by handlers; rendered as Stripe's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}


def _missing(param: str) -> _APIError:
    return _APIError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def _no_such(kind: str, obj_id: str, *, param: str, status: int = 400) -> _APIError:
    return _APIError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def _not_editable(message: str) -> _APIError:
    return _APIError(400, message, code="invoice_not_editable")


# --------------------------------------------------------------------------- params


_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SUBKEY_RE = re.compile(r"\[([^\[\]]*)\]")


def decode_params(encoded: str) -> dict[str, Any]:
    """Decode a Stripe form/query string (``a[b][c]=v``, ``l[0][x]=v``) into nested data.

    Dicts whose keys are exactly ``0..n-1`` become lists (except under ``metadata``).
    Values stay strings, as on the wire.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(encoded, keep_blank_values=True):
        m = _KEY_RE.match(key)
        parts = [m.group(1), *_SUBKEY_RE.findall(m.group(2))] if m else [key]
        node = root
        for part in parts[:-1]:
            part = part or str(len(node))
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1] or str(len(node))] = value
    return _listify(root, None)


def _listify(value: Any, key: str | None) -> Any:
    if not isinstance(value, dict):
        return value
    out = {k: _listify(v, k) for k, v in value.items()}
    if key != "metadata" and out and all(k.isdigit() for k in out):
        keys = sorted(out, key=int)
        if [int(k) for k in keys] == list(range(len(keys))):
            return [out[k] for k in keys]
    return out


def _allowed_params(params_class: str) -> frozenset[str]:
    """Top-level parameter names the installed SDK declares for an endpoint."""
    annotations = getattr(stripe_params, params_class).__annotations__
    return frozenset(annotations) - _REQUEST_OPTION_KEYS


def _get_str(p: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    if name not in p:
        if required:
            raise _missing(name)
        return None
    value = p[name]
    if not isinstance(value, str):
        raise _APIError(400, f"Invalid string: {value!r}", param=name)
    if required and value == "":
        raise _missing(name)
    return value


def _get_nullable_str(p: dict[str, Any], name: str) -> str | None:
    """Strings where an empty value means 'unset' (Stripe semantics)."""
    value = _get_str(p, name)
    return value or None


def _get_int(p: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    value = _get_str(p, name, required=required)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _APIError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        ) from None


def _get_bool(p: dict[str, Any], name: str) -> bool | None:
    value = _get_str(p, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise _APIError(400, f"Invalid boolean: {value}", param=name)
    return value == "true"


def _get_decimal(p: dict[str, Any], name: str) -> Decimal | None:
    value = _get_str(p, name)
    if value is None:
        return None
    try:
        dec = Decimal(value)
    except InvalidOperation:
        raise _APIError(400, f"Invalid decimal: {value}", param=name) from None
    if not dec.is_finite():
        raise _APIError(400, f"Invalid decimal: {value}", param=name)
    return dec


def _get_choice(p: dict[str, Any], name: str, choices: Iterable[str]) -> str | None:
    value = _get_str(p, name)
    if value is None:
        return None
    allowed = sorted(choices)
    if value not in allowed:
        raise _APIError(
            400,
            f"Invalid {name}: must be one of {', '.join(allowed)}",
            param=name,
        )
    return value


def _get_currency(p: dict[str, Any], name: str = "currency") -> str | None:
    value = _get_str(p, name)
    if value is None:
        return None
    cur = value.lower()
    if not re.fullmatch(r"[a-z]{3}", cur):
        raise _APIError(400, f"Invalid currency: {value}", param=name)
    return cur


def _get_dict(p: dict[str, Any], name: str) -> dict[str, Any] | None:
    if name not in p:
        return None
    value = p[name]
    if not isinstance(value, dict):
        raise _APIError(400, f"Invalid object: {name} must be a hash", param=name)
    return value


def _merge_metadata(existing: dict[str, str], value: Any) -> dict[str, str]:
    """Stripe's metadata update: keys merge, ``""`` deletes a key, ``metadata=""`` clears."""
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _APIError(400, "Invalid object: metadata must be a hash", param="metadata")
    merged = dict(existing)
    for key, val in value.items():
        if not isinstance(val, str):
            raise _APIError(400, f"Invalid value for metadata[{key}]", param=f"metadata[{key}]")
        if len(key) > 40:
            raise _APIError(
                400,
                f"Metadata keys can have up to 40 characters, but you passed in a key "
                f"that is {len(key)} characters. Invalid key: {key}",
                param="metadata",
            )
        if len(val) > 500:
            raise _APIError(
                400,
                f"Metadata values can have up to 500 characters, but you passed in a "
                f"value that is {len(val)} characters. Invalid value: {val}",
                param=f"metadata[{key}]",
            )
        if val == "":
            merged.pop(key, None)
        else:
            merged[key] = val
    if len(merged) > 50:
        raise _APIError(400, "You can specify up to 50 keys in metadata.", param="metadata")
    return merged


def _address(value: Any, param: str) -> dict[str, Any] | None:
    if value == "":
        return None
    if not isinstance(value, dict):
        raise _APIError(400, f"Invalid object: {param} must be a hash", param=param)
    for key in value:
        if key not in _ADDRESS_KEYS:
            raise _APIError(
                400,
                f"Received unknown parameter: {param}[{key}]",
                code="parameter_unknown",
                param=f"{param}[{key}]",
            )
    return {k: (value.get(k) or None) for k in _ADDRESS_KEYS}


# --------------------------------------------------------------------------- recording


@dataclass
class RecordedCall:
    """One HTTP request the fake received (replays and failures included)."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int = 0
    """HTTP status sent back; 0 when the connection was dropped (``fail_next(status=0)``)."""
    replayed: bool = False
    """True when answered from the idempotency cache (``Idempotent-Replayed: true``)."""
    injected_failure: bool = False
    """True when the response came from ``fail_next``."""
    response: dict[str, Any] | None = None
    ignored_params: list[str] = field(default_factory=list)
    """Parameters the SDK knows but the fake does not model (accepted, ignored)."""
    request_id: str = ""


@dataclass
class _Stored:
    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: str
    request_id: str


@dataclass
class _Failure:
    status: int
    commit: bool


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: str
    params_class: str
    used: frozenset[str]


def _route(method: str, path: str, handler: str, params_class: str, used: str) -> _Route:
    regex = re.compile("^" + path.replace("{id}", "(?P<id>[^/]+)") + "$")
    return _Route(method, regex, handler, params_class, frozenset(used.split()))


_CUSTOMER_FIELDS = (
    "address balance business_name description email individual_name invoice_prefix "
    "invoice_settings metadata name next_invoice_sequence phone preferred_locales shipping "
    "tax_exempt"
)

_ROUTES: tuple[_Route, ...] = (
    _route("POST", "/v1/customers", "_create_customer", "CustomerCreateParams", _CUSTOMER_FIELDS),
    _route("GET", "/v1/customers/{id}", "_retrieve_customer", "CustomerRetrieveParams", ""),
    _route(
        "POST", "/v1/customers/{id}", "_update_customer", "CustomerUpdateParams", _CUSTOMER_FIELDS
    ),
    _route(
        "POST",
        "/v1/invoiceitems",
        "_create_invoice_item",
        "InvoiceItemCreateParams",
        "amount currency customer description discountable invoice metadata period quantity "
        "quantity_decimal unit_amount_decimal",
    ),
    _route(
        "GET",
        "/v1/invoiceitems",
        "_list_invoice_items",
        "InvoiceItemListParams",
        "customer ending_before invoice limit pending starting_after",
    ),
    _route(
        "GET", "/v1/invoiceitems/{id}", "_retrieve_invoice_item", "InvoiceItemRetrieveParams", ""
    ),
    _route(
        "POST",
        "/v1/invoices",
        "_create_invoice",
        "InvoiceCreateParams",
        "auto_advance collection_method currency customer days_until_due description due_date "
        "footer metadata pending_invoice_items_behavior statement_descriptor",
    ),
    _route("GET", "/v1/invoices/{id}", "_retrieve_invoice", "InvoiceRetrieveParams", ""),
    _route(
        "GET",
        "/v1/invoices/{id}/lines",
        "_list_invoice_lines",
        "InvoiceLineItemListParams",
        "ending_before limit starting_after",
    ),
    _route(
        "POST",
        "/v1/invoices/{id}/finalize",
        "_finalize_invoice",
        "InvoiceFinalizeInvoiceParams",
        "auto_advance",
    ),
    _route("POST", "/v1/invoices/{id}/void", "_void_invoice", "InvoiceVoidInvoiceParams", ""),
    _route(
        "POST",
        "/v1/invoices/{id}/mark_uncollectible",
        "_mark_uncollectible",
        "InvoiceMarkUncollectibleParams",
        "",
    ),
    _route("POST", "/v1/invoices/{id}/pay", "_pay_invoice", "InvoicePayParams", "paid_out_of_band"),
)


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the SDK's requests session expects
    server_version = "FakeStripe/1.0"
    timeout = 30  # idle keep-alive connections eventually release their thread
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: LoopbackServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        result = self.server.fake._dispatch(method, self.path, self.headers, body)
        if result is None:  # simulated network failure: no response at all
            self.close_connection = True
            return
        status, payload, headers = result
        data = payload.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet; everything is in FakeStripe.calls


# --------------------------------------------------------------------------- the fake


class FakeStripe:
    """A Stripe API stand-in on 127.0.0.1 (random free port) in a background thread.

    State (plain dicts in Stripe's JSON shapes, keyed by id) is readable directly:
    ``customers``, ``invoices``, ``invoice_items``; ``calls`` records every request and
    ``events`` every Event the real API would have emitted for the mutations performed.
    All state is guarded by one lock; requests are processed one at a time.
    """

    def __init__(self, api_key: str = "sk_test_fake") -> None:
        self.api_key = api_key
        self.url = ""
        self.calls: list[RecordedCall] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.invoice_items: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._failures: deque[_Failure] = deque()
        self._line_ids: dict[str, str] = {}  # invoice item id -> its line item id
        self._included_at_creation: set[str] = set()
        self._current: RecordedCall | None = None
        self._server: Loopback | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeStripe:
        if self._server is not None:
            raise RuntimeError("FakeStripe already started")
        self._server = Loopback(self, _Handler, "FakeStripe")
        self.url = f"http://127.0.0.1:{self._server.port}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all objects, calls, events, idempotency keys and pending failures."""
        with self._lock:
            self.calls.clear()
            self.customers.clear()
            self.invoices.clear()
            self.invoice_items.clear()
            self.events.clear()
            self._idempotency.clear()
            self._failures.clear()
            self._line_ids.clear()
            self._included_at_creation.clear()

    # -- test controls -----------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, *, commit: bool = False) -> None:
        """Make the next ``n`` requests (any endpoint) fail.

        ``status`` is the HTTP status of a Stripe-shaped error (500 -> ``stripe.APIError``,
        402 -> ``CardError``, 429 -> ``RateLimitError``...); ``status=0`` drops the
        connection without any response (``stripe.APIConnectionError``).

        ``commit=False`` (default): the request is rejected before it runs: no side
        effect, nothing stored under its idempotency key, so a retry executes it.
        ``commit=True``: the request runs and its result is stored for idempotent
        replay, but the client only sees the failure (a response lost in transit):
        a retry with the same ``Idempotency-Key`` gets the original object back.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        if status != _DROP_CONNECTION and not 400 <= status <= 599:
            raise ValueError("status must be 0 (drop connection) or an HTTP error status")
        with self._lock:
            self._failures.extend(_Failure(status, commit) for _ in range(n))

    def client(self, **options: Any) -> stripe.StripeClient:
        """A ``StripeClient`` wired to this fake (no retries unless overridden)."""
        kwargs: dict[str, Any] = {
            "base_addresses": {"api": self.url},
            "max_network_retries": 0,
        }
        kwargs.update(options)
        return stripe.StripeClient(kwargs.pop("api_key", self.api_key), **kwargs)

    def calls_to(self, method: str, path: str) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method.upper() and c.path == path]

    # -- request processing ------------------------------------------------------------

    def _dispatch(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, str, dict[str, str]] | None:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        encoded = split.query if method != "POST" else body.decode("utf-8", "replace")
        try:
            params = decode_params(encoded)
        except ValueError:
            params = {}
        idem_key = headers.get("Idempotency-Key") if method == "POST" else None
        request_id = _new_id("req", 14)
        extra = {
            "Request-Id": request_id,
            "Stripe-Version": headers.get("Stripe-Version") or API_VERSION,
        }
        if idem_key:
            extra["Idempotency-Key"] = idem_key
        with self._lock:
            call = RecordedCall(method, path, params, idem_key, request_id=request_id)
            self.calls.append(call)
            failure = self._failures.popleft() if self._failures else None
            if failure is not None and not failure.commit:
                return self._inject(call, failure, extra)
            try:
                status, payload = self._process(call, headers, body, extra)
            except Exception as exc:  # a bug in the fake: answer 500 instead of hanging up
                err = _APIError(500, f"FakeStripe internal error: {exc!r}", error_type="api_error")
                status, payload = err.status, json.dumps(err.body())
            if failure is not None:
                return self._inject(call, failure, extra)
            call.status = status
            call.response = json.loads(payload)
            return status, payload, extra

    def _inject(
        self, call: RecordedCall, failure: _Failure, extra: dict[str, str]
    ) -> tuple[int, str, dict[str, str]] | None:
        call.injected_failure = True
        call.status = failure.status
        extra.pop("Idempotent-Replayed", None)
        extra.pop("Original-Request", None)
        if failure.status == _DROP_CONNECTION:
            call.response = None
            return None
        err = _APIError(
            failure.status,
            f"Simulated failure injected by FakeStripe.fail_next (HTTP {failure.status}).",
            error_type="api_error" if failure.status >= 500 else "invalid_request_error",
            code="rate_limit" if failure.status == 429 else None,
        )
        call.response = err.body()
        return failure.status, json.dumps(call.response), extra

    def _process(
        self, call: RecordedCall, headers: Any, body: bytes, extra: dict[str, str]
    ) -> tuple[int, str]:
        auth_error = self._check_auth(headers.get("Authorization"))
        if auth_error is not None:
            return auth_error.status, json.dumps(auth_error.body())

        store_key = (self.api_key, call.idempotency_key) if call.idempotency_key else None
        if store_key is not None and store_key in self._idempotency:
            stored = self._idempotency[store_key]
            if (stored.method, stored.path) != (call.method, call.path):
                err = _APIError(
                    400,
                    "Keys for idempotent requests can only be used for the same endpoint "
                    f"they were first used for ('{stored.method} {stored.path}' vs "
                    f"'{call.method} {call.path}'). Try using a key other than "
                    f"'{call.idempotency_key}' if you meant to execute a different request.",
                    error_type="idempotency_error",
                )
                return err.status, json.dumps(err.body())
            if stored.params != call.params:
                err = _APIError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with. Try using a key other than "
                    f"'{call.idempotency_key}' if you meant to execute a different request.",
                    error_type="idempotency_error",
                )
                return err.status, json.dumps(err.body())
            call.replayed = True
            extra["Idempotent-Replayed"] = "true"
            extra["Original-Request"] = stored.request_id
            return stored.status, stored.body

        self._current = call
        try:
            status, payload = self._route(call)
        except _APIError as err:
            status, payload = err.status, err.body()
        finally:
            self._current = None
        text = json.dumps(payload)
        if store_key is not None and status < 400:
            self._idempotency[store_key] = _Stored(
                call.method, call.path, copy.deepcopy(call.params), status, text, call.request_id
            )
        return status, text

    def _check_auth(self, header: str | None) -> _APIError | None:
        if not header:
            return _APIError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":  # curl -u sk_test_...:
            try:
                token = base64.b64decode(token).decode("utf-8").partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                token = ""
        elif scheme.lower() != "bearer":
            token = ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            shown = f"{token[:8]}{'*' * 12}{token[-4:]}" if len(token) > 12 else "****"
            return _APIError(401, f"Invalid API Key provided: {shown}")
        return None

    def _route(self, call: RecordedCall) -> tuple[int, dict[str, Any]]:
        # Like Stripe, an unknown path and a known path with the wrong verb are both 404s.
        for route in _ROUTES:
            m = route.pattern.match(call.path)
            if not m or route.method != call.method:
                continue
            allowed = _allowed_params(route.params_class)
            for name in call.params:
                if name not in allowed:
                    raise _APIError(
                        400,
                        f"Received unknown parameter: {name}",
                        code="parameter_unknown",
                        param=name,
                    )
            if call.params.get("expand"):
                raise _APIError(400, "FakeStripe does not support `expand`.", param="expand")
            call.ignored_params = sorted(set(call.params) - route.used - {"expand"})
            handler: Callable[..., dict[str, Any]] = getattr(self, route.handler)
            args = [m.group("id")] if "id" in route.pattern.groupindex else []
            return 200, handler(*args, call.params)
        raise _APIError(
            404,
            f"Unrecognized request URL ({call.method}: {call.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )

    def _emit(self, event_type: str, obj: dict[str, Any]) -> None:
        event = make_event(event_type, copy.deepcopy(obj))
        if self._current is not None:
            event["request"] = {
                "id": self._current.request_id,
                "idempotency_key": self._current.idempotency_key,
            }
        self.events.append(event)

    # -- lookups -----------------------------------------------------------------------

    def _customer_param(self, p: dict[str, Any]) -> dict[str, Any]:
        cus_id = _get_str(p, "customer", required=True)
        assert cus_id is not None
        cus = self.customers.get(cus_id)
        if cus is None:
            raise _no_such("customer", cus_id, param="customer")
        return cus

    def _customer_path(self, cus_id: str) -> dict[str, Any]:
        cus = self.customers.get(cus_id)
        if cus is None:
            raise _no_such("customer", cus_id, param="id", status=404)
        return cus

    def _invoice_path(self, inv_id: str) -> dict[str, Any]:
        inv = self.invoices.get(inv_id)
        if inv is None:
            raise _no_such("invoice", inv_id, param="id", status=404)
        return inv

    # -- customers ---------------------------------------------------------------------

    def _create_customer(self, p: dict[str, Any]) -> dict[str, Any]:
        cus: dict[str, Any] = {
            "id": _new_id("cus", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "business_name": None,
            "created": _now(),
            "currency": None,
            "customer_account": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "individual_name": None,
            "invoice_prefix": "".join(
                secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8)
            ),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._apply_customer_params(cus, p)
        self.customers[cus["id"]] = cus
        self._emit("customer.created", cus)
        return copy.deepcopy(cus)

    def _retrieve_customer(self, cus_id: str, p: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(self._customer_path(cus_id))

    def _update_customer(self, cus_id: str, p: dict[str, Any]) -> dict[str, Any]:
        cus = self._customer_path(cus_id)
        updated = copy.deepcopy(cus)
        self._apply_customer_params(updated, p)  # validate fully before mutating
        previous = {k: cus[k] for k in updated if updated[k] != cus[k]}
        cus.update(updated)
        for inv in self.invoices.values():
            if inv["customer"] == cus_id and inv["status"] == "draft":
                self._refresh_invoice(inv)
        self._emit_with_previous("customer.updated", cus, previous)
        return copy.deepcopy(cus)

    def _emit_with_previous(
        self, event_type: str, obj: dict[str, Any], previous: dict[str, Any]
    ) -> None:
        self._emit(event_type, obj)
        self.events[-1]["data"]["previous_attributes"] = copy.deepcopy(previous)

    def _apply_customer_params(self, cus: dict[str, Any], p: dict[str, Any]) -> None:
        for name in ("name", "email", "description", "phone", "business_name", "individual_name"):
            if name in p:
                cus[name] = _get_nullable_str(p, name)
        if "metadata" in p:
            cus["metadata"] = _merge_metadata(cus["metadata"], p["metadata"])
        if "address" in p:
            cus["address"] = _address(p["address"], "address")
        if "shipping" in p:
            shipping = p["shipping"]
            if shipping == "":
                cus["shipping"] = None
            elif not isinstance(shipping, dict):
                raise _APIError(400, "Invalid object: shipping must be a hash", param="shipping")
            else:
                if not shipping.get("name"):
                    raise _missing("shipping[name]")
                cus["shipping"] = {
                    "address": _address(shipping.get("address", ""), "shipping[address]"),
                    "name": shipping["name"],
                    "phone": shipping.get("phone") or None,
                }
        if "preferred_locales" in p:
            locales = p["preferred_locales"]
            cus["preferred_locales"] = [] if locales == "" else list(locales)
        if "invoice_prefix" in p:
            prefix = _get_str(p, "invoice_prefix") or ""
            if not re.fullmatch(r"[A-Z0-9]{3,12}", prefix):
                raise _APIError(
                    400,
                    "Invoice prefixes must be 3-12 uppercase letters or numbers.",
                    param="invoice_prefix",
                )
            cus["invoice_prefix"] = prefix
        if "next_invoice_sequence" in p:
            seq = _get_int(p, "next_invoice_sequence")
            if seq is None or seq < 1:
                raise _APIError(
                    400, "next_invoice_sequence must be at least 1.", param="next_invoice_sequence"
                )
            cus["next_invoice_sequence"] = seq
        if "balance" in p:
            cus["balance"] = _get_int(p, "balance")
        if "tax_exempt" in p:
            cus["tax_exempt"] = _get_choice(p, "tax_exempt", ("none", "exempt", "reverse"))
        settings = _get_dict(p, "invoice_settings")
        if settings is not None and "footer" in settings:
            cus["invoice_settings"]["footer"] = settings["footer"] or None

    # -- invoice items -----------------------------------------------------------------

    def _create_invoice_item(self, p: dict[str, Any]) -> dict[str, Any]:
        cus = self._customer_param(p)
        for unsupported in ("pricing", "price_data", "subscription"):
            if unsupported in p:
                raise _APIError(
                    400,
                    f"FakeStripe does not model `{unsupported}` on invoice items; use "
                    "`amount` or `unit_amount_decimal` + `quantity`.",
                    param=unsupported,
                )
        invoice: dict[str, Any] | None = None
        inv_id = _get_str(p, "invoice")
        if inv_id:
            invoice = self.invoices.get(inv_id)
            if invoice is None:
                raise _no_such("invoice", inv_id, param="invoice")
            if invoice["customer"] != cus["id"]:
                raise _APIError(
                    400,
                    f"The invoice '{inv_id}' belongs to customer '{invoice['customer']}', "
                    f"not '{cus['id']}'.",
                    param="invoice",
                )
            if invoice["status"] != "draft":
                raise _not_editable(
                    f"You can only add invoice items to draft invoices; invoice '{inv_id}' "
                    f"is {invoice['status']}."
                )

        currency = _get_currency(p) or (invoice or {}).get("currency") or cus["currency"]
        if currency is None:
            raise _missing("currency")
        if invoice is not None and currency != invoice["currency"]:
            raise _APIError(
                400,
                f"The currency of the invoice item ({currency}) must match the currency of "
                f"the invoice ({invoice['currency']}).",
                param="currency",
            )

        amount = _get_int(p, "amount")
        unit = _get_decimal(p, "unit_amount_decimal")
        quantity = _get_int(p, "quantity")
        quantity_dec = _get_decimal(p, "quantity_decimal")
        if amount is not None and unit is not None:
            raise _APIError(
                400,
                "You may only specify one of these parameters: amount, unit_amount_decimal.",
                param="amount",
            )
        if quantity is not None and quantity_dec is not None:
            raise _APIError(
                400,
                "You may only specify one of these parameters: quantity, quantity_decimal.",
                param="quantity",
            )
        if amount is not None and (quantity is not None or quantity_dec is not None):
            raise _APIError(
                400,
                "`amount` is the item's total; to bill a quantity pass `unit_amount_decimal` "
                "with `quantity` (FakeStripe rejects amount + quantity).",
                param="quantity",
            )
        if quantity is not None and quantity < 0:
            raise _APIError(400, "This value must be greater than or equal to 0.", param="quantity")
        qty = Decimal(quantity) if quantity is not None else (quantity_dec or Decimal(1))
        if amount is not None:
            unit = Decimal(amount)
            total = amount
        elif unit is not None:
            total = int((unit * qty).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        else:
            raise _missing("amount")

        now = _now()
        period = _get_dict(p, "period")
        start = end = now
        if period is not None:
            start = _period_bound(period, "start")
            end = _period_bound(period, "end")
            if end < start:
                raise _APIError(
                    400,
                    "The period end must be greater than or equal to the period start.",
                    param="period[end]",
                )
        discountable = _get_bool(p, "discountable")
        item: dict[str, Any] = {
            "id": _new_id("ii"),
            "object": "invoiceitem",
            "amount": total,
            "currency": currency,
            "customer": cus["id"],
            "customer_account": None,
            "date": now,
            "description": _get_nullable_str(p, "description"),
            "discountable": (total >= 0) if discountable is None else discountable,
            "discounts": [],
            "invoice": invoice["id"] if invoice else None,
            "livemode": False,
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "net_amount": total,
            "parent": None,
            "period": {"end": end, "start": start},
            "pricing": {
                "price_details": None,
                "type": "price_details",
                "unit_amount_decimal": _decimal_str(unit),
            },
            "proration": False,
            "proration_details": {"credited_items": None, "discount_amounts": []},
            "quantity": int(qty.to_integral_value(rounding=ROUND_HALF_UP)),
            "quantity_decimal": _decimal_str(qty),
            "tax_rates": [],
            "test_clock": None,
        }
        self.invoice_items[item["id"]] = item
        self._emit("invoiceitem.created", item)
        if invoice is not None:
            self._refresh_invoice(invoice)
        return copy.deepcopy(item)

    def _retrieve_invoice_item(self, item_id: str, p: dict[str, Any]) -> dict[str, Any]:
        item = self.invoice_items.get(item_id)
        if item is None:
            raise _no_such("invoiceitem", item_id, param="id", status=404)
        return copy.deepcopy(item)

    def _list_invoice_items(self, p: dict[str, Any]) -> dict[str, Any]:
        items = list(reversed(self.invoice_items.values()))  # newest first, like Stripe
        if "invoice" in p:
            items = [i for i in items if i["invoice"] == p["invoice"]]
        if "customer" in p:
            items = [i for i in items if i["customer"] == p["customer"]]
        pending = _get_bool(p, "pending")
        if pending is not None:
            items = [i for i in items if (i["invoice"] is None) == pending]
        return _paginate(items, p, "/v1/invoiceitems")

    # -- invoices ----------------------------------------------------------------------

    def _create_invoice(self, p: dict[str, Any]) -> dict[str, Any]:
        cus = self._customer_param(p)
        method = (
            _get_choice(p, "collection_method", ("charge_automatically", "send_invoice"))
            or "charge_automatically"
        )
        days = _get_int(p, "days_until_due")
        due_date = _get_int(p, "due_date")
        if days is not None and due_date is not None:
            raise _APIError(
                400,
                "You may only specify one of these parameters: days_until_due, due_date.",
                param="days_until_due",
            )
        if method == "charge_automatically" and (days is not None or due_date is not None):
            raise _APIError(
                400,
                "Invoices with `collection_method=charge_automatically` cannot have "
                "`days_until_due` or `due_date`.",
                param="days_until_due" if days is not None else "due_date",
            )
        if method == "send_invoice" and days is None and due_date is None:
            raise _APIError(
                400,
                "Invoices with `collection_method=send_invoice` require `days_until_due` "
                "or `due_date`.",
                param="days_until_due",
            )
        if days is not None and days < 0:
            raise _APIError(400, "days_until_due must be non-negative.", param="days_until_due")
        behavior = (
            _get_choice(p, "pending_invoice_items_behavior", ("exclude", "include")) or "exclude"
        )
        auto_advance = bool(_get_bool(p, "auto_advance"))
        currency = _get_currency(p) or cus["currency"] or "usd"
        now = _now()
        inv: dict[str, Any] = {
            "id": _new_id("in"),
            "object": "invoice",
            "account_country": "US",
            "account_name": "FakeStripe",
            "account_tax_ids": None,
            "amount_due": 0,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": auto_advance,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": now + 3600 if auto_advance else None,
            "billing_reason": "manual",
            "collection_method": method,
            "confirmation_secret": None,
            "created": now,
            "currency": currency,
            "custom_fields": None,
            "customer": cus["id"],
            "customer_account": None,
            "customer_address": None,
            "customer_email": None,
            "customer_name": None,
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": _get_nullable_str(p, "description"),
            "discounts": [],
            "due_date": due_date
            if due_date is not None
            else (now + days * 86400 if days is not None else None),
            "effective_at": None,
            "ending_balance": None,
            "footer": _get_nullable_str(p, "footer") or cus["invoice_settings"]["footer"],
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": None,
            "livemode": False,
            "metadata": _merge_metadata({}, p.get("metadata", {})),
            "next_payment_attempt": None,
            "number": None,
            "on_behalf_of": None,
            "parent": None,
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": now,
            "period_start": now,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": _get_nullable_str(p, "statement_descriptor"),
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "test_clock": None,
            "total": 0,
            "total_discount_amounts": [],
            "total_excluding_tax": 0,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": None,
        }
        self.invoices[inv["id"]] = inv
        if behavior == "include":
            for item in self.invoice_items.values():
                if (
                    item["invoice"] is None
                    and item["customer"] == cus["id"]
                    and item["currency"] == currency
                ):
                    item["invoice"] = inv["id"]
                    self._included_at_creation.add(item["id"])
        self._refresh_invoice(inv)
        self._emit("invoice.created", inv)
        return copy.deepcopy(inv)

    def _retrieve_invoice(self, inv_id: str, p: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(self._invoice_path(inv_id))

    def _list_invoice_lines(self, inv_id: str, p: dict[str, Any]) -> dict[str, Any]:
        inv = self._invoice_path(inv_id)
        return _paginate(self._lines(inv), p, f"/v1/invoices/{inv_id}/lines")

    def _finalize_invoice(self, inv_id: str, p: dict[str, Any]) -> dict[str, Any]:
        inv = self._invoice_path(inv_id)
        if inv["status"] != "draft":
            raise _not_editable(
                "This invoice is already finalized, you can't re-finalize a non-draft "
                f"invoice (status: {inv['status']})."
            )
        auto_advance = _get_bool(p, "auto_advance")
        self._finalize(inv, auto_advance)
        return copy.deepcopy(inv)

    def _finalize(self, inv: dict[str, Any], auto_advance: bool | None) -> None:
        now = _now()
        if auto_advance is not None:
            inv["auto_advance"] = auto_advance
        self._refresh_invoice(inv)
        cus = self.customers[inv["customer"]]
        inv["number"] = f"{cus['invoice_prefix']}-{cus['next_invoice_sequence']:04d}"
        cus["next_invoice_sequence"] += 1
        inv["status"] = "open"
        inv["status_transitions"]["finalized_at"] = now
        inv["effective_at"] = now
        inv["automatically_finalizes_at"] = None
        inv["ending_balance"] = 0
        inv["hosted_invoice_url"] = f"{self.url}/i/{inv['id']}"
        inv["invoice_pdf"] = f"{self.url}/i/{inv['id']}/pdf"
        if inv["collection_method"] == "charge_automatically" and inv["auto_advance"]:
            inv["next_payment_attempt"] = now + 3600
        self._emit("invoice.finalized", inv)
        if inv["amount_due"] == 0:
            # Stripe marks an invoice with nothing to collect as paid on finalization.
            self._mark_paid(inv, now, attempt=False)

    def _mark_paid(self, inv: dict[str, Any], now: int, *, attempt: bool) -> None:
        inv["status"] = "paid"
        inv["amount_paid"] = inv["amount_due"]
        inv["amount_remaining"] = 0
        inv["attempted"] = True
        if attempt:
            inv["attempt_count"] += 1
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
        inv["status_transitions"]["paid_at"] = now
        self._emit("invoice.paid", inv)

    def _void_invoice(self, inv_id: str, p: dict[str, Any]) -> dict[str, Any]:
        inv = self._invoice_path(inv_id)
        if inv["status"] not in ("open", "uncollectible"):
            hint = " Delete a draft invoice instead." if inv["status"] == "draft" else ""
            raise _not_editable(
                f"You can only void open or uncollectible invoices; invoice '{inv_id}' is "
                f"{inv['status']}.{hint}"
            )
        inv["status"] = "void"
        inv["status_transitions"]["voided_at"] = _now()
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
        self._emit("invoice.voided", inv)
        return copy.deepcopy(inv)

    def _mark_uncollectible(self, inv_id: str, p: dict[str, Any]) -> dict[str, Any]:
        inv = self._invoice_path(inv_id)
        if inv["status"] != "open":
            raise _not_editable(
                f"You can only mark open invoices as uncollectible; invoice '{inv_id}' is "
                f"{inv['status']}."
            )
        inv["status"] = "uncollectible"
        inv["status_transitions"]["marked_uncollectible_at"] = _now()
        inv["next_payment_attempt"] = None
        inv["auto_advance"] = False
        self._emit("invoice.marked_uncollectible", inv)
        return copy.deepcopy(inv)

    def _pay_invoice(self, inv_id: str, p: dict[str, Any]) -> dict[str, Any]:
        inv = self._invoice_path(inv_id)
        out_of_band = bool(_get_bool(p, "paid_out_of_band"))
        if inv["status"] in ("paid", "void"):
            raise _not_editable(f"Invoice '{inv_id}' is {inv['status']} and cannot be paid.")
        if inv["status"] == "draft":  # Stripe finalizes a draft before paying it
            self._finalize(inv, None)
            if inv["status"] == "paid":
                return copy.deepcopy(inv)
        self._mark_paid(inv, _now(), attempt=not out_of_band)
        return copy.deepcopy(inv)

    # -- invoice rendering -------------------------------------------------------------

    def _lines(self, inv: dict[str, Any]) -> list[dict[str, Any]]:
        items = [i for i in self.invoice_items.values() if i["invoice"] == inv["id"]]
        # Stripe order: pending items pulled in at creation (newest first), then items
        # added to the draft afterwards (oldest first).
        pulled = [i for i in items if i["id"] in self._included_at_creation]
        added = [i for i in items if i["id"] not in self._included_at_creation]
        return [self._line(inv, i) for i in [*reversed(pulled), *added]]

    def _line(self, inv: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        line_id = self._line_ids.setdefault(item["id"], _new_id("il"))
        return {
            "id": line_id,
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "discount_amounts": [],
            "discountable": item["discountable"],
            "discounts": [],
            "invoice": inv["id"],
            "livemode": False,
            "metadata": dict(item["metadata"]),
            "parent": {
                "invoice_item_details": {
                    "invoice_item": item["id"],
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
                "type": "invoice_item_details",
            },
            "period": dict(item["period"]),
            "pretax_credit_amounts": [],
            "pricing": copy.deepcopy(item["pricing"]),
            "quantity": item["quantity"],
            "quantity_decimal": item["quantity_decimal"],
            "subscription": None,
            "subtotal": item["amount"],
            "taxes": [],
        }

    def _refresh_invoice(self, inv: dict[str, Any]) -> None:
        """Recompute lines and totals (Stripe keeps a draft's totals current)."""
        lines = self._lines(inv)
        inv["lines"] = {
            "object": "list",
            "data": lines[:LINES_INCLUDED],
            "has_more": len(lines) > LINES_INCLUDED,
            "total_count": len(lines),
            "url": f"/v1/invoices/{inv['id']}/lines",
        }
        if inv["status"] != "draft":
            return
        subtotal = sum(line["amount"] for line in lines)
        inv["subtotal"] = inv["subtotal_excluding_tax"] = subtotal
        inv["total"] = inv["total_excluding_tax"] = subtotal
        inv["amount_due"] = max(subtotal + inv["starting_balance"], 0)
        inv["amount_remaining"] = inv["amount_due"] - inv["amount_paid"]
        cus = self.customers[inv["customer"]]
        inv["customer_address"] = copy.deepcopy(cus["address"])
        inv["customer_email"] = cus["email"]
        inv["customer_name"] = cus["name"]
        inv["customer_phone"] = cus["phone"]
        inv["customer_shipping"] = copy.deepcopy(cus["shipping"])
        inv["customer_tax_exempt"] = cus["tax_exempt"]


def _period_bound(period: dict[str, Any], name: str) -> int:
    try:
        value = _get_int(period, name, required=True)
    except _APIError as err:
        err.param = f"period[{name}]"
        err.message = err.message.replace(f"param: {name}", f"param: period[{name}]")
        raise
    assert value is not None
    return value


def _decimal_str(value: Decimal) -> str:
    """Stripe's decimal-string rendering: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _paginate(objects: list[dict[str, Any]], p: dict[str, Any], url: str) -> dict[str, Any]:
    limit = _get_int(p, "limit")
    if limit is None:
        limit = 10
    if not 1 <= limit <= 100:
        raise _APIError(400, "This value must be between 1 and 100 (inclusive).", param="limit")
    ids = [o["id"] for o in objects]
    after = _get_str(p, "starting_after")
    before = _get_str(p, "ending_before")
    if after:
        if after not in ids:
            raise _no_such("object", after, param="starting_after")
        window = objects[ids.index(after) + 1 :]
        page = window[:limit]
        has_more = len(window) > limit
    elif before:
        if before not in ids:
            raise _no_such("object", before, param="ending_before")
        window = objects[: ids.index(before)]
        page = window[-limit:]
        has_more = len(window) > limit
    else:
        page = objects[:limit]
        has_more = len(objects) > limit
    return {
        "object": "list",
        "data": copy.deepcopy(page),
        "has_more": has_more,
        "url": url,
    }
