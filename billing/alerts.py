"""Budget and balance alerts: thresholds crossed, recorded once, delivered as signed webhooks.

Invariants:
- an alert fires at most once per (tenant, budget, period, threshold): the database's
  unique constraint decides, so evaluations may run concurrently and repeatedly;
- whether a threshold is crossed is decided in exact Decimal arithmetic (never float):
  used * 100 >= threshold * limit; a budget whose limit is not positive never fires;
- an alert is recorded even without an active webhook endpoint (delivery "no_endpoint"),
  so the usage API lists it;
- delivery takes the alert row's lock and never sends an alert recorded as delivered, so
  retried or duplicated tasks send it once. A receiver may still see an event twice if we
  crash between its 2xx and our commit: receivers deduplicate by the event id (the
  `Reckon-Event-Id` header and the body's `id`);
- the signature is Stripe-style: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>`.
"""

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, localcontext
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from billing.balances import balance_state
from billing.enqueue import ALERT_DELIVER, enqueue, enqueue_on_commit
from billing.models import Alert, BalanceAccount, Subscription, WebhookEndpoint
from billing.selectors import subscription_current
from config.errors import ApplicationError
from metering.calendar import month_key, month_start
from metering.control.budgets import budget_list
from metering.models import ReasoningPolicy, SpendLimit
from metering.selectors import reasoning_tokens_since, spend_since

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (50, 80, 100)
# Percentages an endpoint may configure (above 100: overspend of a soft budget).
THRESHOLD_RANGE = range(1, 1001)
EVENT_TYPE = "budget.threshold_crossed"
DELIVERY_TIMEOUT_S = 10
SIGNATURE_TOLERANCE_S = 300
# How much of a receiver's error response is kept in last_error.
ERROR_BODY_CHARS = 200
# Enough digits for any product of two stored amounts: Inexact is trapped, so a rounded
# comparison raises instead of silently deciding a boundary wrongly.
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation])
_STORED = Decimal("1e-12")  # Alert.used / Alert.limit keep 12 decimals
_FINAL = (Alert.Delivery.DELIVERED, Alert.Delivery.NO_ENDPOINT)


class AlertDeliveryFailed(ApplicationError):
    """The endpoint could not be reached or did not answer 2xx; the delivery is retried."""

    status = 502
    code = "alert_delivery_failed"


@dataclass(frozen=True)
class Budget:
    """One budget of a tenant as it stands at an instant."""

    # "spend_limit:<id>", "balance", "reasoning_budget:plan", "reasoning_budget:key:<id>".
    key: str
    description: str
    # The window the usage counts in: "2026-11", "total", or the balance's epoch.
    period: str
    unit: str  # "USD" (or the balance's currency), "reasoning_tokens"
    used: Decimal
    limit: Decimal


# --- pure helpers ----------------------------------------------------------------------


def thresholds_of(configured: Any) -> tuple[int, ...]:
    """An endpoint's thresholds, sorted and de-duplicated; the defaults when none (or
    none valid) are configured."""
    if not isinstance(configured, list):
        return DEFAULT_THRESHOLDS
    valid = {
        t
        for t in configured
        if isinstance(t, int) and not isinstance(t, bool) and t in THRESHOLD_RANGE
    }
    return tuple(sorted(valid)) or DEFAULT_THRESHOLDS


def thresholds_crossed(*, used: Decimal, limit: Decimal, thresholds: tuple[int, ...]) -> list[int]:
    """The thresholds t with used * 100 >= t * limit, exactly. Nothing for a limit <= 0
    (a zero budget has no percentage to cross)."""
    if limit <= 0:
        return []
    with localcontext(_EXACT):
        scaled = Decimal(used) * 100
        return [t for t in thresholds if scaled >= Decimal(t) * Decimal(limit)]


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


# --- reads -----------------------------------------------------------------------------


def _key_label(prefix: str) -> str:
    return f"key {prefix}…"


