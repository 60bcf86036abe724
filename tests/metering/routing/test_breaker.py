"""The breaker scripts on the real Redis and on a 3-node cluster: opens at 5 failures
that are >= 50% of what was reported and not before, cooldown doubling, one probe
winner, closing, and every key of an alias in one slot."""

import asyncio
import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from redis.crc import key_slot

from metering.control.redis_pipe import ClusterPipe, RedisPipe, control_client
from metering.routing.breaker import (
    PROBE_TTL_MS,
    BreakerConfig,
    breaker_key,
    breaker_probe,
    breaker_probe_release,
    breaker_read,
    breaker_report,
    breaker_states,
    heartbeat,
    probe_key,
)
from tests.redis_cluster import redis_cluster

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CONFIG = BreakerConfig()  # 5 failures, 50%, 10 s window, 30 s cooldown up to 300 s
T0 = 1_800_000_000_000  # ms
_alias_ids = itertools.count(random.randrange(10**6, 10**9))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def scenario(url: str, steps):  # type: ignore[no-untyped-def]
    """Run `steps(client, alias_pk)` on a fresh alias, closing the client after."""
    client = control_client(url)
    try:
        return await steps(client, next(_alias_ids))
    finally:
        await client.close()


async def report(client, alias, rid, now, *, f=0, s=0, ra=0, probe=False) -> int:  # type: ignore[no-untyped-def]
    return await breaker_report(
        client,
        alias,
        rid,
        failures=f,
        successes=s,
        now_ms=now,
        retry_after_ms=ra,
        probe=probe,
        config=CONFIG,
    )


def check_opens_at_five_failures_and_half(url: str) -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        # 4 failures: not yet, however few successes.
        for i in range(4):
            assert await report(client, alias, 7, T0 + i, f=1) == 0
        assert await report(client, alias, 7, T0 + 10, s=1) == 0
        # 5th failure: 5 of 6 reported, opens for the cooldown.
        assert await report(client, alias, 7, T0 + 20, f=1) == T0 + 20 + 30_000
        # Another target of the same alias is untouched.
        assert await report(client, alias, 8, T0 + 21, f=1) == 0
        read = await breaker_read(client, alias)
        assert read[7].open_until_ms == T0 + 20 + 30_000 and read[7].cooldown_ms == 30_000
        assert read[7].state(T0 + 21) == "open" and read[7].state(T0 + 30_020) == "half-open"
        assert read[8].state(T0) == "closed"
        # While open, reports change nothing; a retry-after pushes it later.
        assert await report(client, alias, 7, T0 + 30, f=3) == T0 + 30_020
        assert await report(client, alias, 7, T0 + 40, f=1, ra=60_000) == T0 + 60_040

    run(scenario(url, steps))


def check_ratio_and_window(url: str) -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        # 5 failures but 6 successes: 45% < 50%, stays closed.
        assert await report(client, alias, 1, T0, s=6) == 0
        assert await report(client, alias, 1, T0 + 1, f=5) == 0
        # A 6th: 6 of 12 = 50%: opens.
        assert await report(client, alias, 1, T0 + 2, f=1) == T0 + 2 + 30_000
        # Failures spread over more than the window never add up.
        for i in range(8):
            assert await report(client, alias, 2, T0 + i * 5_000, f=1) == 0  # 2 per window at most
        # Five in one report open at once, a retry-after as the floor.
        assert await report(client, alias, 3, T0, f=5, ra=45_000) == T0 + 45_000

    run(scenario(url, steps))


