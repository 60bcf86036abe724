"""Reconciliation alerts: the operator hears when the ledger and a provider's report part.

Reconciliation (metering.reconcile) writes `ReconciliationRow`s and then calls
`metering.reconcile.hooks.rows_changed(account_id, days)`; billing registers
`reconciliation_rows_changed` for it at start-up. For each changed day:

- a *drift* alert fires for a settled day (none of the account's rows of that day is
  `pending`) with a class whose status is `drift` and |relative drift| >=
  RECKON_RECON_ALERT_RELATIVE (default 0.01), whichever the sign (a report short of our
  count alerts like one over it), or whose relative drift is null because the report
  says 0 of a class we forwarded (unbounded); a *missing_in_report* alert fires for a
  settled class of that status (we forwarded usage the settled report does not have: the
  relative drift is unbounded too);
- a *missing_in_ledger* alert fires at once, settled or not: reconciliation gives that
  status before the day settles (settling can add usage, never explain it away). The
  issue asks for "alert at once": the provider billed usage Reckon never forwarded (a
  leaked key or a bypass).

Invariants:
- one alert per (account, day, upstream model, key, status): `event_id` is a uuid5 of that
  key and is unique, so repeated or concurrent calls (every import re-reconciles the
  settling days) record it once; several classes of the same key go in one alert;
- an alert is recorded even without an active operator endpoint (delivery "no_endpoint");
  one to deliver is handed to billing.alert_delivery's task once its transaction commits
  (signed webhooks, sent once);
- alerts are the operator's: `tenant` is NULL and `kind` is "reconciliation", so no tenant
  API ever lists them (billing.alerts.alerts_for_tenant reads budget alerts only);
- the payload holds the facts (account name, day, model, key id, classes with ours, theirs,
  drift as exact integers or decimal text) and a description with no link, no URL and no
  secret (account names and key ids are the operator's own labels).
"""

import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from billing.alert_delivery import alert_deliver_task
from billing.models import Alert, OperatorEndpoint
from config.errors import ApplicationError
from metering.models import ProviderAccount, ReconciliationRow

# uuid5 namespace of reconciliation alert event ids (fixed: changing it would re-fire all).
EVENT_NAMESPACE = uuid.UUID("5a0f8a4e-2c1e-5b39-9d6e-7e0b0c15e115")
BUDGET_LABEL = "reconciliation"  # Alert.budget of every reconciliation alert

Status = ReconciliationRow.Status


def alert_threshold() -> Decimal:
    """RECKON_RECON_ALERT_RELATIVE as an exact Decimal (a setting may be text or number)."""
    return abs(Decimal(str(settings.RECKON_RECON_ALERT_RELATIVE)))


@dataclass(frozen=True)
class Finding:
    """One row that alerts, and the status its alert is keyed by."""

    status: str  # drift | missing_in_report | missing_in_ledger
    row: ReconciliationRow


def row_findings(
    rows: list[ReconciliationRow], *, settled: bool, threshold: Decimal
) -> list[Finding]:
    """The rows of one account-day that alert (pure: no database)."""
    found = []
    for row in rows:
        if row.status == Status.MISSING_IN_LEDGER:
            found.append(Finding(Status.MISSING_IN_LEDGER, row))
        elif not settled:
            continue
        elif row.status == Status.MISSING_IN_REPORT:
            found.append(Finding(Status.MISSING_IN_REPORT, row))
        elif row.status == Status.DRIFT and _beyond(row, threshold):
            found.append(Finding(Status.DRIFT, row))
    return found


def _beyond(row: ReconciliationRow, threshold: Decimal) -> bool:
    """|relative drift| >= threshold, either sign; a drift against a report of 0 (relative
    drift null) is unbounded."""
    if row.relative_drift is None:
        return bool(row.drift)
    return abs(Decimal(row.relative_drift)) >= threshold


def event_id_of(
    *, account_id: int, day: date, model: str, api_key_id: str, status: str
) -> uuid.UUID:
    return uuid.uuid5(
        EVENT_NAMESPACE, f"{account_id}|{day.isoformat()}|{model}|{api_key_id}|{status}"
    )


def _class_facts(row: ReconciliationRow) -> dict[str, Any]:
    return {
        "class": row.token_class,
        "ours": row.ours,
        "theirs": row.theirs,
        "drift": row.drift,
        "relative_drift": None if row.relative_drift is None else format(row.relative_drift, "f"),
        "status": row.status,
        "drift_equals_reasoning": row.drift_equals_reasoning,
    }


