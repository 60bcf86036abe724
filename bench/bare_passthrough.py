"""Calibration only: the thinnest ASGI pass-through (uvicorn + aiohttp client, no auth,
no parsing, no metering), so the benchmark can show what any Python proxy costs here.
An event-stream answer is relayed chunk by chunk as it arrives (aiohttp's `iter_any()`);
any other answer is read whole and sent in one body, as before.

    RECKON_BARE_UPSTREAM=http://127.0.0.1:8100 uvicorn bench.bare_passthrough:app
"""

import os

import aiohttp

UPSTREAM = os.environ.get("RECKON_BARE_UPSTREAM", "http://127.0.0.1:8100")
_session: aiohttp.ClientSession | None = None


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    global _session
    if scope["type"] != "http":
        return
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {"Authorization": "Bearer bare", "Content-Type": "application/json"}
    async with _session.post(UPSTREAM + scope["path"], data=body, headers=headers) as response:
        if response.content_type == "text/event-stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        data = await response.read()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})
