"""The caller cache on a bad day: stale values within their bound, failures never
cached, one shared load per key, and a lookup that hangs bounded by its timeout."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import OperationalError

from metering.proxy import callers
from metering.proxy.callers import LookupUnavailable, TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Loader:
    """A loader whose database can be taken down; counts its loads."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.gate: threading.Event | None = None

    def __call__(self, key: str) -> str | None:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.down:
            raise OperationalError("connection refused")
        return None if key.startswith("unknown") else f"ctx:{key}"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(callers, "time", fake)
    return fake


@pytest.fixture
def executor():  # type: ignore[no-untyped-def]
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def cache_of(loader: Loader, executor: ThreadPoolExecutor, **kwargs: float) -> TtlCache:
    options = {"ttl": 2.0, "stale_for": 300.0, "load_timeout": 0.5, "retry_after": 0.0}
    options.update(kwargs)
    return TtlCache(loader, executor=executor, **options)  # type: ignore[arg-type]


def test_a_stale_entry_is_served_within_the_bound_and_not_after(
    clock: Clock, executor: ThreadPoolExecutor
) -> None:
    loader = Loader()
    cache = cache_of(loader, executor)

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k"
        loader.down = True
        clock.now += 299.0  # expired (ttl 2 s) but looked up 299 s ago
        assert await cache.get("k") == "ctx:k"
        clock.now += 2.0  # 301 s since the last good lookup
        with pytest.raises(LookupUnavailable):
            await cache.get("k")
        loader.down = False
        assert await cache.get("k") == "ctx:k"  # back: loaded again, bound restarts

    asyncio.run(scenario())
    assert loader.calls == 4


def test_a_failed_lookup_is_not_cached_as_a_miss(
    clock: Clock, executor: ThreadPoolExecutor
) -> None:
    loader = Loader()
    cache = cache_of(loader, executor)

    async def scenario() -> None:
        loader.down = True
        with pytest.raises(LookupUnavailable):
            await cache.get("k")  # never seen: unavailable, not "unknown"
        loader.down = False
        assert await cache.get("k") == "ctx:k"
        assert await cache.get("unknown-1") is None  # a real miss is cached
        loader.down = True
        assert await cache.get("unknown-1") is None

    asyncio.run(scenario())


def test_after_a_failure_calls_fail_fast_until_retry_after(
    clock: Clock, executor: ThreadPoolExecutor
) -> None:
    loader = Loader()
    cache = cache_of(loader, executor, retry_after=1.0)

    async def scenario() -> None:
        loader.down = True
        for _ in range(3):
            with pytest.raises(LookupUnavailable):
                await cache.get("k")
        assert loader.calls == 1  # the database was asked once, not per call
        loader.down = False
        clock.now += 1.5
        assert await cache.get("k") == "ctx:k"

    asyncio.run(scenario())


def test_concurrent_misses_share_one_load(executor: ThreadPoolExecutor) -> None:
    loader = Loader()
    loader.gate = threading.Event()
    cache = cache_of(loader, executor, load_timeout=5.0)

    async def scenario() -> list[str | None]:
        calls = [asyncio.ensure_future(cache.get("k")) for _ in range(20)]
        await asyncio.sleep(0.05)
        assert loader.gate is not None
        loader.gate.set()
        return await asyncio.gather(*calls)

    assert asyncio.run(scenario()) == ["ctx:k"] * 20
    assert loader.calls == 1


def test_a_hanging_lookup_is_bounded_and_serves_the_stale_value(
    executor: ThreadPoolExecutor,
) -> None:
    loader = Loader()
    cache = cache_of(loader, executor, ttl=0.01, load_timeout=0.2)

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k"
        await asyncio.sleep(0.02)
        loader.gate = threading.Event()  # the database stops answering
        started = time.monotonic()
        assert await cache.get("k") == "ctx:k"  # stale, after the timeout
        with pytest.raises(LookupUnavailable):
            await cache.get("other")
        assert time.monotonic() - started < 1.5
        loader.gate.set()

    asyncio.run(scenario())
