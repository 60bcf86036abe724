"""A budget that must be loaded from the database while it is down (or hangs) answers
503 in the caller's format, through the real control store (Redis)."""

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from django.db import OperationalError

from api.proxy.app import ProxyApp, _refuse
from metering.control.holds import Refusal
from metering.control.scopes import BudgetScope, Controls
from metering.proxy.adapters import CHAT, MESSAGES
from metering.proxy.callers import RouteInfo


def database_down() -> int:
    raise OperationalError("connection to server at 10.0.0.5 failed")


def database_hangs() -> int:
    time.sleep(1.0)
    return 0


ROUTE = RouteInfo(
    alias="reasoner",
    provider="openai",
    upstream_model="m",
    accelerator="",
    base_url="http://127.0.0.1:9",
    credential="",
    credential_missing=False,
)


def admit(load_used: Any, anthropic: bool) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> None:
        app = ProxyApp()
        app._lookup_timeout = 0.2
        assert app.control is not None, "needs REDIS_URL"
        budget = BudgetScope(
            key=f"rk:test-outage:{uuid.uuid4()}",
            kind="reasoning",
            label="plan monthly reasoning-token budget",
            limit=1_000_000,
            ttl_s=60,
            load_used=load_used,
        )
        try:
            refusal = await app.holds.take(
                Controls((budget,), ()),
                ROUTE,
                (MESSAGES if anthropic else CHAT).name,
                {"model": "reasoner", "max_tokens": 10},
                100,
            )
            assert isinstance(refusal, Refusal)
            await _refuse(send, refusal, anthropic)  # type: ignore[arg-type]
        finally:
            await app.control.close()
            app._lookups.shutdown(wait=True)

    asyncio.run(scenario())
    return sent


@pytest.mark.parametrize("load_used", [database_down, database_hangs])
@pytest.mark.parametrize("anthropic", [False, True])
def test_a_budget_load_during_an_outage_answers_503(load_used: Any, anthropic: bool) -> None:
    sent = admit(load_used, anthropic)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"2") in sent[0]["headers"]
    body = orjson.loads(sent[1]["body"])
    assert (body["type"] == "error") if anthropic else (body["error"]["type"] == "api_error")
    assert b"10.0.0.5" not in sent[1]["body"]


def test_after_the_lookup_thread_stops_a_budget_load_fails_as_a_timeout() -> None:
    """A call still settling while the server stops: a budget load or an alert asked of the
    shut-down lookup thread fails as a timed-out load would (the call gets its 503), never
    with the executor's RuntimeError."""

    async def scenario() -> None:
        app = ProxyApp()
        if app.control is not None:
            await app.control.close()
        app._lookups.shutdown(wait=True)
        with pytest.raises(TimeoutError, match="shut down"):
            await app._in_thread(lambda: 0)
        budget = BudgetScope(
            key=f"rk:test-stopped:{uuid.uuid4()}",
            kind="spend",
            label="tenant monthly spend limit",
            limit=1_000,
            ttl_s=60,
            load_used=lambda: 0,
            tenant_id=uuid.uuid4(),
        )
        app._alert(budget)  # left to the sweep, no exception

    asyncio.run(scenario())
