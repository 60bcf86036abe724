"""Leased admission against the real Redis: slices far from a limit, the exact path near
it, slices asked back (and lapsed) so that no call is refused while the budget covers
it, and the guarantee across several processes' stores."""

import asyncio
import os
import random
import time
import uuid

import pytest
import redis

from metering.control import leases, scripts
from metering.control import store as control_store
from metering.control.scopes import BudgetCost, BudgetScope, Grant, RateScope
from metering.control.store import ControlStore
from tests.metering.control.lost_replies import lose_replies
from tests.metering.control.timeouts import REDIS_TIMEOUT_S

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
HOLD = 100  # every call here holds 100 units of its budget


def budget(limit: int, used: int = 0, alert_at: tuple[int, ...] = ()) -> BudgetScope:
    return BudgetScope(
        key=f"rk:test:{uuid.uuid4()}",
        kind="spend",
        label="test spend",
        limit=limit,
        ttl_s=120,
        load_used=lambda: used,
        alert_at=alert_at,
    )


async def direct(fn):  # type: ignore[no-untyped-def]
    return fn()


def fields(b: BudgetScope) -> dict[str, int]:
    raw = redis.Redis.from_url(URL).hgetall(b.key)
    return {k.decode(): int(v) for k, v in raw.items() if b":" not in k}


async def admit(store: ControlStore, b: BudgetScope, rates=()):  # type: ignore[no-untyped-def]
    return await store.admit(
        budgets=[b],
        costs=[BudgetCost(HOLD, 0)],
        grant=Grant(1, 1),
        rates=list(rates),
        est_tokens=10,
        load_in_thread=direct,
    )


def settle_call(
    store: ControlStore, b: BudgetScope, admission, actual: int = HOLD, rates=(), delta: int = 0
):  # type: ignore[no-untyped-def]
    """Settle a call that held HOLD of `b` (a leased one waits for the next report)."""
    return store.settle(
        budgets=[b],
        holds=[HOLD],
        actuals=[actual],
        rates=list(rates),
        token_delta=delta,
        generations=admission.generations,
        token_windows=admission.token_windows,
        lease=admission.lease,
    )


async def settle(store: ControlStore, b: BudgetScope, admission, actual: int = HOLD, rates=()):  # type: ignore[no-untyped-def]
    """Settle a call; a leased one is carried by the next report, which this waits for."""
    settled = settle_call(store, b, admission, actual, rates)
    if settled is not None:
        return await settled
    await store.flush()
    return None


def test_far_from_the_limit_calls_are_admitted_on_a_slice() -> None:
    b = budget(10**9)
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=10**6, tokens_per_minute=None, tenant_id="t"
    )

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        first = await admit(store, b, [rate])
        during = fields(b)
        admissions = [first] + [await admit(store, b, [rate]) for _ in range(7)]
        await asyncio.gather(*(settle(store, b, a, 40, [rate]) for a in admissions))
        settled = fields(b)
        await store.close()
        return admissions, during, settled, fields(b)

    admissions, during, settled, closed = asyncio.run(scenario())
    assert all(a.allowed and a.lease is not None for a in admissions)
    assert during["held"] == during["leased"] == 8 * HOLD  # one slice of 8 calls, in Redis
    assert settled["spent"] == 320  # what the calls used, carried by one flush
    # with a quarter of the slice left a second one was taken ahead, sized for twice the
    # 8 calls in flight, and the first closed: what its calls did not use went back
    assert settled["held"] == settled["leased"] == 16 * HOLD
    assert closed["held"] == 0 and closed["leased"] == 0  # closing gave the slice back
    # headers count calls, not slices: the window as this process saw it, plus its calls
    remaining = [dict(a.headers)[b"x-ratelimit-remaining-requests"] for a in admissions]
    assert remaining[0] == b"999999" and remaining[-1] == b"999992"


def test_near_the_limit_calls_go_through_the_exact_script() -> None:
    b = budget(10 * HOLD)  # room for 10 calls: far too little for a slice of 8

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        out = [await admit(store, b) for _ in range(11)]
        await store.close()
        return out

    out = asyncio.run(scenario())
    assert all(a.allowed and a.lease is None for a in out[:10])
    assert not out[10].allowed and out[10].reason == "budget"
    assert fields(b)["held"] == 10 * HOLD


