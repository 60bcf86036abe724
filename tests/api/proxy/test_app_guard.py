"""The proxy's last-resort guard: an unexpected failure before the response started is
answered in the caller's wire format, with nothing of the failure in it."""

import asyncio
from typing import Any

import orjson
import pytest
from django.db import OperationalError

from api.proxy.app import ProxyApp


def call(app: ProxyApp, path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return sent


@pytest.fixture
def app() -> ProxyApp:
    return ProxyApp()


@pytest.mark.parametrize(
    ("failure", "status"),
    [(RuntimeError("boom at db.internal:5432"), 500), (OperationalError("10.0.0.5 down"), 503)],
)
def test_an_unexpected_failure_answers_in_the_callers_format(
    app: ProxyApp, monkeypatch: pytest.MonkeyPatch, failure: Exception, status: int
) -> None:
    async def broken(key: str) -> None:
        raise failure

    monkeypatch.setattr(app.callers, "get", broken)
    sent = call(app, "/v1/chat/completions", [(b"authorization", b"Bearer rk_x")])
    assert sent[0]["status"] == status
    body = orjson.loads(sent[1]["body"])
    assert body["error"]["type"] == "api_error"
    assert b"db.internal" not in sent[1]["body"] and b"10.0.0.5" not in sent[1]["body"]

    sent = call(app, "/v1/messages", [(b"x-api-key", b"rk_x")])
    assert sent[0]["status"] == status
    assert orjson.loads(sent[1]["body"])["type"] == "error"
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert (b"retry-after" in headers) == (status == 503)


def test_a_failure_after_the_response_started_is_not_answered_twice(
    app: ProxyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def half_answered(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    monkeypatch.setattr(app, "_dispatch", half_answered)
    with pytest.raises(RuntimeError):
        call(app, "/v1/chat/completions", [])
