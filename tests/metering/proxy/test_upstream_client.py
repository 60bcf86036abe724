"""The upstream client fails only with UpstreamError, whose message the proxy logs and
never shows to the caller."""

import asyncio

import pytest

from metering.proxy.upstream import UpstreamClient, UpstreamError


def test_a_header_that_cannot_be_sent_is_an_upstream_error() -> None:
    async def scenario() -> None:
        client = UpstreamClient(connect_timeout=1, read_timeout=1)
        with pytest.raises(UpstreamError):
            await client.post("http://127.0.0.1:9/v1", b"{}", {"Authorization": "Bearer sk-€"})
        await client.close()

    asyncio.run(scenario())
