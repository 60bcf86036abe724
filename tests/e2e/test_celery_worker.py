"""The period close run by a real Celery worker process through the real Redis broker."""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from django.conf import settings

from billing.models import Invoice
from config.celery import app
from tests.e2e.conftest import ROOT, database_url
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import SEP, use, version

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(django_db_blocker):  # type: ignore[no-untyped-def]
    if settings.CELERY_BROKER_URL.startswith("memory"):
        pytest.skip("needs a real broker: run the suite with CELERY_BROKER_URL (make test does)")
    with django_db_blocker.unblock():
        url = database_url()
    app.control.purge()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            "solo",
            "-Q",
            "default,billing,webhooks",
            "--loglevel",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "CELERY_TASK_ALWAYS_EAGER": "false"},
    )
    yield process
    process.terminate()
    process.wait(timeout=20)


def wait_for(predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("the worker did not get there in time")


def test_worker_closes_due_periods_once(worker) -> None:  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    from billing.plans import subscription_create

    subscription_create(
        tenant=key.tenant, plan_version=version("standard", base="10", output="4.00"), starts_at=SEP
    )
    use(key, datetime(2026, 9, 14, tzinfo=UTC), output_tokens=1_000_000, reasoning_tokens=500_000)
    use(key, datetime(2026, 10, 14, tzinfo=UTC), input_tokens=2_000_000)
    as_of = datetime(2026, 11, 5, tzinfo=UTC).isoformat()
    assert not app.conf.task_always_eager
    # beat's fan-out, sent twice through the broker: the worker must still make one invoice per period
    app.send_task("billing.tasks.close_due_periods", kwargs={"as_of": as_of}, queue="billing")
    app.send_task("billing.tasks.close_due_periods", kwargs={"as_of": as_of}, queue="billing")
    wait_for(lambda: Invoice.objects.filter(status="finalized").count() == 2)
    time.sleep(1.5)  # let any duplicate close task finish too
    invoices = list(Invoice.objects.order_by("period_start"))
    assert [(i.period_start.month, i.number, i.total_minor) for i in invoices] == [
        (9, "RK-2026-000001", 1000 + 400 + 100),
        (10, "RK-2026-000002", 1000 + 200),
    ]
