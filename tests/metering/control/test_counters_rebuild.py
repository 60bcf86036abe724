"""Spend-control counters that never stay wrong, against the real Redis: a hold whose
admission reply was lost is given back, a hold never settled expires and is reaped, a dead
process's slice lapses, and the periodic rebuild (metering.control.counters) returns what they
kept counted to the ledger's figure, all-time budgets included, without ever letting
spend pass a limit while calls run beside it."""

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis

from metering.control import leases, scripts
from metering.control import store as control_store
from metering.control.budgets import budget_loader
from metering.control.counters import control_counters_rebuild
from metering.control.scopes import BudgetCost, BudgetScope, Grant, to_nano
from metering.control.store import ControlStore, holds_key
from metering.ledger.orm import usage_records_write
from metering.ledger.spool import SPOOL_KEY_PREFIX, SPOOL_WRITERS_KEY
from metering.tasks import control_counters_rebuild as rebuild_task
from tests.factories import ApiKeyFactory
from tests.metering.control.lost_replies import lose_replies
from tests.metering.control.timeouts import REDIS_TIMEOUT_S
from tests.usage_helpers import usage_row

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def no_spool_reported_by_other_tests() -> None:
    """A rebuild waits while any ledger writer reports spooled records in Redis; a report
    another test's server left behind (its private spool never replayed) must not make
    these tests skip. Each test here sets the reports it needs itself."""
    client = redis.Redis.from_url(URL)
    try:
        writers = [w.decode() for w in client.smembers(SPOOL_WRITERS_KEY)]
        stale = [key.decode() for key in client.scan_iter(SPOOL_KEY_PREFIX + "*")]
        if stale:
            client.delete(*stale)
        if writers:
            client.srem(SPOOL_WRITERS_KEY, *writers)
    finally:
        client.close()


HOLD = 100


class Ledger:
    """What the usage records of each budget add up to (a record commits before its call
    settles, as in the proxy)."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}
        self.lock = threading.Lock()
        self.read_delay_s = 0.0

    def commit(self, key: str, amount: int) -> None:
        with self.lock:
            self.used[key] = self.used.get(key, 0) + amount

    def loader_for(self, key: str) -> Callable[[], int]:
        def load() -> int:
            with self.lock:
                figure = self.used.get(key, 0)
            time.sleep(self.read_delay_s)  # a slow query: settlements land meanwhile
            return figure

        return load


def budget(ledger: Ledger, limit: int, ttl_s: int = 120) -> BudgetScope:
    tenant = uuid.uuid4()
    key = f"rk:{{{tenant}}}:spend:tenant:{tenant}:" + ("total" if ttl_s == 0 else "2026-12")
    return BudgetScope(
        key=key,
        kind="spend",
        label="test spend",
        limit=limit,
        ttl_s=ttl_s,
        load_used=ledger.loader_for(key),
    )


async def direct(fn):  # type: ignore[no-untyped-def]
    return fn()


def fields(b: BudgetScope) -> dict[str, int]:
    raw = redis.Redis.from_url(URL).hgetall(b.key)
    return {k.decode(): int(v) for k, v in raw.items() if b":" not in k}


def rebuild(ledger: Ledger, b: BudgetScope, grace_s: float = 0.0):  # type: ignore[no-untyped-def]
    """One run of the periodic rebuild, on this test's budget only."""
    return control_counters_rebuild(
        client=redis.Redis.from_url(URL),
        loader_for=ledger.loader_for,
        grace_s=grace_s,
        patterns=[b.key],
        legacy_patterns=(),
    )


async def admit(store: ControlStore, b: BudgetScope, hold: int = HOLD):  # type: ignore[no-untyped-def]
    return await store.admit(
        budgets=[b],
        costs=[BudgetCost(hold, 0)],
        grant=Grant(1, 1),
        rates=[],
        est_tokens=1,
        load_in_thread=direct,
    )


