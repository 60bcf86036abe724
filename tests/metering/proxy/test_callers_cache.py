"""The caller cache on a bad day: stale values within their bound, failures never
cached, one shared load per key, and a lookup that hangs bounded by its timeout."""

import asyncio
import threading
import time

import pytest
from django.db import OperationalError

from metering.proxy import callers
from metering.proxy.callers import LookupExecutor, LookupUnavailable, TtlCache


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
    pool = LookupExecutor()
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def cache_of(loader: Loader, executor: LookupExecutor, **kwargs: float) -> TtlCache:
    options = {"ttl": 2.0, "stale_for": 300.0, "load_timeout": 0.5, "retry_after": 0.0}
    options.update(kwargs)
    return TtlCache(loader, executor=executor, **options)  # type: ignore[arg-type]


def test_a_stale_entry_is_served_within_the_bound_and_not_after(
    clock: Clock, executor: LookupExecutor
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


def test_a_failed_lookup_is_not_cached_as_a_miss(clock: Clock, executor: LookupExecutor) -> None:
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
    clock: Clock, executor: LookupExecutor
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


def test_concurrent_misses_share_one_load(executor: LookupExecutor) -> None:
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
    executor: LookupExecutor,
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


class Versioned(Loader):
    """Each load returns a new version of the context; a revoked key loads as None."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked = False

    def __call__(self, key: str) -> str | None:
        value = super().__call__(key)
        return None if self.revoked else f"{value}:v{self.calls}"


async def settled(cache: TtlCache) -> None:
    for _ in range(500):
        if not cache._loading:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the refresh did not end")


def test_an_entry_in_the_last_quarter_of_its_life_is_refreshed_without_a_wait(
    clock: Clock, executor: LookupExecutor
) -> None:
    loader = Versioned()
    cache = cache_of(loader, executor)  # ttl 2 s: refreshed ahead from 1.5 s on

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k:v1"
        clock.now += 1.4
        assert await cache.get("k") == "ctx:k:v1"
        assert loader.calls == 1  # young: no load
        loader.gate = threading.Event()  # the refresh will hang until the gate opens
        clock.now += 0.2
        # answered from the entry at once, while its refresh waits on the database
        assert await asyncio.wait_for(cache.get("k"), 0.1) == "ctx:k:v1"
        assert await asyncio.wait_for(cache.get("k"), 0.1) == "ctx:k:v1"
        loader.gate.set()
        await settled(cache)
        assert loader.calls == 2  # one refresh, shared by both calls
        assert await cache.get("k") == "ctx:k:v2"

    asyncio.run(scenario())


def test_a_revoked_key_is_refused_within_the_ttl_under_steady_traffic(
    clock: Clock, executor: LookupExecutor
) -> None:
    loader = Versioned()
    cache = cache_of(loader, executor)

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k:v1"
        loader.revoked = True
        clock.now += 1.6  # a call in the last quarter starts the refresh...
        assert await cache.get("k") == "ctx:k:v1"
        await settled(cache)
        assert await cache.get("k") is None  # ...and the next call sees the revocation
        loader.revoked = False
        clock.now += 2.5  # no call in the last quarter: the expired entry is reloaded
        assert await cache.get("k") == "ctx:k:v3"

    asyncio.run(scenario())


def test_a_failed_refresh_keeps_the_entry_and_backs_off(
    clock: Clock, executor: LookupExecutor
) -> None:
    loader = Versioned()
    cache = cache_of(loader, executor, retry_after=0.2)

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k:v1"
        loader.down = True
        clock.now += 1.6
        assert await cache.get("k") == "ctx:k:v1"
        await settled(cache)
        assert loader.calls == 2
        clock.now += 0.1  # within retry_after: no new refresh, the entry still serves
        assert await cache.get("k") == "ctx:k:v1"
        assert not cache._loading and loader.calls == 2
        loader.down = False
        clock.now += 0.15  # past retry_after, still fresh: refreshed again
        assert await cache.get("k") == "ctx:k:v1"
        await settled(cache)
        assert await cache.get("k") == "ctx:k:v3"

    asyncio.run(scenario())


def test_one_keys_failing_load_holds_back_only_that_key(
    clock: Clock, executor: LookupExecutor
) -> None:
    """A load that fails on one key's data (not the database) must not put every other
    key into the outage's stale serving: another key's expired entry is still reloaded
    (a revocation there takes effect), and an unseen key is still looked up."""
    loader = Versioned()
    broken = {"bad"}
    plain = loader.__call__

    def load(key: str) -> str | None:
        if key in broken:
            raise ValueError("a row this loader cannot read")
        return plain(key)

    cache = cache_of(load, executor, retry_after=60.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k:v1"
        with pytest.raises(LookupUnavailable):
            await cache.get("bad")
        loader.revoked = True
        clock.now += 2.5  # k expired; "bad" is still held back (60 s)
        assert await cache.get("k") is None  # reloaded, not served stale
        assert await cache.get("new") is None  # looked up, not "unavailable"
        with pytest.raises(LookupUnavailable):
            await cache.get("bad")  # held back: no new load
        assert loader.calls == 3  # k twice, new once; "bad" never reached the counter

    asyncio.run(scenario())


def test_after_the_lookup_thread_is_shut_down_entries_are_served_and_misses_unavailable(
    clock: Clock,
) -> None:
    # At shutdown the lookup executor stops before every call has ended: a refresh it can
    # no longer take must not fail the call that found the entry old (it raised
    # RuntimeError before), and a miss is "unavailable", not an error of the server.
    pool = LookupExecutor()
    loader = Loader()
    cache = cache_of(loader, pool)

    async def scenario() -> None:
        assert await cache.get("k") == "ctx:k"
        pool.shutdown(wait=True)
        clock.now += 1.6  # in the last quarter of its 2 s: a refresh would start
        assert await cache.get("k") == "ctx:k"
        with pytest.raises(LookupUnavailable):
            await cache.get("other")
        clock.now += 0.5  # expired, the load cannot run: served within the stale bound
        assert await cache.get("k") == "ctx:k"

    asyncio.run(scenario())
    assert loader.calls == 1


def test_only_a_shut_down_executor_counts_as_stopping(clock: Clock) -> None:
    # Another RuntimeError (a RecursionError, ...) from scheduling a load is a fault, not
    # the server stopping: it is raised, not served stale or "unavailable".
    pool = LookupExecutor()
    cache = cache_of(Loader(), pool)

    def refuse(*args: object, **kwargs: object) -> None:
        raise RecursionError("not a shutdown")

    async def scenario() -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pool, "submit", refuse)
            with pytest.raises(RecursionError):
                await cache.get("k")

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown(wait=True)


def test_the_lookup_executor_answers_none_only_once_it_is_shut_down() -> None:
    pool = LookupExecutor()
    assert pool.try_submit(lambda: 7).result(timeout=5) == 7  # type: ignore[union-attr]

    async def run_before_shutdown() -> object:
        return await pool.try_run(lambda: 8)  # type: ignore[misc]

    assert asyncio.run(run_before_shutdown()) == 8
    pool.shutdown(wait=True)
    assert pool.stopped
    assert pool.try_submit(lambda: 7) is None

    async def run_after_shutdown() -> object:
        return pool.try_run(lambda: 7)

    assert asyncio.run(run_after_shutdown()) is None