def check_probe_cooldown_doubling_and_closing(url: str) -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        opened = await report(client, alias, 5, T0, f=5)
        assert opened == T0 + 30_000
        # Still cooling down: nobody probes.
        assert await breaker_probe(client, alias, 5, now_ms=T0 + 29_999, owner="p") == 0
        # Half-open: exactly one of many concurrent askers wins.
        now = T0 + 30_000
        wins = await asyncio.gather(
            *(breaker_probe(client, alias, 5, now_ms=now, owner=f"p{i}") for i in range(20))
        )
        assert sorted(wins) == [0] * 19 + [2]
        # The probe fails: re-opens for twice the cooldown, and the probe key is gone.
        reopened = await report(client, alias, 5, now + 100, f=1, probe=True)
        assert reopened == now + 100 + 60_000
        cooldowns = [60_000]
        at = reopened
        for _ in range(4):  # 120 s, 240 s, then the 300 s maximum
            assert await breaker_probe(client, alias, 5, now_ms=at, owner="p") == 2
            nxt = await report(client, alias, 5, at, f=1, probe=True)
            cooldowns.append(nxt - at)
            at = nxt
        assert cooldowns == [60_000, 120_000, 240_000, 300_000, 300_000]
        # A successful probe closes and resets the cooldown.
        assert await breaker_probe(client, alias, 5, now_ms=at, owner="p") == 2
        assert await report(client, alias, 5, at + 5, s=1, probe=True) == 0
        assert (await breaker_read(client, alias))[5].state(at + 6) == "closed"
        assert (
            await breaker_probe(client, alias, 5, now_ms=at + 6, owner="p") == 1
        )  # closed: no probe
        # The next opening starts again at 30 s.
        assert await report(client, alias, 5, at + 10, f=5) == at + 10 + 30_000

    run(scenario(url, steps))


def test_opens_at_five_failures_and_half() -> None:
    check_opens_at_five_failures_and_half(URL)


def test_ratio_and_window() -> None:
    check_ratio_and_window(URL)


def test_probe_cooldown_doubling_and_closing() -> None:
    check_probe_cooldown_doubling_and_closing(URL)


def test_retry_after_is_capped_at_the_longest_cooldown() -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        huge = 999_999_999_000  # Retry-After: 999999999 (s), in ms
        # Opening: the retry-after is the floor, but never above the 300 s maximum.
        assert await report(client, alias, 1, T0, f=5, ra=huge) == T0 + 300_000
        # While open, a retry-after pushes it later only up to now + the maximum.
        assert await report(client, alias, 1, T0 + 1_000, f=1, ra=huge) == T0 + 301_000
        # A failed probe with a retry-after: the doubled cooldown (60 s) up to the maximum.
        assert await breaker_probe(client, alias, 1, now_ms=T0 + 301_000, owner="p") == 2
        reopened = await report(client, alias, 1, T0 + 301_000, f=1, ra=huge, probe=True)
        assert reopened == T0 + 301_000 + 300_000
        assert (await breaker_read(client, alias))[1].open_until_ms == reopened

    run(scenario(URL, steps))


def test_probe_key_lapses_for_a_dead_prober() -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        await report(client, alias, 9, T0, f=5)
        assert await breaker_probe(client, alias, 9, now_ms=T0 + 30_000, owner="p") == 2
        plain = redis.Redis.from_url(URL)
        ttl = plain.pttl(probe_key(alias, 9))
        assert 0 < ttl <= PROBE_TTL_MS
        plain.delete(probe_key(alias, 9))  # as if the TTL had passed
        assert await breaker_probe(client, alias, 9, now_ms=T0 + 31_000, owner="p") == 2

    run(scenario(URL, steps))


def test_an_unused_probe_is_let_go_by_its_owner_only() -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        await report(client, alias, 9, T0, f=5)
        assert await breaker_probe(client, alias, 9, now_ms=T0 + 30_000, owner="p") == 2
        assert await breaker_probe(client, alias, 9, now_ms=T0 + 30_000, owner="q") == 0
        assert await breaker_probe_release(client, alias, 9, owner="q") == 0  # not q's
        assert await breaker_probe(client, alias, 9, now_ms=T0 + 30_001, owner="q") == 0
        assert await breaker_probe_release(client, alias, 9, owner="p") == 1
        assert await breaker_probe(client, alias, 9, now_ms=T0 + 30_002, owner="q") == 2
        assert await breaker_probe_release(client, alias, 9, owner="p") == 0  # q's now

    run(scenario(URL, steps))