async def settle(store: ControlStore, b: BudgetScope, admission, actual: int, hold: int = HOLD):  # type: ignore[no-untyped-def]
    settled = store.settle(
        budgets=[b],
        holds=[hold],
        actuals=[actual],
        rates=[],
        token_delta=0,
        generations=admission.generations,
        lease=admission.lease,
    )
    if settled is not None:
        return await settled
    await store.flush()
    return None


def test_a_hold_whose_admission_reply_was_lost_is_given_back() -> None:
    ledger = Ledger()
    b = budget(ledger, 10 * HOLD)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S)
        real = lose_replies(store, scripts.ADMIT, "no reply within 1.0s")
        with pytest.raises(control_store.ControlUnavailable):
            await admit(store, b, 9 * HOLD)  # the caller is refused (fail closed)
        store._redis.run = real  # type: ignore[method-assign]
        during = fields(b)
        await asyncio.sleep(0.2)  # the cancel goes out once Redis answers
        after = fields(b)
        again = await admit(store, b, 9 * HOLD)
        await settle(store, b, again, 0, 9 * HOLD)
        await store.close()
        return during, after, again

    during, after, again = asyncio.run(scenario())
    assert during["held"] == 9 * HOLD  # Redis took the hold; the caller never heard
    assert after["held"] == 0 and after["spent"] == 0  # given back: the call never ran
    assert again.allowed
    assert not redis.Redis.from_url(URL).exists(holds_key(b.key))


