"""Reconciliation alerts: which rows fire, once per (account, day, model, key, status),
delivered signed to the operator's endpoint, never shown to a tenant."""

import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client
from rest_framework.test import APIClient

from billing.alert_delivery import AlertDeliveryFailed, alert_deliver, alert_payload
from billing.models import Alert, OperatorEndpoint, WebhookEndpoint
from billing.reconciliation_alerts import event_id_of, reconciliation_alerts_evaluate
from metering.models import ProviderAccount, ReconciliationRow
from metering.reconcile.hooks import rows_changed
from metering.services import api_key_create
from tests.billing.test_alerts import SECRET, Receiver, receiver  # noqa: F401 - fixture
from tests.factories import TenantFactory
from tests.staff import staff_client, staff_user

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 3)
Status = ReconciliationRow.Status


@pytest.fixture
def account() -> ProviderAccount:
    return ProviderAccount.objects.create(
        name="openai-main", provider="openai", admin_key_env="OPENAI_ADMIN_KEY"
    )


def row(
    account: ProviderAccount,
    *,
    ours: int,
    theirs: int | None,
    status: str,
    token_class: str = "output",  # noqa: S107 - a token class, not a secret
    day: date = DAY,
    model: str = "o4-mini",
    key: str = "",
) -> ReconciliationRow:
    drift = None if theirs is None else theirs - ours
    relative = None if not theirs or drift is None else Decimal(drift) / Decimal(theirs)
    return ReconciliationRow.objects.create(
        account=account,
        day=day,
        upstream_model=model,
        api_key_id=key,
        token_class=token_class,
        ours=ours,
        theirs=theirs,
        drift=drift,
        relative_drift=None if relative is None else relative.quantize(Decimal("1e-12")),
        status=status,
        computed_at=datetime(2026, 11, 7, tzinfo=UTC),
    )


def recon_alerts() -> list[Alert]:
    return list(Alert.objects.filter(kind=Alert.Kind.RECONCILIATION).order_by("id"))


@pytest.fixture
def operator_endpoint(receiver: Receiver) -> Iterator[OperatorEndpoint]:  # noqa: F811
    yield OperatorEndpoint.objects.create(url=receiver.url, secret=SECRET)


# --- which rows fire -----------------------------------------------------------------------


def test_a_settled_drift_fires_once_across_repeated_runs(account: ProviderAccount) -> None:
    row(account, ours=1000, theirs=1100, status=Status.DRIFT)  # 100/1100 = 9.1 %
    row(account, ours=500, theirs=500, status=Status.MATCHED, token_class="input_uncached")
    for _ in range(3):  # every hourly import re-reconciles the settling days
        rows_changed(account.pk, [DAY])  # through the handler billing registered
    [alert] = recon_alerts()
    assert alert.tenant_id is None and alert.period == "2026-11-03"
    assert alert.delivery == Alert.Delivery.NO_ENDPOINT  # recorded without an endpoint
    assert alert.event_id == event_id_of(
        account_id=account.pk, day=DAY, model="o4-mini", api_key_id="", status="drift"
    )
    details = alert.details
    assert (details["account"], details["model"], details["status"]) == (
        "openai-main",
        "o4-mini",
        "drift",
    )
    assert (details["class"], details["ours"], details["theirs"], details["drift"]) == (
        "output",
        1000,
        1100,
        100,
    )
    assert details["relative_drift"] == "0.090909090909"
    assert [c["class"] for c in details["classes"]] == ["output"]  # matched is not in it


def test_drift_below_the_alert_threshold_does_not_fire(account: ProviderAccount) -> None:
    row(account, ours=1000, theirs=1005, status=Status.DRIFT)  # 0.5 %: drift, not alerting
    row(account, ours=7, theirs=7, status=Status.MATCHED, token_class="requests")
    assert reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY]) == []
    assert recon_alerts() == []


def test_the_threshold_is_a_setting(account: ProviderAccount, settings: Any) -> None:
    settings.RECKON_RECON_ALERT_RELATIVE = "0.004"
    row(account, ours=1000, theirs=1005, status=Status.DRIFT)
    assert len(reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])) == 1


def test_exactly_at_the_threshold_fires(account: ProviderAccount) -> None:
    row(account, ours=99, theirs=100, status=Status.DRIFT)  # |-1/100| = 0.01 exactly
    assert len(reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])) == 1