def test_a_slice_is_asked_back_before_a_call_is_refused() -> None:
    b = budget(10_000 * HOLD)

    async def scenario():  # type: ignore[no-untyped-def]
        a, other = (
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=100),
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S),
        )
        leased = await admit(a, b)  # a holds a slice of 100 calls, uses one
        # meanwhile the budget is nearly spent elsewhere: what is left outside a's slice
        # covers no call, but a's slice still has room for 99
        redis.Redis.from_url(URL).hincrby(b.key, "spent", (10_000 - 100) * HOLD)
        exact = await admit(other, b)
        await settle(a, b, leased)
        await a.close()
        await other.close()
        return leased, exact

    leased, exact = asyncio.run(scenario())
    assert leased.lease is not None
    assert exact.allowed  # a gave its slice back when asked; the call fit
    state = fields(b)
    assert state["leased"] == 0 and state["held"] == HOLD  # the exact call's hold


def test_many_processes_never_pass_the_limit_and_fill_it() -> None:
    capacity = 3000  # calls the budget covers: slices at first, the exact path at the end
    b = budget(capacity * HOLD)
    rng = random.Random(7)

    async def scenario() -> tuple[int, int]:
        stores = [
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=16) for _ in range(3)
        ]
        admitted = 0

        async def caller(store: ControlStore) -> None:
            nonlocal admitted
            while True:
                a = await admit(store, b)
                if not a.allowed:
                    return
                admitted += 1
                await asyncio.sleep(rng.random() / 1000)
                await settle(store, b, a)

        await asyncio.gather(*(caller(s) for s in stores for _ in range(12)))
        for s in stores:
            await s.close()
        return admitted, fields(b)["spent"]

    admitted, spent = asyncio.run(scenario())
    assert admitted == capacity  # no call refused while the budget covered it
    assert spent == capacity * HOLD  # and never past the limit
    assert fields(b)["held"] == 0


def test_a_slice_of_a_budget_that_left_redis_takes_no_more_calls() -> None:
    b = budget(10**9)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        first = await admit(store, b)
        old = store.book.budgets[b.key]  # type: ignore[union-attr]
        redis.Redis.from_url(URL).delete(b.key)  # Redis restarted
        await asyncio.sleep(0.15)  # a flush or two
        gone = old.orphan and old.closing  # admits nothing more
        second = await admit(store, b)  # loaded again from the ledger, a new slice
        await settle(store, b, first)
        await settle(store, b, second)
        await store.close()
        return old, gone, second

    old, gone, second = asyncio.run(scenario())
    assert gone
    assert second.allowed and second.lease is not None and second.lease.budgets[0] is not old
    # the ledger the budget was reloaded from (empty here) had not seen the first call:
    # it is charged once, as an orphan, like an exact settlement after a reload
    assert fields(b)["held"] == 0 and fields(b)["spent"] == 2 * HOLD


def test_a_report_whose_reply_was_lost_is_not_counted_twice() -> None:
    b = budget(10**9)
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=10**6, tokens_per_minute=10**9, tenant_id="t"
    )

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        admissions = [await admit(store, b, [rate]) for _ in range(3)]
        for a in admissions[:2]:
            a.lease.windows[0].closing = True  # the window slice reports its counts too
        for a in admissions[:2]:
            settle_call(store, b, a, 40, [rate], 5)
        # a report reaches Redis but its reply is lost (a timeout): the next report
        # carries the same absolute figures, and the window the same sequence number
        keys, args, _ = store.book.report(time.monotonic())  # type: ignore[union-attr]
        await store._redis.run(scripts.FLUSH, keys, [leases.OWNER_TTL_S * 1000, *args])
        await store._redis.run(scripts.FLUSH, keys, [leases.OWNER_TTL_S * 1000, *args])
        await store.flush()  # the regular report follows
        state = fields(b)
        key = admissions[0].token_windows[0]
        window = redis.Redis.from_url(URL).hmget(key, "r", "t")
        third = admissions[2]
        settle_call(store, b, third, 40, [rate], 7)
        await store.flush()
        # the old report arrives once more, after newer ones: it changes nothing
        await store._redis.run(scripts.FLUSH, keys, [leases.OWNER_TTL_S * 1000, *args])
        late = fields(b), [int(v) for v in redis.Redis.from_url(URL).hmget(key, "r", "t")]
        await store.close()
        return state, [int(v) for v in window], late, fields(b)

    state, window, late, closed = asyncio.run(scenario())
    assert state["spent"] == 80  # two calls of 40, once each
    assert state["held"] == 8 * HOLD - 80  # the slice less what they used
    assert window == [3, 3 * 10 + 2 * 5]  # three calls, two of them settled with +5 tokens
    assert late[0]["spent"] == 120 and late[0]["held"] == 8 * HOLD - 120
    assert late[1] == [3, 3 * 10 + 2 * 5 + 7]
    assert closed["spent"] == 120 and closed["held"] == closed["leased"] == 0


