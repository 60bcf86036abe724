"""Celery tasks of metering: each calls one service and is safe to run twice."""

import logging
import uuid
from datetime import datetime

import redis
from celery import shared_task
from django.conf import settings

from config.celery import RELIABLE_TASK, app
from metering.control.counters import control_counters_rebuild as counters_rebuild
from metering.control.holdcaps import hold_caps_learn

logger = logging.getLogger(__name__)

# Billing's task that evaluates a tenant's budget alerts (billing/tasks.py). Metering does
# not import billing, so it is sent by name; the name is fixed (beat and queued messages).
ALERTS_EVALUATE_TASK = "billing.alerts_evaluate"


@shared_task(**RELIABLE_TASK)
def learn_hold_caps(as_of: str | None = None) -> int:
    return hold_caps_learn(as_of=datetime.fromisoformat(as_of) if as_of else None)


@shared_task(**RELIABLE_TASK)
def control_counters_rebuild() -> int:
    """Give back what lost holds and dead processes' slices keep counted (metering.control.counters).
    It acts on Redis's counters as they are now, so it takes no `as_of`: a replay is a
    fresh run. Returns how many budgets were rebuilt."""
    if not settings.REDIS_URL:
        return 0
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return counters_rebuild(
            client=client, grace_s=settings.RECKON_CONTROL_HOLD_TTL_SECONDS
        ).rebuilt
    finally:
        client.close()


def alerts_evaluate_soon(tenant_id: uuid.UUID) -> None:
    """Ask billing to evaluate the tenant's alerts now (a settlement took a budget across
    an alert percentage). Durable evaluation runs every few minutes anyway: this only
    makes a crossing known sooner, so a failure to enqueue is logged, never raised."""
    try:
        if app.conf.task_always_eager:
            app.tasks[ALERTS_EVALUATE_TASK].delay(str(tenant_id))
        else:
            app.send_task(ALERTS_EVALUATE_TASK, args=[str(tenant_id)])
    except Exception:  # noqa: BLE001 - the sweep catches up; never fail a call for this
        logger.exception("could not enqueue the alert evaluation of tenant %s", tenant_id)
