"""A period close never runs while usage answered to callers is still in some writer's
spool instead of the ledger: it would be left off the invoice. Writers report their
unreplayed spool in Redis (`rk:spool:<writer>`); the close also looks at the local spool
directory, and refuses when Redis does not answer (it cannot know)."""

import os
from pathlib import Path
from typing import Any

import pytest
import redis
import time_machine
from celery.exceptions import Retry

from billing import tasks
from billing.invoicing.close import period_close
from billing.models import Invoice
from config.errors import ApplicationError
from tests.e2e.conftest import free_port
from tests.scenarios.test_invoicing_stories import OCT, SEP, at, customer  # noqa: F401
from tests.usage_helpers import record_for, spool_append

pytestmark = pytest.mark.django_db

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
WRITER = "web-7-0badc0de"  # another host's server, pid 7


@pytest.fixture
def spool_settings(settings: Any, tmp_path: Path) -> Any:
    settings.REDIS_URL = REDIS_URL
    settings.RECKON_LEDGER_SPOOL_DIR = tmp_path / "spool"
    return settings


def report(client: redis.Redis, count: int) -> None:
    """What a writer with unreplayed spool keeps in Redis (`metering.ledger.spool.spool_report`)."""
    client.set(f"rk:spool:{WRITER}", count, ex=60)
    client.sadd("rk:spool-writers", WRITER)


@pytest.fixture
def reported() -> Any:
    client = redis.Redis.from_url(REDIS_URL)
    report(client, 4)
    yield client
    client.delete(f"rk:spool:{WRITER}")
    client.srem("rk:spool-writers", WRITER)


def test_close_refuses_while_a_writer_reports_spool(customer, spool_settings, reported) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    key, _ = customer
    with pytest.raises(ApplicationError, match=f"{WRITER} \\(4 records\\)"):
        period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert not Invoice.objects.exists()
    reported.delete(f"rk:spool:{WRITER}")  # its spool is loaded
    invoice = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert invoice.number


def test_the_periodic_close_fans_nothing_out_while_spool_is_reported(
    customer,  # noqa: F811
    spool_settings,
    reported,
) -> None:  # type: ignore[no-untyped-def]
    with time_machine.travel(at(2026, 10, 3), tick=False), pytest.raises(Retry) as retry:
        tasks.close_due_periods.apply(throw=True)
    assert isinstance(retry.value.exc, ApplicationError) and WRITER in str(retry.value.exc)
    assert tasks.close_due_periods.retry_backoff  # retried later, with backoff
    assert not Invoice.objects.exists()
    reported.delete(f"rk:spool:{WRITER}")
    with time_machine.travel(at(2026, 10, 3), tick=False):
        tasks.close_due_periods.delay()
    assert Invoice.objects.filter(period_start=SEP).count() == 1


def test_close_refuses_while_the_local_spool_holds_records(customer, spool_settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    key, _ = customer
    spool_append(spool_settings.RECKON_LEDGER_SPOOL_DIR, [record_for(key)])
    with pytest.raises(ApplicationError, match="1 records"):
        period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert not Invoice.objects.exists()


def test_close_fails_closed_when_redis_does_not_answer(customer, spool_settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    key, _ = customer
    spool_settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    with pytest.raises(ApplicationError, match="Redis does not answer"):
        period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert not Invoice.objects.exists()


def test_a_closed_period_is_still_returned_while_spool_is_reported(
    customer,  # noqa: F811
    spool_settings,
) -> None:  # type: ignore[no-untyped-def]
    """Re-running a close that already happened changes nothing, so it is not refused."""
    key, _ = customer
    first = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=OCT.replace(day=3))
    client = redis.Redis.from_url(REDIS_URL)
    report(client, 1)
    try:
        again = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    finally:
        client.delete(f"rk:spool:{WRITER}")
    assert again.pk == first.pk
