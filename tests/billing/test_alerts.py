"""Budget and balance alerts: thresholds per budget kind, once per period, signatures, and
delivery to a real HTTP receiver on loopback."""

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction

from billing.alert_delivery import (
    AlertDeliveryFailed,
    alert_deliver,
    alert_deliver_task,
    alert_payload,
    sign,
    verify,
)
from billing.alerts import (
    DEFAULT_THRESHOLDS,
    alerts_evaluate,
    alerts_evaluate_all,
    budgets_of,
    thresholds_crossed,
    thresholds_of,
)
from billing.balances import balance_account_open, balance_credit
from billing.models import Alert, PlanVersion, WebhookEndpoint
from billing.plans import plan_create, plan_version_create, plan_version_publish
from billing.plans import subscription_create as subscribe
from billing.tasks import alerts_evaluate_task, alerts_sweep
from config.celery import app
from metering.models import ApiKey, ReasoningPolicy, SpendLimit, Tenant
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage

pytestmark = pytest.mark.django_db

NOV = datetime(2026, 11, 1, tzinfo=UTC)
NOV_20 = datetime(2026, 11, 20, 12, tzinfo=UTC)
DEC_10 = datetime(2026, 12, 10, tzinfo=UTC)
SECRET = "whsec_" + "k" * 32


def tenant_and_key() -> tuple[Tenant, ApiKey]:
    key = ApiKeyFactory()
    return key.tenant, key


def spend(key: ApiKey, at: datetime, usd: str) -> None:
    """A call costing `usd` at list price (what spend limits and balances count)."""
    write_usage(key, at, spend_usd=Decimal(usd), output_tokens=1)  # type: ignore[arg-type]


def think(key: ApiKey, at: datetime, tokens: int) -> None:
    write_usage(key, at, reasoning_tokens=tokens, output_tokens=tokens)


def alerts_of(tenant: Tenant, budget: str | None = None) -> list[tuple[str, str, int]]:
    qs = Alert.objects.filter(tenant=tenant)
    if budget:
        qs = qs.filter(budget=budget)
    return sorted(qs.values_list("budget", "period", "threshold"))


def endpoint_for(tenant: Tenant, url: str, **fields: Any) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(tenant=tenant, url=url, secret=SECRET, **fields)


# --- pure arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [
        ("0", "100", []),
        ("49.999999999999999999999999", "100", []),
        ("50", "100", [50]),
        ("79.99", "100", [50]),
        ("80", "100", [50, 80]),
        ("100", "100", [50, 80, 100]),
        ("250", "100", [50, 80, 100]),
        ("1", "0", []),  # a zero budget has no percentage to cross
        ("0.000000000001", "0.000000000002", [50]),
        # 37 significant digits: the default 28-digit context would round these equal
        ("6172839450617283945061728.000000000001", "12345678901234567890123456.000000000002", [50]),
        (
            "6172839450617283945061728.000000000000999999999999",
            "12345678901234567890123456.000000000002",
            [],
        ),
    ],
)
def test_thresholds_crossed_is_exact(used: str, limit: str, expected: list[int]) -> None:
    assert (
        thresholds_crossed(used=Decimal(used), limit=Decimal(limit), thresholds=DEFAULT_THRESHOLDS)
        == expected
    )


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        (None, (50, 80, 100)),
        ([], (50, 80, 100)),
        ([90, 25, 90], (25, 90)),
        (["50", 0, -5, True, 2.5, 120], (120,)),
        ("50,80", (50, 80, 100)),
        ([0, "x"], (50, 80, 100)),
    ],
)
def test_thresholds_of_endpoint(configured: Any, expected: tuple[int, ...]) -> None:
    assert thresholds_of(configured) == expected


# --- budgets -------------------------------------------------------------------------------