def test_a_closing_slice_keeps_the_hold_of_a_call_in_flight() -> None:
    b = budget(10**9)
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=10**6, tokens_per_minute=10**9, tenant_id="t"
    )

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        a = await admit(store, b, [rate])
        store.book.close_all()  # type: ignore[union-attr]
        await store.flush()
        during = fields(b)
        late = await admit(store, b, [rate])  # not on the closing slice: a new one
        window = a.token_windows[0]
        settle_call(store, b, a, 40, [rate], 25)
        await settle(store, b, late, 40, [rate])
        await store.close()
        counts = redis.Redis.from_url(URL).hmget(window, "r", "t")
        return a, late, during, fields(b), [int(v) for v in counts]

    a, late, during, closed, counts = asyncio.run(scenario())
    assert during["held"] == during["leased"] == HOLD  # only the call in flight
    assert late.lease is not None and late.lease.budgets[0] is not a.lease.budgets[0]
    assert closed == {**closed, "spent": 80, "held": 0, "leased": 0}
    # the window counts both calls and the late correction of the first one's tokens
    assert counts == [2, 10 + 25 + 10]


def test_close_waits_for_a_lease_being_taken_and_gives_everything_back() -> None:
    b = budget(10**9)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=4)
        admissions = [await admit(store, b) for _ in range(4)]  # the last one runs low
        assert store._tasks  # a slice is being taken ahead
        await asyncio.sleep(0)  # its request is on its way to Redis
        for a in admissions:
            settle_call(store, b, a, 40, [], 0)
        await store.close()

    asyncio.run(scenario())
    assert fields(b) == {**fields(b), "spent": 160, "held": 0, "leased": 0}


def test_after_a_failed_report_no_call_is_admitted_on_slices() -> None:
    b = budget(10**9)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        first = await admit(store, b)
        real = store._redis.run

        async def flush_fails(script, keys, args):  # type: ignore[no-untyped-def]
            if script is scripts.FLUSH:
                raise control_store.ControlUnavailable("Redis did not answer")
            return await real(script, keys, args)

        store._redis.run = flush_fails  # type: ignore[method-assign]
        with pytest.raises(control_store.ControlUnavailable):
            await store.flush()
        during = await admit(store, b)  # checked in Redis, one by one
        store._redis.run = real  # type: ignore[method-assign]
        await store.flush()
        after = await admit(store, b)
        for a in (first, during, after):
            await settle(store, b, a)
        await store.close()
        return first, during, after

    first, during, after = asyncio.run(scenario())
    assert first.lease is not None and during.lease is None and after.lease is not None
    assert fields(b) == {**fields(b), "spent": 3 * HOLD, "held": 0, "leased": 0}


def test_what_a_dead_process_did_after_its_last_report_is_covered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = budget(10_000 * HOLD)
    monkeypatch.setattr(control_store, "OWNER_TTL_S", 0)

    async def scenario():  # type: ignore[no-untyped-def]
        dead, other = (
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=100),
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S),
        )
        first = await admit(dead, b)
        await dead.flush()  # its last report: one call in flight, nothing used
        settle_call(dead, b, first, 70)  # settled, never reported
        await admit(dead, b)  # in flight when the process dies
        dead.book = None
        await asyncio.sleep(0.01)
        redis.Redis.from_url(URL).hincrby(b.key, "spent", (10_000 - 100) * HOLD)
        exact = await admit(other, b)
        await other.close()
        return exact

    assert not asyncio.run(scenario()).allowed
    # the lapsed slice (100 calls) is spent in full: the 70 used and the call in flight
    # are in it; never counted short
    assert fields(b) == {**fields(b), "spent": 10_000 * HOLD, "held": 0, "leased": 0}