def test_breaker_states_for_the_admin(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = URL

    async def steps(client, alias):  # type: ignore[no-untyped-def]
        await report(client, alias, 1, T0, f=5)
        await report(client, alias, 2, T0, f=1)
        await report(client, alias, 3, T0 - 60_000, f=5)
        return alias

    alias = run(scenario(URL, steps))
    # T0 + 30 s = 2027-01-15 08:00:30 UTC.
    states = breaker_states(alias, now_ms=T0 + 1)
    assert states.known == {1: "open until 08:00:30", 2: "closed", 3: "half-open"}
    assert [states.state(rid) for rid in (1, 2, 3, 4)] == [
        "open until 08:00:30",
        "closed",
        "half-open",
        "closed",  # a target Redis knows nothing of
    ]
    # Nothing listens: no error, and every target "unknown", never "closed".
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    down = breaker_states(alias)
    assert not down.reachable and [down.state(rid) for rid in (1, 2, 4)] == ["unknown"] * 3
    settings.REDIS_URL = ""  # no Redis at all: each process has its own breakers
    assert breaker_states(alias).state(1) == "unknown"


def test_heartbeat_counts_live_processes() -> None:
    async def steps(client, alias):  # type: ignore[no-untyped-def]
        plain = redis.Redis.from_url(URL)
        plain.delete("rk:{route:procs}:live")
        assert await heartbeat(client, "a", now_ms=T0) == 1
        assert await heartbeat(client, "b", now_ms=T0 + 1000) == 2
        assert await heartbeat(client, "a", now_ms=T0 + 2000) == 2
        # b silent for more than 5 s: gone.
        assert await heartbeat(client, "a", now_ms=T0 + 6_500) == 1
        assert await heartbeat(client, "a", now_ms=T0 + 6_600, ttl_ms=0) == 0

    run(scenario(URL, steps))


# --- Redis Cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield f"redis-cluster://127.0.0.1:{ports[0]}"


def test_one_slot_per_alias() -> None:
    for alias in (1, 42, 10**9):
        slots = {
            key_slot(k.encode())
            for k in (breaker_key(alias), probe_key(alias, 1), probe_key(alias, 999))
        }
        assert len(slots) == 1
    assert len({key_slot(breaker_key(a).encode()) for a in range(1, 50)}) > 10  # aliases spread


def test_cluster(cluster: str) -> None:
    assert isinstance(control_client(cluster), ClusterPipe)
    assert not isinstance(control_client(URL), ClusterPipe) and isinstance(
        control_client(URL), RedisPipe
    )
    check_opens_at_five_failures_and_half(cluster)
    check_ratio_and_window(cluster)
    check_probe_cooldown_doubling_and_closing(cluster)

    async def spread(client, _):  # type: ignore[no-untyped-def]
        # Aliases on every node of the cluster, in one gather.
        aliases = [next(_alias_ids) for _ in range(12)]
        opened = await asyncio.gather(*(report(client, a, 1, T0, f=5) for a in aliases))
        assert opened == [T0 + 30_000] * 12
        assert await heartbeat(client, "p1", now_ms=T0) >= 1
        return aliases

    run(scenario(cluster, spread))


def test_routing_state_on_the_cluster(cluster: str) -> None:
    """A RoutingState over the cluster: reports, reads of aliases spread over the nodes in
    one refresh, the heartbeat, and the probe."""
    from metering.routing.state import RoutingState

    @dataclass(frozen=True)
    class Target:
        route_id: int
        target: str
        priority: int = 0
        weight: int = 100
        max_concurrent: int | None = None

    @dataclass(frozen=True)
    class Plan:
        alias_pk: int
        targets: tuple[Target, ...]
        policy: str = "fallback"
        max_attempts: int = 2
        rules: tuple = ()

    class Clock:
        now = T0 / 1000

        def __call__(self) -> float:  # float-ok: seconds
            return self.now

    plans = [
        Plan(next(_alias_ids), (Target(10 * i + 1, "a"), Target(10 * i + 2, "b", 1)))
        for i in range(12)
    ]

    async def go() -> None:
        clock = Clock()
        writer = RoutingState(cluster, clock=clock, config=CONFIG, load=lambda ids: ({}, []))
        reader = RoutingState(cluster, clock=clock, config=CONFIG, load=lambda ids: ({}, []))
        try:
            for plan in plans:
                for _ in range(5):
                    writer.report(plan, plan.targets[0].route_id, ok=False)
                    while writer._tasks:
                        await asyncio.gather(*list(writer._tasks))
                reader.watch(plan)
            await reader.refresh_breakers()
            assert reader.processes >= 1
            assert all(reader.view.is_open(p.targets[0].route_id) for p in plans)
            assert not any(reader.view.is_open(p.targets[1].route_id) for p in plans)
            clock.now += 30
            await reader.refresh_breakers()  # wins every half-open probe
            assert not any(reader.view.is_open(p.targets[0].route_id) for p in plans)
        finally:
            await writer.close()
            await reader.close()

    asyncio.run(go())