_SAYS = {
    Status.DRIFT: "the ledger and the provider's report differ beyond the alert threshold",
    Status.MISSING_IN_REPORT: "the ledger forwarded usage the provider's settled report lacks",
    Status.MISSING_IN_LEDGER: "the provider reports usage the ledger never forwarded",
}


def _description(
    account: ProviderAccount, day: date, model: str, key: str, status: str, worst: dict[str, Any]
) -> str:
    where = f"{account.name} {day.isoformat()} {model}" + (f" key {key}" if key else "")
    return (
        f"{where}: {_SAYS[Status(status)]} ({worst['class']}: ours {worst['ours']}, "
        f"theirs {worst['theirs']}, drift {worst['drift']})"
    )


def _worst(classes: list[dict[str, Any]]) -> dict[str, Any]:
    """The class with the largest |drift| (ties: the first, in class order)."""
    return max(classes, key=lambda c: abs(c["drift"] or 0) if c["drift"] is not None else 0)


@transaction.atomic
def reconciliation_alerts_evaluate(*, account_id: int, days: list[date]) -> list[Alert]:
    """Record the alerts the account's rows of `days` call for that have not fired yet,
    and schedule their delivery once committed. Returns the alerts this call created."""
    account = ProviderAccount.objects.get(pk=account_id)
    threshold = alert_threshold()
    rows_by_day: dict[date, list[ReconciliationRow]] = defaultdict(list)
    for row in ReconciliationRow.objects.filter(account_id=account_id, day__in=days).order_by(
        "day", "upstream_model", "api_key_id", "token_class"
    ):
        rows_by_day[row.day].append(row)
    endpoint = OperatorEndpoint.objects.filter(is_active=True).first()
    delivery = Alert.Delivery.PENDING if endpoint is not None else Alert.Delivery.NO_ENDPOINT
    created: list[Alert] = []
    for day, rows in sorted(rows_by_day.items()):
        settled = not any(r.status == Status.PENDING for r in rows)
        grouped: dict[tuple[str, str, str], list[ReconciliationRow]] = defaultdict(list)
        for finding in row_findings(rows, settled=settled, threshold=threshold):
            row = finding.row
            grouped[(row.upstream_model, row.api_key_id, finding.status)].append(row)
        for (model, key, status), found in sorted(grouped.items()):
            classes = [_class_facts(r) for r in found]
            worst = _worst(classes)
            description = _description(account, day, model, key, status, worst)
            alert, was_created = Alert.objects.get_or_create(
                event_id=event_id_of(
                    account_id=account_id, day=day, model=model, api_key_id=key, status=status
                ),
                defaults={
                    "kind": Alert.Kind.RECONCILIATION,
                    "tenant": None,
                    "budget": BUDGET_LABEL,
                    "description": description[:300],
                    "period": day.isoformat(),
                    "threshold": 0,
                    "unit": "tokens",
                    "used": Decimal(0),
                    "limit": Decimal(0),
                    "delivery": delivery,
                    "details": {
                        "account": account.name,
                        "provider": account.provider,
                        "day": day.isoformat(),
                        "model": model,
                        "api_key_id": key,
                        "status": status,
                        "settled": settled,
                        "class": worst["class"],
                        "ours": worst["ours"],
                        "theirs": worst["theirs"],
                        "drift": worst["drift"],
                        "relative_drift": worst["relative_drift"],
                        "classes": classes,
                    },
                },
            )
            if was_created:
                created.append(alert)
    for alert in created:
        if alert.delivery == Alert.Delivery.PENDING:
            transaction.on_commit(partial(alert_deliver_task.delay, alert.pk))
    return created


def reconciliation_rows_changed(account_id: int, days: list[date]) -> None:
    """The handler billing registers with metering.reconcile.hooks (see the module doc)."""
    reconciliation_alerts_evaluate(account_id=account_id, days=days)


@transaction.atomic
def operator_endpoint_set(*, url: str) -> tuple[OperatorEndpoint, str]:
    """Make `url` the operator's endpoint with a new signing secret, returned once (the
    previous endpoint is kept, inactive). Alerts still pending are sent to the new one."""
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ApplicationError("The endpoint must be an http(s) URL.") from None
    if len(url) > OperatorEndpoint._meta.get_field("url").max_length:  # type: ignore[operator]
        raise ApplicationError("The endpoint URL is too long.")
    OperatorEndpoint.objects.select_for_update().filter(is_active=True).update(is_active=False)
    secret = "whsec_" + secrets.token_urlsafe(32)
    return OperatorEndpoint.objects.create(url=url, secret=secret), secret