@pytest.mark.parametrize("lease_calls", [0, 8])
def test_a_budget_crossing_an_alert_percentage_is_told_once(lease_calls: int) -> None:
    b = budget(1000 * HOLD, alert_at=(50,))
    crossed: list[BudgetScope] = []

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(
            URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=lease_calls, on_crossed=crossed.append
        )
        admissions = []
        for _ in range(600):  # 60% of the budget, in calls that use their whole hold
            admissions.append(await admit(store, b))
            if len(admissions) == 20:
                for a in admissions:
                    await settle(store, b, a)
                admissions = []
        await store.close()

    asyncio.run(scenario())
    assert crossed == [b]
    assert fields(b) == {**fields(b), "spent": 600 * HOLD, "held": 0}


def raw_fields(b: BudgetScope) -> dict[str, int]:
    raw = redis.Redis.from_url(URL).hgetall(b.key)
    return {k.decode(): int(v) for k, v in raw.items()}


def report_lost(store: ControlStore):  # type: ignore[no-untyped-def]
    """Send the next report to Redis and drop its reply, as a timeout would."""
    keys, args, _ = store.book.report(time.monotonic())  # type: ignore[union-attr]
    return store._redis.run(scripts.FLUSH, keys, [leases.OWNER_TTL_S * 1000, *args])


def test_the_last_report_of_a_slice_counts_once_when_its_reply_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = budget(10**9)
    monkeypatch.setattr(leases, "FORGET_S", 0.2)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        a = await admit(store, b)
        settle_call(store, b, a, 40)
        store.book.budgets[b.key].closing = True  # type: ignore[union-attr]
        await report_lost(store)  # the slice is done in Redis; this process never heard
        await store.flush()  # the same figures again: Redis has the slice's tombstone
        after = raw_fields(b)
        await asyncio.sleep(0.3)
        await store.flush()  # the tombstone is forgotten
        await store.close()
        return after, raw_fields(b)

    after, forgotten = asyncio.run(scenario())
    assert after["spent"] == 40 and after["held"] == after["leased"] == 0
    assert [k for k in after if k.startswith("lu:")]  # the tombstone
    assert not [k for k in forgotten if ":" in k] and forgotten["spent"] == 40


def test_an_orphans_charge_counts_once_when_its_reply_is_lost() -> None:
    b = budget(10**9)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        a = await admit(store, b)
        r = redis.Redis.from_url(URL)
        r.delete(b.key)  # Redis restarted; the ledger had not seen the call yet
        r.hset(b.key, mapping={"spent": 0, "held": 0, "gen": 10**9})
        await store.flush()  # Redis does not know the slice: an orphan
        settle_call(store, b, a, 40)
        await report_lost(store)  # the charge lands, its reply does not
        await store.flush()
        await store.close()

    asyncio.run(scenario())
    assert fields(b) == {**fields(b), "spent": 40, "held": 0}


def test_a_lease_whose_reply_was_lost_is_given_back() -> None:
    b = budget(10**9)
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=10**6, tokens_per_minute=None, tenant_id="t"
    )

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        real = lose_replies(store, scripts.LEASE, "no reply in time")
        with pytest.raises(control_store.ControlUnavailable):
            await admit(store, b, [rate])
        during = fields(b)
        store._redis.run = real  # type: ignore[method-assign]
        await store.flush()
        window = redis.Redis.from_url(URL).hget(store._windows([rate], time.time())[0][0], "r")
        await store.close()
        return during, int(window or 0)

    during, window_requests = asyncio.run(scenario())
    assert during["held"] == during["leased"] == 8 * HOLD  # taken, though never heard
    assert fields(b) == {**fields(b), "held": 0, "leased": 0, "spent": 0}
    assert window_requests == 0