def budgets_of(tenant_id: uuid.UUID, at: datetime) -> list[Budget]:
    """Every budget of the tenant that can fire, as it stands at `at` (the list the proxy
    holds calls against: metering.control.budgets)."""
    at = at.astimezone(UTC)
    since_month = month_start(at)
    month = month_key(at)
    state = balance_state(tenant_id, at)
    subscription = subscription_current(tenant_id=tenant_id, at=at)
    plan = subscription.plan_version if subscription is not None else None
    specs = budget_list(
        tenant_id=tenant_id,
        api_key_id=None,
        balance=state is not None and state.available > 0,
        plan_reasoning_tokens=plan.monthly_reasoning_tokens if plan is not None else None,
    )
    budgets: list[Budget] = []
    for spec in specs:
        if spec.kind == "spend":
            assert spec.limit is not None
            scope = _key_label(spec.key_prefix) if spec.api_key_id else "the tenant"
            budgets.append(
                Budget(
                    key=f"spend_limit:{spec.spend_limit_id}",
                    description=(
                        f"{'Monthly' if spec.monthly else 'All-time'} spend limit of {scope}"
                    ),
                    period=month if spec.monthly else "total",
                    unit="USD",
                    used=spend_since(
                        tenant_id=tenant_id,
                        api_key_id=spec.api_key_id,
                        since=since_month if spec.monthly else None,
                    ),
                    limit=spec.limit,
                )
            )
        elif spec.kind == "balance":
            assert state is not None
            epoch = state.watermark.isoformat() if state.watermark else "start"
            budgets.append(
                Budget(
                    key="balance",
                    description=f"Prepaid balance ({state.currency})",
                    # a top-up (new available) or an invoice (new watermark) re-arms them
                    period=f"{epoch}/{state.available}",
                    unit=state.currency,
                    used=state.uninvoiced_spend,
                    limit=state.available,
                )
            )
        elif spec.api_key_id is None:
            assert spec.limit is not None and plan is not None
            budgets.append(
                Budget(
                    key="reasoning_budget:plan",
                    description=f"Monthly reasoning-token budget of plan {plan.plan.code}",
                    period=month,
                    unit="reasoning_tokens",
                    used=Decimal(reasoning_tokens_since(tenant_id=tenant_id, since=since_month)),
                    limit=spec.limit,
                )
            )
        else:
            assert spec.limit is not None
            budgets.append(
                Budget(
                    key=f"reasoning_budget:key:{spec.api_key_id}",
                    description=(
                        f"Monthly reasoning-token budget of {_key_label(spec.key_prefix)}"
                    ),
                    period=month,
                    unit="reasoning_tokens",
                    used=Decimal(
                        reasoning_tokens_since(
                            tenant_id=tenant_id, api_key_id=spec.api_key_id, since=since_month
                        )
                    ),
                    limit=spec.limit,
                )
            )
    return budgets


def alerts_for_tenant(
    *, tenant_id: uuid.UUID, budget: str | None = None, since: datetime | None = None
) -> QuerySet[Alert]:
    """The tenant's alerts (the usage API lists them newest first)."""
    alerts = Alert.objects.filter(tenant_id=tenant_id)
    if budget:
        alerts = alerts.filter(budget=budget)
    if since is not None:
        alerts = alerts.filter(created_at__gte=since)
    return alerts


def tenants_with_budgets(at: datetime) -> list[uuid.UUID]:
    """Every tenant with a spend limit, a balance account, a plan reasoning budget in
    force at `at`, or a key reasoning budget."""
    ids: set[uuid.UUID] = set(SpendLimit.objects.values_list("tenant_id", flat=True))
    ids |= set(BalanceAccount.objects.values_list("tenant_id", flat=True))
    ids |= set(
        Subscription.objects.filter(
            plan_version__monthly_reasoning_tokens__isnull=False, starts_at__lte=at
        )
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at))
        .values_list("tenant_id", flat=True)
    )
    ids |= set(
        ReasoningPolicy.objects.filter(monthly_reasoning_tokens__isnull=False).values_list(
            "api_key__tenant_id", flat=True
        )
    )
    return sorted(ids, key=str)