def test_a_lost_admission_that_runs_after_its_first_cancel_is_still_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admission was still queued in Redis on the dropped connection: the first cancel
    finds nothing, the admission then lands, and the cancel tried again releases it."""
    ledger = Ledger()
    b = budget(ledger, 10 * HOLD)
    monkeypatch.setattr(control_store, "CANCEL_AGAIN_S", 0.2)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S)
        await admit(store, b, 0)  # the budget is loaded
        real = store._redis.run
        queued = []

        async def stuck(script, keys, args):  # type: ignore[no-untyped-def]
            if script is scripts.ADMIT:
                queued.append((keys, args))
                raise control_store.ControlUnavailable("no reply within 1.0s")
            return await real(script, keys, args)

        store._redis.run = stuck  # type: ignore[method-assign]
        with pytest.raises(control_store.ControlUnavailable):
            await admit(store, b, 9 * HOLD)
        await asyncio.sleep(0.1)  # the first cancel ran and found nothing
        (keys, args) = queued[0]
        await real(scripts.ADMIT, keys, args)  # the queued admission runs only now
        landed = fields(b)
        await asyncio.sleep(0.3)
        after = fields(b)
        await store.close()
        return landed, after

    landed, after = asyncio.run(scenario())
    assert landed["held"] == 9 * HOLD
    assert after["held"] == 0 and after["spent"] == 0


@pytest.mark.parametrize("ttl_s", [120, 0], ids=["monthly", "all-time"])
def test_a_hold_never_settled_expires_and_the_budget_returns_to_the_ledger(ttl_s: int) -> None:
    ledger = Ledger()
    b = budget(ledger, 10 * HOLD, ttl_s)

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, hold_ttl_s=0.3)
        lost = await admit(store, b, 6 * HOLD)
        # its call ran and its record committed (37 used), but the settlement never
        # reached Redis (the process died right after the commit)
        ledger.commit(b.key, 37)
        refused = await admit(store, b, 6 * HOLD)
        early = rebuild(ledger, b, grace_s=60)  # not expired yet: live, nothing changes
        await asyncio.sleep(0.4)
        late = rebuild(ledger, b, grace_s=60)  # expired: reaped, and nothing else is out
        rebuilt = fields(b)
        again = await admit(store, b, 9 * HOLD)
        await store.close()
        return lost, refused, early, late, rebuilt, again

    lost, refused, early, late, rebuilt, again = asyncio.run(scenario())
    assert lost.allowed and not refused.allowed
    assert early.stale == 0 and fields_ok(early)
    assert late.rebuilt == 1
    assert rebuilt["held"] == 0 and rebuilt["spent"] == 37  # the ledger's figure
    assert "stale" not in rebuilt
    assert again.allowed  # 37 + 900 <= 1000


def fields_ok(result) -> bool:  # type: ignore[no-untyped-def]
    return result.rebuilt == 0 and not result.skipped


@pytest.mark.parametrize("ttl_s", [120, 0], ids=["monthly", "all-time"])
def test_a_dead_processs_slice_lapses_and_the_budget_returns_to_the_ledger(
    monkeypatch: pytest.MonkeyPatch, ttl_s: int
) -> None:
    ledger = Ledger()
    limit = 40 * 2 * HOLD  # room for a slice of 2 calls (16 slices' worth is left)
    b = budget(ledger, limit, ttl_s)
    monkeypatch.setattr(control_store, "OWNER_TTL_S", 0)

    async def scenario():  # type: ignore[no-untyped-def]
        dead = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=2)
        first = await admit(dead, b)
        assert first.lease is not None
        await dead.flush()
        ledger.commit(b.key, 70)  # its record committed
        await settle(dead, b, first, 70)  # reported: 70 spent
        second = await admit(dead, b)  # in flight when the process dies
        assert second.lease is not None
        dead.book = None  # gone: never reports again, never closes
        await asyncio.sleep(0.01)
        before = fields(b)
        within_grace = rebuild(ledger, b, grace_s=0.3)  # lapsed now; its calls may still run
        lapsed = fields(b)
        await asyncio.sleep(0.4)
        result = rebuild(ledger, b, grace_s=0.3)
        after = fields(b)
        other = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S)
        big = await admit(other, b, limit - 70)  # all that is left, by the ledger
        await other.close()
        return before, within_grace, lapsed, result, after, big

    before, within_grace, lapsed, result, after, big = asyncio.run(scenario())
    assert before["held"] == before["leased"] > 0  # the slice is still out in Redis
    assert within_grace.busy == 1 and within_grace.rebuilt == 0
    assert lapsed["held"] == lapsed["leased"] == 0  # lapsed: counted as spent in full
    assert lapsed["spent"] >= 2 * HOLD
    assert result.rebuilt == 1
    assert after["spent"] == 70 and after["held"] == 0 and after["leased"] == 0
    assert big.allowed


def test_no_rebuild_while_a_ledger_writer_has_records_spooled() -> None:
    ledger = Ledger()
    b = budget(ledger, 10 * HOLD)
    client = redis.Redis.from_url(URL)
    client.hset(b.key, mapping={"spent": 500, "held": 0, "gen": 1, "stale": 1})
    spool = f"rk:spool:test-{uuid.uuid4()}"
    client.set(spool, 3, ex=60)
    try:
        skipped = rebuild(ledger, b)
    finally:
        client.delete(spool)
    assert skipped.skipped and fields(b)["spent"] == 500
    assert rebuild(ledger, b).rebuilt == 1 and fields(b)["spent"] == 0


@pytest.mark.parametrize("lease_calls", [0, 4], ids=["exact", "leased"])
def test_a_rebuild_racing_with_calls_never_lets_spend_pass_the_limit(
    monkeypatch: pytest.MonkeyPatch, lease_calls: int
) -> None:
    """Callers admit, commit their record, then settle (the proxy's order), on the exact
    path or on slices (closed after 20 ms idle here, so the budget has quiet moments),
    with quiet gaps between calls; meanwhile rebuilds run back to back on the same
    budget (marked stale each time, as after a reap) with a slow ledger read, so that
    settlements land between a rebuild's look and its write. Every call uses its whole
    hold: the calls admitted must never be more than the budget covers."""
    monkeypatch.setattr(leases, "IDLE_S", 0.02)
    monkeypatch.setattr(control_store, "FLUSH_S", 0.005)
    ledger = Ledger()
    ledger.read_delay_s = 0.004
    capacity = 300
    b = budget(ledger, capacity * HOLD)
    client = redis.Redis.from_url(URL)
    stop = threading.Event()
    rebuilt = 0

    def rebuilder() -> None:
        nonlocal rebuilt
        while not stop.is_set():
            client.hset(b.key, "stale", 1)
            rebuilt += rebuild(ledger, b).rebuilt

    rng = random.Random(11)

    async def scenario() -> int:
        store = ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=lease_calls)
        admitted = 0

        async def caller() -> None:
            nonlocal admitted
            while True:
                a = await admit(store, b)
                if not a.allowed:
                    return
                admitted += 1
                await asyncio.sleep(rng.random() / 1000)
                ledger.commit(b.key, HOLD)
                await settle(store, b, a, HOLD)
                await asyncio.sleep(rng.random() / 250)  # a quiet moment, now and then

        await admit(store, b, 0)  # loads the budget
        thread = threading.Thread(target=rebuilder)
        thread.start()
        try:
            await asyncio.gather(*(caller() for _ in range(2)))
        finally:
            stop.set()
            thread.join()
        await store.close()
        return admitted

    admitted = asyncio.run(scenario())
    assert rebuilt > 0  # rebuilds did land between calls
    assert admitted <= capacity  # never past the limit
    assert ledger.used[b.key] == admitted * HOLD <= capacity * HOLD
    assert fields(b)["spent"] >= ledger.used[b.key]  # never counted short


@pytest.mark.django_db
def test_budget_keys_are_read_back_from_the_ledger() -> None:
    """The rebuild finds each budget's figure from its key alone: spend of a tenant and of
    a key, monthly and all time, and reasoning tokens, from the real ledger."""
    api_key = ApiKeyFactory()
    tenant = api_key.tenant_id
    now = datetime.now(UTC)
    usage_records_write(
        [
            usage_row(api_key, started_at=now, spend_usd=Decimal("0.25"), reasoning_tokens=40),
            usage_row(api_key, started_at=now, spend_usd=Decimal("0.50"), reasoning_tokens=2),
        ]
    )
    month = f"{now:%Y-%m}"
    spent = to_nano(Decimal("0.75"))
    expected = {
        f"rk:{{{tenant}}}:spend:tenant:{tenant}:total": spent,
        f"rk:{{{tenant}}}:spend:tenant:{tenant}:{month}": spent,
        f"rk:{{{tenant}}}:spend:key:{api_key.pk}:total": spent,
        f"rk:{{{tenant}}}:spend:key:{api_key.pk}:{month}": spent,
        f"rk:{{{tenant}}}:reasoning:tenant:{tenant}:{month}": 42,
        f"rk:{{{tenant}}}:reasoning:key:{api_key.pk}:{month}": 42,
    }
    for key, figure in expected.items():
        loader = budget_loader(key)
        assert loader is not None, key
        assert loader() == figure, key
    assert budget_loader(f"rk:{{{tenant}}}:balance:{tenant}:0.0.0") is None  # no balance
    assert budget_loader(f"rk:{{{tenant}}}:spend:key:999999999:total") is None
    other = uuid.uuid4()  # a key budget filed under another tenant's tag is no name of ours
    assert budget_loader(f"rk:{{{other}}}:spend:key:{api_key.pk}:total") is None
    assert budget_loader(f"rk:{{{other}}}:spend:tenant:{tenant}:total") is None
    assert budget_loader(f"rk:spend:tenant:{tenant}:total") is None  # the old name


@pytest.mark.django_db
def test_the_beat_task_rebuilds_an_all_time_budget_from_the_ledger(settings) -> None:  # type: ignore[no-untyped-def]
    """The Celery task, as beat runs it every minute, on a tenant's all-time spend limit
    whose dead process's slice lapsed: spent goes back to the ledger's figure."""
    assert settings.CELERY_BEAT_SCHEDULE["control-counters-rebuild"]["schedule"] == 60.0
    settings.REDIS_URL = URL
    settings.RECKON_CONTROL_HOLD_TTL_SECONDS = 0
    api_key = ApiKeyFactory()
    usage_records_write([usage_row(api_key, spend_usd=Decimal("0.25"))])
    key = f"rk:{{{api_key.tenant_id}}}:spend:tenant:{api_key.tenant_id}:total"
    client = redis.Redis.from_url(URL)
    legacy = f"rk:spend:tenant:{api_key.tenant_id}:total"  # its name before the hash tag
    client.hset(legacy, mapping={"spent": 1, "held": 0, "gen": 1})
    slice_of_a_dead_process = {"lo:host:7:abc:1": 32 * HOLD, "lt:host:7:abc:1": 1}
    client.hset(
        key,
        mapping={"spent": 0, "held": 32 * HOLD, "gen": 1, "leased": 32 * HOLD}
        | slice_of_a_dead_process,
    )
    assert rebuild_task.delay().get() >= 1
    state = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
    assert state == {"spent": to_nano(Decimal("0.25")), "held": 0, "gen": 1, "leased": 0}
    assert not client.exists(legacy)  # idle (hold TTL 0 here), read by no process: it goes


def test_the_hold_register_of_a_budget_that_expired_goes() -> None:
    ledger = Ledger()
    b = budget(ledger, 10 * HOLD)
    client = redis.Redis.from_url(URL)
    client.zadd(holds_key(b.key), {f"7:{HOLD}": 1})  # a lost hold of a budget now gone
    rebuild(ledger, b)  # the budget's own key: nothing to do
    kept = client.exists(holds_key(b.key))
    control_counters_rebuild(
        client=client, loader_for=ledger.loader_for, patterns=[holds_key(b.key)]
    )
    assert kept and not client.exists(holds_key(b.key))


def test_budget_keys_of_the_old_names_go_only_when_idle() -> None:
    """A rolling deploy: processes of the earlier version still count budgets under the
    names before the tenant hash tag. The rebuild deletes such a key only once idle (no
    hold, no slice, untouched for the hold TTL); one with a call or a slice out stays,
    and goes once that call has settled and the key has been idle as long."""
    ledger = Ledger()
    tenant = uuid.uuid4()
    prefix = f"rk:spend:tenant:{tenant}:"  # the earlier version's names: no hash tag
    limit = 100 * HOLD

    def old_name(window: str) -> BudgetScope:
        key = prefix + window
        return BudgetScope(
            key=key,
            kind="spend",
            label="old",
            limit=limit,
            ttl_s=0,
            load_used=ledger.loader_for(key),
        )

    in_flight, settled, sliced, recent = (old_name(w) for w in ("a", "b", "c", "d"))
    client = redis.Redis.from_url(URL)

    def drop_idle():  # type: ignore[no-untyped-def]
        return control_counters_rebuild(
            client=client,
            loader_for=ledger.loader_for,
            grace_s=1.0,  # the hold TTL: idle this long
            patterns=(),
            legacy_patterns=[prefix + "*"],
        )

    async def scenario():  # type: ignore[no-untyped-def]
        old, old_leasing = (
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S),
            ControlStore(URL, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=2),
        )
        live = await admit(old, in_flight)  # its call still runs
        done = await admit(old, settled)
        ledger.commit(settled.key, 70)
        await settle(old, settled, done, 70)
        assert (await admit(old_leasing, sliced)).lease is not None  # a slice out
        await asyncio.sleep(2.1)  # idle for longer than the hold TTL
        touched = await admit(old, recent)  # a call just settled: not idle
        await settle(old, recent, touched, 0)
        first = drop_idle()
        kept = {b.key: client.exists(b.key) == 1 for b in (in_flight, sliced, recent)}
        held = fields(in_flight)["held"]
        await settle(old, in_flight, live, 30)  # the call ends
        await asyncio.sleep(2.1)
        second = drop_idle()
        await old.close()
        await old_leasing.close()
        return first, kept, held, second

    first, kept, held, second = asyncio.run(scenario())
    assert first.legacy == 1 and first.legacy_kept == 3
    assert not client.exists(settled.key) and not client.exists(holds_key(settled.key))
    assert kept == {in_flight.key: True, sliced.key: True, recent.key: True}
    assert held == HOLD  # the live hold survived the rebuild untouched
    assert second.legacy == 2  # the settled call's budget and the one touched before
    assert not client.exists(in_flight.key) and not client.exists(holds_key(in_flight.key))
    assert client.exists(sliced.key)  # its slice is still out (never reported back)