def test_a_report_short_of_our_count_fires_like_one_over_it(account: ProviderAccount) -> None:
    """The report drops reasoning: theirs 1000 against ours 3000 (relative -2)."""
    row(account, ours=3000, theirs=1000, status=Status.DRIFT)
    row(account, ours=1000, theirs=1008, status=Status.DRIFT, token_class="input_uncached")
    [alert] = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    assert (alert.details["class"], alert.details["drift"]) == ("output", -2000)
    assert alert.details["relative_drift"] == "-2.000000000000"
    assert [c["class"] for c in alert.details["classes"]] == ["output"]  # 0.8 %: below


def test_a_negative_drift_below_the_threshold_does_not_fire(account: ProviderAccount) -> None:
    row(account, ours=1009, theirs=1000, status=Status.DRIFT)  # -0.9 %
    assert reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY]) == []


def test_a_drift_against_a_report_of_zero_fires(account: ProviderAccount) -> None:
    """The report says 0 cache writes while we forwarded 2M: relative drift is null
    (unbounded), the row still alerts."""
    account.provider = "anthropic"
    account.save()
    row(account, ours=2_000_000, theirs=0, status=Status.DRIFT, token_class="cache_write")
    row(account, ours=50, theirs=50, status=Status.MATCHED)
    [alert] = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    assert alert.details["status"] == "drift"
    assert (alert.details["class"], alert.details["theirs"], alert.details["drift"]) == (
        "cache_write",
        0,
        -2_000_000,
    )
    assert alert.details["relative_drift"] is None


def test_a_pending_day_fires_no_drift_alert_but_missing_in_ledger_at_once(
    account: ProviderAccount,
) -> None:
    row(account, ours=1000, theirs=2000, status=Status.PENDING)  # large, but still settling
    # reconciliation marks a group we never forwarded at once, even on a pending day
    row(account, ours=0, theirs=4242, status=Status.MISSING_IN_LEDGER, key="key_leaked")
    rows_changed(account.pk, [DAY])
    [alert] = recon_alerts()
    assert alert.details["status"] == "missing_in_ledger"
    assert alert.details["api_key_id"] == "key_leaked" and alert.details["settled"] is False
    assert alert.details["theirs"] == 4242

    # the day settles: the leaked key's alert is not sent again, the drift alerts
    ReconciliationRow.objects.filter(api_key_id="").update(status=Status.DRIFT)
    rows_changed(account.pk, [DAY])
    rows_changed(account.pk, [DAY])
    assert sorted(a.details["status"] for a in recon_alerts()) == ["drift", "missing_in_ledger"]


def test_missing_in_report_on_a_settled_day_fires(account: ProviderAccount) -> None:
    row(account, ours=300, theirs=0, status=Status.MISSING_IN_REPORT)
    row(account, ours=300, theirs=None, status=Status.NOT_COMPARED, token_class="requests")
    [alert] = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    assert alert.details["status"] == "missing_in_report"


def test_one_alert_per_model_key_and_status_holding_its_classes(
    account: ProviderAccount,
) -> None:
    row(account, ours=100, theirs=200, status=Status.DRIFT, token_class="output")
    row(account, ours=50, theirs=60, status=Status.DRIFT, token_class="input_uncached")
    row(account, ours=50, theirs=60, status=Status.DRIFT, model="gpt-5")
    other_day = date(2026, 11, 4)
    row(account, ours=50, theirs=60, status=Status.DRIFT, day=other_day)
    created = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY, other_day])
    assert sorted((a.period, a.details["model"]) for a in created) == [
        ("2026-11-03", "gpt-5"),
        ("2026-11-03", "o4-mini"),
        ("2026-11-04", "o4-mini"),
    ]
    [both] = [a for a in created if a.period == "2026-11-03" and a.details["model"] == "o4-mini"]
    assert sorted(c["class"] for c in both.details["classes"]) == ["input_uncached", "output"]
    assert both.details["class"] == "output"  # the worst one leads
    # a day not named is not evaluated
    assert reconciliation_alerts_evaluate(account_id=account.pk, days=[date(2026, 11, 9)]) == []


# --- delivery --------------------------------------------------------------------------------