# --- writes ----------------------------------------------------------------------------


@transaction.atomic
def alerts_evaluate(*, tenant_id: uuid.UUID, at: datetime | None = None) -> list[Alert]:
    """Record an alert for every threshold the tenant's budgets have crossed that has not
    fired in its period yet, and schedule their delivery once committed. Returns the
    alerts this call created (a concurrent evaluation's alerts are not repeated)."""
    at = at or timezone.now()
    # The thresholds of the active endpoint, else the defaults: what the proxy checks.
    endpoint = WebhookEndpoint.objects.filter(tenant_id=tenant_id, is_active=True).first()
    thresholds = thresholds_of(endpoint.thresholds if endpoint else None)
    delivery = Alert.Delivery.PENDING if endpoint is not None else Alert.Delivery.NO_ENDPOINT
    budgets = budgets_of(tenant_id, at)
    fired = set(
        Alert.objects.filter(tenant_id=tenant_id, budget__in=[b.key for b in budgets]).values_list(
            "budget", "period", "threshold"
        )
    )
    created: list[Alert] = []
    for budget in budgets:
        crossed = thresholds_crossed(used=budget.used, limit=budget.limit, thresholds=thresholds)
        for threshold in crossed:
            if (budget.key, budget.period, threshold) in fired:
                continue
            # the unique constraint arbitrates a race: the loser gets the winner's row
            alert, was_created = Alert.objects.get_or_create(
                tenant_id=tenant_id,
                budget=budget.key,
                period=budget.period,
                threshold=threshold,
                defaults={
                    "event_id": uuid.uuid4(),
                    "description": budget.description[:300],
                    "unit": budget.unit,
                    "used": budget.used.quantize(_STORED, ROUND_HALF_UP, Context(prec=200)),
                    "limit": budget.limit.quantize(_STORED, ROUND_HALF_UP, Context(prec=200)),
                    "delivery": delivery,
                },
            )
            if was_created:
                created.append(alert)
    for alert in created:
        if alert.delivery == Alert.Delivery.PENDING:
            enqueue_on_commit(ALERT_DELIVER, alert.pk)
    return created


STALE_PENDING = timedelta(minutes=10)


def alerts_evaluate_all(at: datetime | None = None) -> int:
    """Evaluate every tenant with a budget, each in its own transaction; one tenant's
    failure is logged and does not stop the others. Returns the alerts created."""
    at = at or timezone.now()
    created = 0
    for tenant_id in tenants_with_budgets(at):
        try:
            created += len(alerts_evaluate(tenant_id=tenant_id, at=at))
        except Exception:
            logger.exception("alert evaluation failed for tenant %s", tenant_id)
    # A delivery that could not be queued (broker down at commit) is queued again here;
    # delivery is idempotent, so one queued twice is still sent once.
    stale = Alert.objects.filter(
        delivery=Alert.Delivery.PENDING, created_at__lt=at - STALE_PENDING
    ).values_list("pk", flat=True)
    for alert_id in stale:
        enqueue(ALERT_DELIVER, alert_id)
    return created


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


def alert_deliver(*, alert_id: int) -> str:
    """Deliver one alert to its tenant's active endpoint, at most once successfully.

    The alert row stays locked while it is sent, so a concurrent or duplicated delivery
    waits and then finds it delivered. A failure is recorded (attempts, last_error) and
    committed, then raised as AlertDeliveryFailed for the caller to retry. Returns the
    alert's delivery status."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.delivery in _FINAL:
            return alert.delivery
        endpoint = WebhookEndpoint.objects.filter(tenant_id=alert.tenant_id, is_active=True).first()
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