def test_monthly_spend_limit_fires_once_per_threshold_and_again_next_month() -> None:
    tenant, key = tenant_and_key()
    limit = SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("100"))
    spend(key, NOV + timedelta(days=2), "49.999999999999999999999999")
    assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []  # just under 50%

    spend(key, NOV + timedelta(days=3), "0.000000000000000000000001")  # exactly 50%
    [alert] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    assert (alert.budget, alert.period, alert.threshold) == (
        f"spend_limit:{limit.pk}",
        "2026-11",
        50,
    )
    assert (alert.unit, alert.used, alert.limit) == ("USD", Decimal("50"), Decimal("100"))
    assert alert.delivery == Alert.Delivery.NO_ENDPOINT  # recorded although nobody listens
    assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []  # once per period

    spend(key, NOV + timedelta(days=4), "35")
    assert [a.threshold for a in alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)] == [80]
    assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []

    # December is a new period: November's spend no longer counts, and 50% fires again
    with time_machine.travel(DEC_10, tick=False):
        assert alerts_evaluate(tenant_id=tenant.pk) == []
        spend(key, DEC_10 - timedelta(days=1), "60")
        assert [(a.period, a.threshold) for a in alerts_evaluate(tenant_id=tenant.pk)] == [
            ("2026-12", 50)
        ]
    assert alerts_of(tenant) == [
        (f"spend_limit:{limit.pk}", "2026-11", 50),
        (f"spend_limit:{limit.pk}", "2026-11", 80),
        (f"spend_limit:{limit.pk}", "2026-12", 50),
    ]


def test_total_spend_limit_of_one_key_counts_only_that_key_and_never_rearms() -> None:
    tenant, key = tenant_and_key()
    other_key = ApiKeyFactory(tenant=tenant)
    limit = SpendLimit.objects.create(
        tenant=tenant, api_key=key, window="total", amount_usd=Decimal("10")
    )
    spend(key, NOV - timedelta(days=40), "4")
    spend(key, NOV + timedelta(days=1), "4.5")
    spend(other_key, NOV + timedelta(days=1), "1000")  # another key's spend is not this budget's
    created = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    assert [(a.period, a.threshold, a.used) for a in created] == [
        ("total", 50, Decimal("8.5")),
        ("total", 80, Decimal("8.5")),
    ]
    assert key.prefix in created[0].description

    spend(key, DEC_10, "1.5")
    assert [a.threshold for a in alerts_evaluate(tenant_id=tenant.pk, at=DEC_10)] == [100]
    assert alerts_evaluate(tenant_id=tenant.pk, at=DEC_10 + timedelta(days=40)) == []
    assert {b for b, _, _ in alerts_of(tenant)} == {f"spend_limit:{limit.pk}"}


def test_balance_alerts_rearm_when_the_balance_is_topped_up() -> None:
    tenant, key = tenant_and_key()
    balance_credit(
        tenant_id=tenant.pk,
        kind="top_up",
        amount=Decimal("100.00"),
        idempotency_key="t1",
        effective_at=NOV - timedelta(days=1),
    )
    spend(key, NOV + timedelta(days=1), "50")
    [alert] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    assert (alert.budget, alert.threshold, alert.unit) == ("balance", 50, "USD")
    assert (alert.used, alert.limit) == (Decimal("50"), Decimal("100"))
    epoch, available = alert.period.split("/")
    assert epoch == "start" and Decimal(available) == Decimal("100")
    assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []

    balance_credit(
        tenant_id=tenant.pk,
        kind="top_up",
        amount=Decimal("100.00"),
        idempotency_key="t2",
        effective_at=NOV_20,
    )
    assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []  # 50 of 200: 25%
    spend(key, NOV + timedelta(days=2), "50")
    [again] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)  # 100 of 200, a new period
    assert again.threshold == 50 and again.period != alert.period
    assert Decimal(again.period.split("/")[1]) == Decimal("200")


def test_an_empty_balance_is_no_budget() -> None:
    tenant, key = tenant_and_key()
    balance_account_open(tenant_id=tenant.pk)
    spend(key, NOV + timedelta(days=1), "5")
    assert budgets_of(tenant.pk, NOV_20) == []
    assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []


def plan_with_reasoning_budget(tokens: int | None) -> PlanVersion:
    plan = plan_create(code=f"p-{uuid.uuid4().hex[:8]}", name="Reasoning")
    version = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=NOV - timedelta(days=60),
        components=[
            {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal("5")}
        ],
    )
    PlanVersion.objects.filter(pk=version.pk).update(monthly_reasoning_tokens=tokens)
    return plan_version_publish(version=version)


