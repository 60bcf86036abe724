"""Celery tasks of metering: each calls one service and is safe to run twice."""

from datetime import datetime

from celery import shared_task
from django.conf import settings

from config.celery import RELIABLE_TASK
from config.redis_clients import redis_client
from metering.control.counters import control_counters_rebuild as counters_rebuild
from metering.control.holdcaps import hold_caps_learn


@shared_task(name="metering.tasks.learn_hold_caps", **RELIABLE_TASK)
def learn_hold_caps(as_of: str | None = None) -> int:
    return hold_caps_learn(as_of=datetime.fromisoformat(as_of) if as_of else None)


@shared_task(name="metering.tasks.control_counters_rebuild", **RELIABLE_TASK)
def control_counters_rebuild() -> int:
    """Give back what lost holds and dead processes' slices keep counted (metering.control.counters).
    It acts on Redis's counters as they are now, so it takes no `as_of`: a replay is a
    fresh run. Returns how many budgets were rebuilt."""
    if not settings.REDIS_URL:
        return 0
    client = redis_client(settings.REDIS_URL)
    try:
        return counters_rebuild(
            client=client, grace_s=settings.RECKON_CONTROL_HOLD_TTL_SECONDS
        ).rebuilt
    finally:
        client.close()
