"""Celery tasks of metering: each calls one service and is safe to run twice."""

from datetime import datetime

from celery import shared_task

from config.celery import RELIABLE_TASK
from metering.holdcaps import hold_caps_learn


@shared_task(**RELIABLE_TASK)
def learn_hold_caps(as_of: str | None = None) -> int:
    return hold_caps_learn(as_of=datetime.fromisoformat(as_of) if as_of else None)
