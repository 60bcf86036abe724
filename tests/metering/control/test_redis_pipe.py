"""The hot path's Redis client against the real Redis (and a silent fake): pipelined
replies in order, scripts re-sent after NOSCRIPT, and failures that never hang."""

import asyncio
import socket
import uuid

import pytest
import redis

from metering.control.redis_pipe import RedisPipe, RedisUnavailable, Script, encode

URL = "redis://127.0.0.1:6379/0"
INCR = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def test_encode_is_resp() -> None:
    assert encode("GET", b"k", 12) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"


def test_concurrent_calls_pipeline_on_one_connection_in_order() -> None:
    key = f"rk:test:{uuid.uuid4()}"

    async def scenario() -> list[int]:
        pipe = RedisPipe(URL)
        try:
            return list(await asyncio.gather(*(pipe.run(INCR, [key], [1]) for _ in range(200))))
        finally:
            await pipe.close()

    results = asyncio.run(scenario())
    assert sorted(results) == list(range(1, 201))
    assert results == list(range(1, 201))  # answered in the order sent
    assert int(redis.Redis.from_url(URL).get(key)) == 200


def test_a_flushed_script_cache_is_refilled() -> None:
    key = f"rk:test:{uuid.uuid4()}"

    async def scenario() -> tuple[int, int, int]:
        pipe = RedisPipe(URL)
        try:
            first = await pipe.run(INCR, [key], [5])
            redis.Redis.from_url(URL).script_flush()
            second = await pipe.run(INCR, [key], [5])  # NOSCRIPT -> EVAL
            redis.Redis.from_url(URL).script_flush()
            third = await pipe.run_nowait(INCR, [key], [5])
            return first, second, third
        finally:
            await pipe.close()

    assert asyncio.run(scenario()) == (5, 10, 15)


def test_a_server_that_never_answers_fails_fast_and_does_not_hang() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def scenario() -> float:
        pipe = RedisPipe(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedisUnavailable, match="no reply"):
            await pipe.run(INCR, ["k"], [1])
        await pipe.close()
        return loop.time() - started

    try:
        assert asyncio.run(scenario()) < 2
    finally:
        listener.close()


def test_nothing_listening_is_unavailable_then_a_later_call_reconnects() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> int:
        pipe = RedisPipe(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(RedisUnavailable):
            await pipe.run(INCR, ["k"], [1])
        pipe._host, pipe._port = "127.0.0.1", 6379  # the store is back
        try:
            return int(await pipe.run(INCR, [f"rk:test:{uuid.uuid4()}"], [3]))
        finally:
            await pipe.close()

    assert asyncio.run(scenario()) == 3