def test_plan_reasoning_budget_counts_the_whole_tenant_per_month() -> None:
    tenant, key = tenant_and_key()
    subscribe(
        tenant=tenant,
        plan_version=plan_with_reasoning_budget(1000),
        starts_at=NOV - timedelta(days=30),
    )
    think(key, NOV - timedelta(hours=1), 5000)  # October: not this month's budget
    think(key, NOV + timedelta(days=1), 300)
    think(ApiKeyFactory(tenant=tenant), NOV + timedelta(days=2), 499)
    [half] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)  # 799 of 1000: not yet 80%
    assert (half.budget, half.period, half.threshold, half.unit) == (
        "reasoning_budget:plan",
        "2026-11",
        50,
        "reasoning_tokens",
    )
    assert (half.used, half.limit) == (Decimal(799), Decimal(1000))

    think(key, NOV + timedelta(days=3), 1)  # 800: exactly 80%
    [eighty] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    assert (eighty.threshold, eighty.used) == (80, Decimal(800))


def test_a_plan_without_reasoning_budget_has_none() -> None:
    tenant, key = tenant_and_key()
    subscribe(
        tenant=tenant,
        plan_version=plan_with_reasoning_budget(None),
        starts_at=NOV - timedelta(days=30),
    )
    think(key, NOV + timedelta(days=1), 10_000)
    assert budgets_of(tenant.pk, NOV_20) == []


def test_key_reasoning_budget_and_custom_thresholds() -> None:
    tenant, key = tenant_and_key()
    sibling = ApiKeyFactory(tenant=tenant)
    ReasoningPolicy.objects.create(api_key=key, monthly_reasoning_tokens=200)
    ReasoningPolicy.objects.create(api_key=sibling, monthly_reasoning_tokens=None)  # no budget
    endpoint_for(tenant, "http://127.0.0.1:9/hook", thresholds=[25, 75], is_active=False)
    think(key, NOV + timedelta(days=1), 100)
    think(sibling, NOV + timedelta(days=1), 10_000)
    created = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    # a switched-off endpoint's thresholds do not apply: the defaults do (as in the proxy)
    assert [(a.budget, a.threshold) for a in created] == [(f"reasoning_budget:key:{key.pk}", 50)]
    assert created[0].used == Decimal(100) and created[0].limit == Decimal(200)
    assert created[0].delivery == Alert.Delivery.NO_ENDPOINT  # the endpoint is switched off
    WebhookEndpoint.objects.filter(tenant=tenant).update(is_active=True)
    created = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    assert [(a.threshold, a.delivery) for a in created] == [(25, Alert.Delivery.PENDING)]


def test_evaluate_all_covers_every_tenant_with_a_budget() -> None:
    with_limit, key_a = tenant_and_key()
    SpendLimit.objects.create(tenant=with_limit, window="month", amount_usd=Decimal("10"))
    spend(key_a, NOV + timedelta(days=1), "10")
    with_policy, key_b = tenant_and_key()
    ReasoningPolicy.objects.create(api_key=key_b, monthly_reasoning_tokens=100)
    think(key_b, NOV + timedelta(days=1), 60)
    _, key_c = tenant_and_key()  # no budget: never evaluated
    spend(key_c, NOV + timedelta(days=1), "1000")

    assert alerts_evaluate_all(NOV_20) == 4
    assert len(alerts_of(with_limit)) == 3 and len(alerts_of(with_policy)) == 1
    assert Alert.objects.count() == 4
    assert alerts_sweep.delay(NOV_20.isoformat()).get() == 0  # the beat task: nothing new


def test_tasks_have_the_names_the_proxy_and_beat_send() -> None:
    assert {"billing.alerts_evaluate", "billing.alerts_sweep", "billing.alert_deliver"} <= set(
        app.tasks
    )
    tenant, key = tenant_and_key()
    SpendLimit.objects.create(tenant=tenant, window="total", amount_usd=Decimal("2"))
    spend(key, NOV, "1")
    assert alerts_evaluate_task.delay(str(tenant.pk), NOV_20.isoformat()).get() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_evaluations_record_each_alert_once() -> None:
    tenant, key = tenant_and_key()
    SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("10"))
    spend(key, NOV + timedelta(days=1), "10")
    results: dict[str, Any] = {}

    def second() -> None:
        try:
            results["second"] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            results["second"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=second)
    with transaction.atomic():
        results["first"] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
        thread.start()
        # hold our uncommitted alerts until the second evaluation waits on their unique keys
        deadline = time.monotonic() + 10
        waiting = 0
        while not waiting and time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                )
                waiting = cursor.fetchone()[0]
            time.sleep(0.02)
        assert waiting, "the second evaluation never contended"
    thread.join(timeout=10)
    assert [a.threshold for a in results["first"]] == [50, 80, 100]
    assert results["second"] == []
    assert Alert.objects.filter(tenant=tenant).count() == 3