def test_delivered_signed_to_the_operator_endpoint_only(
    account: ProviderAccount,
    receiver: Receiver,  # noqa: F811
    operator_endpoint: OperatorEndpoint,
    django_capture_on_commit_callbacks: Any,
) -> None:
    tenant = TenantFactory()
    # a tenant's own endpoint on the same receiver: it must never get the operator's alert
    WebhookEndpoint.objects.create(tenant=tenant, url=receiver.url + "/tenant", secret=SECRET)
    row(account, ours=0, theirs=900, status=Status.MISSING_IN_LEDGER, key="key_x")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        rows_changed(account.pk, [DAY])
        assert receiver.requests == 0  # nothing is sent before the alert commits
    assert len(callbacks) == 1
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        rows_changed(account.pk, [DAY])
    assert callbacks == []
    [alert] = recon_alerts()
    assert alert_deliver(alert_id=alert.pk) == "delivered"  # a duplicate sends nothing

    assert receiver.requests == 1 and receiver.bad_signatures == 0
    assert receiver.headers[0]["reckon-event-id"] == str(alert.event_id)
    [event] = receiver.accepted
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.DELIVERED
    assert event == alert_payload(alert)
    assert event["type"] == "reconciliation.discrepancy"
    data = event["data"]
    assert {k: data[k] for k in ("account", "day", "model", "api_key_id", "status")} == {
        "account": "openai-main",
        "day": "2026-11-03",
        "model": "o4-mini",
        "api_key_id": "key_x",
        "status": "missing_in_ledger",
    }
    assert (data["class"], data["ours"], data["theirs"], data["drift"]) == ("output", 0, 900, 900)
    text = json.dumps(event)
    assert "http" not in text and "127.0.0.1" not in text and SECRET not in text
    assert "OPENAI_ADMIN_KEY" not in text  # not even the name of the credential's variable
    assert "tenant_id" not in data


def test_at_most_one_active_operator_endpoint(receiver: Receiver) -> None:  # noqa: F811
    OperatorEndpoint.objects.create(url=receiver.url, secret=SECRET)
    OperatorEndpoint.objects.create(url=receiver.url, secret=SECRET, is_active=False)
    with pytest.raises(IntegrityError), transaction.atomic():
        OperatorEndpoint.objects.create(url=receiver.url, secret=SECRET)


# --- never a tenant's --------------------------------------------------------------------------


def test_tenants_never_see_operator_alerts(account: ProviderAccount) -> None:
    tenant = TenantFactory()
    row(account, ours=0, theirs=10, status=Status.MISSING_IN_LEDGER)
    [alert] = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=tenant).raw_key}")
    response = client.get("/api/v1/usage/alerts")
    assert response.status_code == 200 and response.json()["results"] == []
    staff = staff_client("ops", "operator")
    as_staff = staff.get("/api/v1/usage/alerts", {"tenant": str(tenant.pk)})
    assert as_staff.status_code == 200 and as_staff.json()["results"] == []
    assert str(alert.event_id) not in response.content.decode() + as_staff.content.decode()


def test_a_reconciliation_alert_cannot_belong_to_a_tenant(account: ProviderAccount) -> None:
    row(account, ours=0, theirs=10, status=Status.MISSING_IN_LEDGER)
    [alert] = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.filter(pk=alert.pk).update(tenant=TenantFactory())


# --- admin ------------------------------------------------------------------------------------


def test_admin_lists_reconciliation_alerts_by_kind_with_the_alert_permission(
    account: ProviderAccount,
) -> None:
    row(account, ours=0, theirs=10, status=Status.MISSING_IN_LEDGER, model="o3-leaked")
    reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    allowed = Client()
    allowed.force_login(staff_user("ops", "operator"))
    page = allowed.get("/admin/billing/alert/", {"kind": "reconciliation"})
    assert page.status_code == 200 and b"o3-leaked" in page.content
    assert allowed.get("/admin/billing/alert/", {"kind": "budget"}).content.count(b"o3-leaked") == 0
    denied = Client()
    denied.force_login(staff_user("nobody"))
    assert denied.get("/admin/billing/alert/").status_code == 403
    assert denied.get("/admin/billing/operatorendpoint/").status_code == 403
    assert allowed.get("/admin/billing/operatorendpoint/").status_code == 200


