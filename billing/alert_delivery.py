"""Delivery of alerts as signed webhooks: budget alerts (recorded by billing.alerts) to
their tenant's endpoint, reconciliation alerts (billing.reconciliation_alerts) to the
operator's endpoint.

Invariants:
- delivery takes the alert row's lock and never sends an alert recorded as delivered, so
  retried or duplicated tasks send it once. A receiver may still see an event twice if we
  crash between its 2xx and our commit: receivers deduplicate by the event id (the
  `Reckon-Event-Id` header and the body's `id`);
- the signature is Stripe-style: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>`;
- a webhook goes to the configured http(s) URL only: redirects are never followed.

`alert_deliver_task` is defined here, beside the service it calls, so billing.alerts
enqueues it by importing this module (which imports nothing of the evaluation).
"""

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from celery import Task, shared_task
from django.db import transaction
from django.utils import timezone

from billing.models import Alert, OperatorEndpoint, WebhookEndpoint
from config.celery import RELIABLE_TASK, TRANSIENT_ERRORS
from config.errors import ApplicationError

logger = logging.getLogger(__name__)

EVENT_TYPE = "budget.threshold_crossed"
RECONCILIATION_EVENT_TYPE = "reconciliation.discrepancy"
DELIVERY_TIMEOUT_S = 10
SIGNATURE_TOLERANCE_S = 300
# How much of a receiver's error response is kept in last_error.
ERROR_BODY_CHARS = 200
_FINAL = (Alert.Delivery.DELIVERED, Alert.Delivery.NO_ENDPOINT)


class AlertDeliveryFailed(ApplicationError):
    """The endpoint could not be reached or did not answer 2xx; the delivery is retried."""

    status = 502
    code = "alert_delivery_failed"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Reckon-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: a v1 signature of this body by this secret, made within
    `tolerance_s` of `now` (unix seconds). Constant-time comparison."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).partition("v1=")[2].encode()
    return any(hmac.compare_digest(expected, s.encode()) for s in signatures)


def _exact(value: Decimal) -> str:
    """A Decimal as an exact plain string (no exponent)."""
    return format(value, "f")


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The webhook body (also the shape receivers document)."""
    if alert.kind == Alert.Kind.RECONCILIATION:
        return {
            "id": str(alert.event_id),
            "type": RECONCILIATION_EVENT_TYPE,
            "created": int(alert.created_at.timestamp()),
            "data": {"description": alert.description, **alert.details},
        }
    return {
        "id": str(alert.event_id),
        "type": EVENT_TYPE,
        "created": int(alert.created_at.timestamp()),
        "data": {
            "budget": alert.budget,
            "description": alert.description,
            "period": alert.period,
            "threshold": alert.threshold,
            "unit": alert.unit,
            "used": _exact(Decimal(alert.used)),
            "limit": _exact(Decimal(alert.limit)),
            "tenant_id": str(alert.tenant_id),
        },
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook is delivered to the configured URL or fails; it never follows a redirect."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _error_body(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read(ERROR_BODY_CHARS).decode("utf-8", "replace")
    except Exception:
        return ""
    finally:
        error.close()
    return " ".join(text.split())[:ERROR_BODY_CHARS]


def webhook_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST once; the 2xx status, or AlertDeliveryFailed (never the secret, at most
    ERROR_BODY_CHARS of the response)."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AlertDeliveryFailed("The webhook URL must be an http(s) URL.")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - scheme checked above
        with _OPENER.open(request, timeout=DELIVERY_TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        detail = _error_body(exc)
        raise AlertDeliveryFailed(
            f"The endpoint answered HTTP {exc.code}" + (f": {detail}" if detail else "")
        ) from None
    except urllib.error.URLError as exc:
        raise AlertDeliveryFailed(f"The endpoint could not be reached: {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise AlertDeliveryFailed(
            f"The endpoint could not be reached: {type(exc).__name__}: {exc}"
        ) from None
    if not 200 <= status < 300:
        raise AlertDeliveryFailed(f"The endpoint answered HTTP {status}")
    return status


def _endpoint_of(alert: Alert) -> WebhookEndpoint | OperatorEndpoint | None:
    """A budget alert goes to its tenant's active endpoint, a reconciliation alert to the
    operator's; never one to the other."""
    if alert.kind == Alert.Kind.RECONCILIATION:
        return OperatorEndpoint.objects.filter(is_active=True).first()
    if alert.tenant_id is None:
        return None
    return WebhookEndpoint.objects.filter(tenant_id=alert.tenant_id, is_active=True).first()


def alert_deliver(*, alert_id: int) -> str:
    """Deliver one alert to its active endpoint (the tenant's or the operator's), at most once successfully.

    The alert row stays locked while it is sent, so a concurrent or duplicated delivery
    waits and then finds it delivered. A failure is recorded (attempts, last_error) and
    committed, then raised as AlertDeliveryFailed for the caller to retry. Returns the
    alert's delivery status."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.delivery in _FINAL:
            return alert.delivery
        endpoint = _endpoint_of(alert)
        if endpoint is None:  # removed or deactivated since the alert fired
            alert.delivery = Alert.Delivery.NO_ENDPOINT
            alert.save(update_fields=["delivery"])
            return alert.delivery
        body = json.dumps(alert_payload(alert), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Reckon-Webhooks/1",
            "Reckon-Event-Id": str(alert.event_id),
            "Reckon-Signature": sign(endpoint.secret, int(time.time()), body),
        }
        alert.attempts += 1
        try:
            webhook_post(endpoint.url, body, headers)
        except AlertDeliveryFailed as exc:
            error = exc.message.replace(endpoint.secret, "***") if endpoint.secret else exc.message
            alert.last_error = error[:500]
            alert.save(update_fields=["attempts", "last_error"])
            logger.warning("alert %s delivery attempt %s failed", alert.pk, alert.attempts)
            failure = AlertDeliveryFailed(alert.last_error, {"alert_id": alert.pk})
        else:
            alert.delivery = Alert.Delivery.DELIVERED
            alert.delivered_at = timezone.now()
            alert.last_error = ""
            alert.save(update_fields=["attempts", "delivery", "delivered_at", "last_error"])
            return alert.delivery
    raise failure  # after the commit: the attempt is recorded, the caller retries


def alert_delivery_give_up(*, alert_id: int) -> bool:
    """Retries are exhausted: a still-pending alert is marked failed. True if it was."""
    return bool(
        Alert.objects.filter(pk=alert_id, delivery=Alert.Delivery.PENDING).update(
            delivery=Alert.Delivery.FAILED
        )
    )


ALERT_DELIVERY_TASK = RELIABLE_TASK | {"retry_backoff_max": 600, "max_retries": 8}


@shared_task(
    bind=True,
    name="billing.alert_deliver",
    autoretry_for=TRANSIENT_ERRORS + (AlertDeliveryFailed,),
    **ALERT_DELIVERY_TASK,
)
def alert_deliver_task(self: Task, alert_id: int) -> str:
    """Send one alert's webhook; retried with backoff, marked failed when retries run out."""
    try:
        return alert_deliver(alert_id=alert_id)
    except AlertDeliveryFailed:
        if self.max_retries is not None and self.request.retries >= self.max_retries:
            alert_delivery_give_up(alert_id=alert_id)  # this was the last attempt
        raise