# --- signatures -----------------------------------------------------------------------------


def test_sign_and_verify_round_trip_and_rejections() -> None:
    body = b'{"id":"evt","data":{"used":"50"}}'
    now = 1_790_000_000
    header = sign(SECRET, now, body)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, header, body, now=now)
    assert verify(SECRET, header, body, now=now + 300)  # within tolerance
    assert not verify(SECRET, header, body, now=now + 301)  # stale (a replay)
    assert not verify(SECRET, header, body, now=now - 301)
    assert not verify(SECRET, header, body.replace(b"50", b"51"), now=now)  # tampered body
    assert not verify("whsec_other", header, body, now=now)
    forged = f"t={now + 1},{header.split(',')[1]}"  # the timestamp is signed too
    assert not verify(SECRET, forged, body, now=now)
    assert verify(SECRET, f"{header},v1=deadbeef", body, now=now)  # any v1 may match
    for malformed in ["", "garbage", f"t=abc,{header.split(',')[1]}", f"t={now}", "v1=ab"]:
        assert not verify(SECRET, malformed, body, now=now)
    assert not verify(SECRET, f"t={now},v1=é", body, now=now)  # non-ASCII is no crash


# --- delivery to a real receiver --------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that verifies signatures and counts deliveries."""

    def __init__(self) -> None:
        self.statuses: list[int] = []  # answers to give, in order; then 200
        self.error_body = b"internal error"
        self.requests = 0
        self.bad_signatures = 0
        self.accepted: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests += 1
                    if not verify(SECRET, self.headers.get("Reckon-Signature", ""), body):
                        receiver.bad_signatures += 1
                        status = 400
                    else:
                        status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if 200 <= status < 300:
                        receiver.accepted.append(json.loads(body))
                        receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else receiver.error_body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/reckon"

    def delivered_ids(self) -> list[str]:
        return [event["id"] for event in self.accepted]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def worker_like_retries() -> Iterator[None]:
    """Eager tasks re-run on retry as a worker would, instead of raising Retry at once."""
    previous = app.conf.task_eager_propagates
    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = previous


def crossed_alert(tenant: Tenant, key: ApiKey) -> Alert:
    SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("100"))
    spend(key, NOV + timedelta(days=1), "50")
    [alert] = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
    return alert


def test_each_alert_is_delivered_exactly_once_signed(receiver: Receiver) -> None:
    tenant, key = tenant_and_key()
    endpoint_for(tenant, receiver.url)
    alert = crossed_alert(tenant, key)
    assert alert.delivery == Alert.Delivery.PENDING

    assert alert_deliver(alert_id=alert.pk) == "delivered"
    assert alert_deliver(alert_id=alert.pk) == "delivered"  # a duplicate sends nothing
    assert alert_deliver_task.delay(alert.pk).get() == "delivered"  # nor does the task

    assert receiver.requests == 1 and receiver.bad_signatures == 0
    alert.refresh_from_db()
    assert (alert.delivery, alert.attempts, alert.last_error) == ("delivered", 1, "")
    assert alert.delivered_at is not None
    [event] = receiver.accepted
    assert event == alert_payload(alert)
    assert event["type"] == "budget.threshold_crossed" and event["id"] == str(alert.event_id)
    assert event["data"]["used"] == "50.000000000000"
    assert event["data"]["limit"] == "100.000000000000"
    assert event["data"]["tenant_id"] == str(tenant.pk)
    assert receiver.headers[0]["reckon-event-id"] == str(alert.event_id)
    assert receiver.headers[0]["content-type"] == "application/json"


def test_evaluation_schedules_delivery_on_commit_once_per_alert(
    receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    tenant, key = tenant_and_key()
    endpoint_for(tenant, receiver.url)
    SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("100"))
    spend(key, NOV + timedelta(days=1), "100")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        created = alerts_evaluate(tenant_id=tenant.pk, at=NOV_20)
        assert receiver.requests == 0  # nothing is sent before the alerts are committed
    assert len(callbacks) == 3
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert alerts_evaluate(tenant_id=tenant.pk, at=NOV_20) == []
    assert callbacks == []
    for alert in created:  # a task delivered twice (e.g. redelivered by the broker)
        alert_deliver_task.delay(alert.pk)

    assert sorted(receiver.delivered_ids()) == sorted(str(a.event_id) for a in created)
    assert receiver.requests == 3
    assert sorted(e["data"]["threshold"] for e in receiver.accepted) == [50, 80, 100]
    assert set(Alert.objects.values_list("delivery", flat=True)) == {"delivered"}


