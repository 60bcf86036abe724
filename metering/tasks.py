"""Celery tasks of metering: each calls one service and is safe to run twice."""

from datetime import UTC, datetime, timedelta

import redis
from celery import shared_task
from django.conf import settings

from config.celery import RELIABLE_TASK
from metering.control.counters import control_counters_rebuild as counters_rebuild
from metering.control.holdcaps import hold_caps_learn
from metering.ledger.rollups import usage_rollup_shards_fold


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
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return counters_rebuild(
            client=client, grace_s=settings.RECKON_CONTROL_HOLD_TTL_SECONDS
        ).rebuilt
    finally:
        client.close()


@shared_task(name="metering.tasks.fold_rollup_shards", **RELIABLE_TASK)
def fold_rollup_shards(as_of: str | None = None) -> int:
    """Fold the write shards of the rollup hours that closed more than
    RECKON_ROLLUP_FOLD_GRACE_SECONDS before `as_of` (default now) into shard 0
    (metering.ledger.rollups). Returns how many rows were merged away."""
    now = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    closed = now - timedelta(seconds=settings.RECKON_ROLLUP_FOLD_GRACE_SECONDS)
    # An hour is closed once it has ended: fold the hours that start an hour before.
    return usage_rollup_shards_fold(before=closed - timedelta(hours=1))
