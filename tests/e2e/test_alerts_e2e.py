"""Budget alerts end to end: calls through the real server cross 50 % and 80 % of a spend
limit, the proxy's hot path asks billing to evaluate (a Celery task through the real
broker), a real worker records the alerts and delivers signed webhooks to a local
receiver, once each, and the usage API lists them as delivered."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from django.conf import settings
from django.db.models import Sum

from billing.alert_delivery import verify
from billing.alerts import alerts_evaluate_all
from billing.models import Alert, WebhookEndpoint
from metering.models import SpendLimit, UsageRecord
from tests.e2e.conftest import E2ETenant, http
from tests.e2e.test_celery_worker import wait_for, worker  # noqa: F401 - the worker fixture
from tests.e2e.test_spend_control import PROMPT, priced

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        settings.CELERY_BROKER_URL.startswith("memory"),
        reason="needs a real broker: run the suite with CELERY_BROKER_URL (make test does)",
    ),
]

SECRET = "whsec_e2e_" + "k" * 32
CACHE_S = 0.6  # the server's caller cache lives 0.5 s in tests
MAX_TOKENS = 200
BODY = {"model": "reasoner", "messages": PROMPT, "reasoning_effort": "high"}


@dataclass
class Delivery:
    event_id: str
    header_event_id: str
    signature_valid: bool
    payload: dict


@dataclass
class Receiver:
    """A tenant's webhook endpoint: checks each delivery's signature, answers 2xx."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            valid = verify(SECRET, self.headers.get("Reckon-Signature", ""), body)
            payload = json.loads(body)
            with state.lock:
                state.deliveries.append(
                    Delivery(payload["id"], self.headers.get("Reckon-Event-Id", ""), valid, payload)
                )
            self.send_response(200 if valid else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/reckon"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def spent(e2e: E2ETenant, calls: int) -> Decimal:
    """The tenant's spend once all `calls` are recorded (the ledger commits after the
    response)."""
    records = UsageRecord.objects.filter(tenant=e2e.tenant)
    wait_for(lambda: records.count() == calls, timeout=30)
    return records.aggregate(s=Sum("spend_usd"))["s"]


def test_thresholds_crossed_by_proxied_calls_are_delivered_once_each(  # type: ignore[no-untyped-def]
    worker,  # noqa: F811 - the fixture imported above
    receiver: Receiver,
    e2e: E2ETenant,
) -> None:
    priced(e2e)
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)

    def call() -> None:
        client.chat.completions.create(**BODY, max_completion_tokens=MAX_TOKENS)  # type: ignore[call-overload]

    # what one call costs (the simulator is deterministic: the same body, the same usage)
    call()
    calls = 1
    per_call = spent(e2e, calls)
    assert per_call > 0
    # a limit of ten calls: the first already used 10 %, each further call adds 10 %
    limit = per_call * 10
    SpendLimit.objects.create(tenant=e2e.tenant, window="total", amount_usd=limit)
    WebhookEndpoint.objects.create(tenant=e2e.tenant, url=receiver.url, secret=SECRET)
    time.sleep(CACHE_S)

    used = per_call
    while used * 100 < 80 * limit:
        call()
        calls += 1
        used = spent(e2e, calls)
        assert calls < 20, "spend never reached 80 % of the limit"
    assert 80 * limit <= used * 100 < 100 * limit  # past 50 % and 80 %, short of 100 %

    # the proxy's triggers reach the worker, which records and delivers both alerts
    wait_for(lambda: {d.payload["data"]["threshold"] for d in receiver.received()} == {50, 80})
    alerts = Alert.objects.filter(tenant=e2e.tenant)
    wait_for(lambda: alerts.filter(delivery="delivered").count() == 2, timeout=30)

    # a sweep finds nothing new, and nothing is sent again
    assert alerts_evaluate_all() == 0
    time.sleep(3)
    deliveries = receiver.received()
    assert sorted(d.payload["data"]["threshold"] for d in deliveries) == [50, 80]
    assert len({d.event_id for d in deliveries}) == 2
    for delivery in deliveries:
        assert delivery.signature_valid
        assert delivery.header_event_id == delivery.event_id
        data = delivery.payload["data"]
        assert delivery.payload["type"] == "budget.threshold_crossed"
        assert data["tenant_id"] == str(e2e.tenant.pk) and data["period"] == "total"
        assert data["unit"] == "USD" and Decimal(data["limit"]) == limit
        assert Decimal(data["used"]) * 100 >= data["threshold"] * limit
    assert alerts.count() == 2

    # the tenant's usage API lists both, delivered, with the webhook's event ids
    status, _, listed = http(
        "GET",
        e2e.reckon_url + "/api/v1/usage/alerts",
        headers={"Authorization": f"Bearer {e2e.raw_key}"},
    )
    assert status == 200
    results = listed["results"]  # type: ignore[index]
    assert sorted(r["threshold"] for r in results) == [50, 80]
    assert {r["delivery"] for r in results} == {"delivered"}
    assert {r["event_id"] for r in results} == {d.event_id for d in deliveries}
    assert all(r["attempts"] == 1 and r["delivered_at"] for r in results)