def test_operator_endpoint_set_rotates_and_signs_with_the_new_secret(
    account: ProviderAccount,
    receiver: Receiver,  # noqa: F811
) -> None:
    out = io.StringIO()
    call_command("operator_endpoint_set", receiver.url + "/old", stdout=out)
    first = out.getvalue().strip()
    call_command("operator_endpoint_set", receiver.url, stdout=(out := io.StringIO()))
    secret = out.getvalue().strip()
    assert secret.startswith("whsec_") and secret != first
    assert OperatorEndpoint.objects.filter(is_active=True).get().url == receiver.url
    assert OperatorEndpoint.objects.count() == 2  # the old one kept, inactive
    with pytest.raises(CommandError, match="http"):
        call_command("operator_endpoint_set", "ftp://example.com/x")
    row(account, ours=0, theirs=9, status=Status.MISSING_IN_LEDGER)
    [alert] = reconciliation_alerts_evaluate(account_id=account.pk, days=[DAY])
    # the receiver checks the fixture's secret: signed with the new one, it is refused
    with pytest.raises(AlertDeliveryFailed, match="400"):
        alert_deliver(alert_id=alert.pk)
    assert receiver.bad_signatures == 1 and receiver.accepted == []


OLD_SECRET = "whsec_" + "o" * 40


def test_admin_never_renders_an_endpoint_secret(receiver: Receiver) -> None:  # noqa: F811
    """Neither the operator's endpoint nor a tenant's shows its secret on any admin page;
    the operator's is made and rotated by the command only, a tenant's is write-only."""
    operator = OperatorEndpoint.objects.create(url=receiver.url, secret=OLD_SECRET)
    tenant = TenantFactory()
    webhook = WebhookEndpoint.objects.create(tenant=tenant, url=receiver.url, secret=OLD_SECRET)
    ops = Client()
    ops.force_login(staff_user("ops", "operator"))
    pages = [
        "/admin/billing/operatorendpoint/",
        f"/admin/billing/operatorendpoint/{operator.pk}/change/",
        "/admin/billing/webhookendpoint/",
        f"/admin/billing/webhookendpoint/{webhook.pk}/change/",
        "/admin/billing/webhookendpoint/add/",
    ]
    for page in pages:
        response = ops.get(page)
        assert response.status_code == 200, page
        assert OLD_SECRET.encode() not in response.content, page
        assert b"o" * 12 not in response.content, page
    assert b"whse\xe2\x80\xa6" in ops.get(pages[1]).content  # the masked prefix only
    assert ops.get("/admin/billing/operatorendpoint/add/").status_code == 403

    # a tenant's endpoint: blank keeps the secret, a short one is refused, a long one rotates
    change = pages[3]
    form = {"tenant": tenant.pk, "url": receiver.url, "thresholds": "[50]", "is_active": "on"}
    assert ops.post(change, {**form, "secret": ""}).status_code == 302
    webhook.refresh_from_db()
    assert webhook.secret == OLD_SECRET and webhook.thresholds == [50]
    refused = ops.post(change, {**form, "secret": "short"})
    assert refused.status_code == 200 and b"at least 32 characters" in refused.content
    assert b'value="short"' not in refused.content  # not echoed back either
    assert ops.post(change, {**form, "secret": "n" * 40}).status_code == 302
    webhook.refresh_from_db()
    assert webhook.secret == "n" * 40
    # a new endpoint needs one
    other = TenantFactory()
    added = ops.post(pages[4], {**form, "tenant": other.pk, "secret": ""})
    assert added.status_code == 200 and b"needs a secret" in added.content
    assert not WebhookEndpoint.objects.filter(tenant=other).exists()


def test_an_endpoint_typed_without_a_scheme_is_taken_as_https() -> None:
    """config.forms: Django 6.0's rule, taken now (5.2 would assume http and warn)."""
    tenant = TenantFactory()
    ops = Client()
    ops.force_login(staff_user("ops", "operator"))
    form = {
        "tenant": tenant.pk,
        "url": "hooks.example.com/reckon",
        "secret": "s" * 40,
        "thresholds": "[80]",
        "is_active": "on",
    }
    answer = ops.post("/admin/billing/webhookendpoint/add/", form)
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    assert WebhookEndpoint.objects.get(tenant=tenant).url == "https://hooks.example.com/reckon"