def test_a_slice_of_a_limit_that_changed_takes_no_more_calls() -> None:
    b = budget(10**9)
    lowered = BudgetScope(b.key, b.kind, b.label, 10**8, b.ttl_s, b.load_used)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        first = await admit(store, b)
        second = await admit(store, lowered)
        await settle(store, b, first)
        await settle(store, lowered, second)
        await store.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert first.lease is not None and second.lease is not None
    assert second.lease.budgets[0] is not first.lease.budgets[0]
    assert second.lease.budgets[0].limit == 10**8
    assert fields(b) == {**fields(b), "spent": 2 * HOLD, "held": 0, "leased": 0}


def test_an_alert_hook_that_fails_stops_no_report() -> None:
    b = budget(1000 * HOLD, alert_at=(1,))

    def broken(budget: BudgetScope) -> None:
        raise RuntimeError("executor shut down")

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8, on_crossed=broken)
        for _ in range(3):
            await settle(store, b, await admit(store, b))
        await store.close()

    asyncio.run(scenario())
    assert fields(b) == {**fields(b), "spent": 3 * HOLD, "held": 0, "leased": 0}


def window_slice(requests: int, used: int, age_s: float, rpm: int = 0, seen: int = 0):  # type: ignore[no-untyped-def]
    now = time.monotonic()
    w = leases.WindowSlice("rk:w", "s", rpm, 0, requests, 10 * requests, seen, 0, born=now - age_s)
    w.used_r = used
    return w, now


def test_a_window_slice_used_up_fast_is_followed_by_a_larger_one() -> None:
    # 32 requests in 10 ms: 3,200 a second; the successor grows 8-fold at most per renewal
    w, now = window_slice(32, 32, 0.01)
    assert leases.paced_calls(w, 10, now) == 8 * 32
    # 32 requests in 4 s: fewer than a slice of LEASE_CALLS already covers
    w, now = window_slice(32, 32, 4.0)
    assert leases.paced_calls(w, 10, now) == 8
    # at 1,000 a second (600 used in 0.6 s) the successor covers about a second of them
    w, now = window_slice(1000, 600, 0.6)
    assert 990 <= leases.paced_calls(w, 10, now) <= 1000


def test_a_grown_window_slice_stays_a_small_share_of_the_room_left() -> None:
    # the window had 100,000 of 1,000,000 requests counted: a successor asks for at most
    # 1/32 of the 900,000 left, so LEASE (which wants 16 times the slice left) grants it
    w, now = window_slice(100_000, 100_000, 0.01, rpm=1_000_000, seen=100_000)
    assert leases.paced_calls(w, 10, now) == 900_000 // 32
    # near the limit the pace is no reason to grow: the book asks for LEASE_CALLS again
    book = leases.LeaseBook(lease_calls=8)
    w, _ = window_slice(64, 64, 0.01, rpm=10_000, seen=9_900)
    book.windows["rk:w"] = w
    _, counts = book.wanted([], [], ["rk:w"], 10)
    assert counts == [(8, 80)]
    # far from it, a fast slice's successor is sized for its pace
    w, _ = window_slice(64, 64, 0.01, rpm=10**9, seen=64)
    book.windows["rk:w"] = w
    _, counts = book.wanted([], [], ["rk:w"], 10)
    assert counts == [(512, 5120)]


def test_a_busy_process_takes_a_few_window_slices_not_one_per_lease_calls() -> None:
    rate = RateScope(
        "key", str(uuid.uuid4()), requests_per_minute=10**9, tokens_per_minute=None, tenant_id="t"
    )
    b = budget(10**12)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        sent = []
        run = store._redis.run

        async def counting(script, keys, args):  # type: ignore[no-untyped-def]
            sent.append(script)
            return await run(script, keys, args)

        store._redis.run = counting  # type: ignore[method-assign]
        admissions = []
        for _ in range(2000):
            admission = await admit(store, b, [rate])
            settle_call(store, b, admission, 1, [rate])
            admissions.append(admission)
        await store.close()
        return admissions, sent.count(scripts.LEASE)

    admissions, leases_taken = asyncio.run(scenario())
    assert all(a.allowed and a.lease is not None for a in admissions)
    # slices of 8 would take about 2000 / 6 LEASE scripts; paced ones grow 8-fold a time
    assert leases_taken <= 10