def test_a_failed_delivery_is_retried_and_delivered_once(
    receiver: Receiver, worker_like_retries: None
) -> None:
    tenant, key = tenant_and_key()
    endpoint_for(tenant, receiver.url)
    alert = crossed_alert(tenant, key)
    receiver.statuses = [500]

    result = alert_deliver_task.delay(alert.pk)

    assert result.get() == "delivered"
    assert receiver.requests == 2 and receiver.delivered_ids() == [str(alert.event_id)]
    alert.refresh_from_db()
    assert (alert.delivery, alert.attempts, alert.last_error) == ("delivered", 2, "")


def test_retries_run_out_and_the_alert_is_marked_failed(
    receiver: Receiver, worker_like_retries: None
) -> None:
    tenant, key = tenant_and_key()
    endpoint_for(tenant, receiver.url)
    alert = crossed_alert(tenant, key)
    receiver.statuses = [503] * 20
    receiver.error_body = f"upstream said {SECRET} ".encode() + b"y" * 5000

    result = alert_deliver_task.delay(alert.pk)

    assert result.failed() and isinstance(result.result, AlertDeliveryFailed)
    assert receiver.requests == 9 and receiver.accepted == []  # 1 try + max_retries (8)
    alert.refresh_from_db()
    assert (alert.delivery, alert.attempts) == ("failed", 9)
    assert alert.last_error.startswith("The endpoint answered HTTP 503: upstream said")
    assert SECRET not in alert.last_error  # the secret never lands in the error
    assert len(alert.last_error) <= len("The endpoint answered HTTP 503: ") + 200
    with pytest.raises(AlertDeliveryFailed):  # an operator may redeliver a failed alert
        alert_deliver(alert_id=alert.pk)
    assert receiver.requests == 10
    assert Alert.objects.get(pk=alert.pk).delivery == "failed"


def test_one_failed_attempt_is_recorded_then_raised(receiver: Receiver) -> None:
    tenant, key = tenant_and_key()
    endpoint_for(tenant, receiver.url)
    alert = crossed_alert(tenant, key)
    receiver.statuses = [500]
    with pytest.raises(AlertDeliveryFailed, match="HTTP 500"):
        alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()  # the attempt was committed before the error was raised
    assert (alert.delivery, alert.attempts) == ("pending", 1)
    assert alert.last_error == "The endpoint answered HTTP 500: internal error"
    assert alert_deliver(alert_id=alert.pk) == "delivered"
    alert.refresh_from_db()
    assert (alert.attempts, alert.last_error) == (2, "")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "file:///etc/passwd", "http:///nohost"])
def test_only_http_urls_are_called(url: str) -> None:
    tenant, key = tenant_and_key()
    endpoint_for(tenant, url)
    alert = crossed_alert(tenant, key)
    with pytest.raises(AlertDeliveryFailed, match="must be an http"):
        alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert (alert.delivery, alert.attempts) == ("pending", 1)


def test_an_unreachable_endpoint_fails_the_attempt() -> None:
    tenant, key = tenant_and_key()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint_for(tenant, f"http://127.0.0.1:{port}/hook")
    alert = crossed_alert(tenant, key)
    with pytest.raises(AlertDeliveryFailed, match="could not be reached"):
        alert_deliver(alert_id=alert.pk)
    assert Alert.objects.get(pk=alert.pk).attempts == 1


def test_without_an_active_endpoint_nothing_is_sent(
    receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    tenant, key = tenant_and_key()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        alert = crossed_alert(tenant, key)
    assert callbacks == []  # no delivery is even scheduled
    assert alert.delivery == Alert.Delivery.NO_ENDPOINT
    assert alert_deliver(alert_id=alert.pk) == "no_endpoint"
    assert receiver.requests == 0

    # an endpoint switched off after the alert fired: marked, not sent
    other, other_key = tenant_and_key()
    endpoint = endpoint_for(other, receiver.url)
    pending = crossed_alert(other, other_key)
    endpoint.is_active = False
    endpoint.save()
    assert alert_deliver_task.delay(pending.pk).get() == "no_endpoint"
    assert receiver.requests == 0
    pending.refresh_from_db()
    assert (pending.delivery, pending.attempts) == ("no_endpoint", 0)
