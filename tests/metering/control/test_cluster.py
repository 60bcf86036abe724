"""Spend control on a real 3-node Redis Cluster (tests/redis_cluster.py): every script's
keys share one hash slot (the tenant's tag), and admission, settlement, cancel, leases,
rate windows, reasoning budgets and the counter rebuild work with keys spread over the
nodes; the hot-path client follows MOVED and ASK."""

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from config.redis_clients import redis_client
from metering.control.budgets import budget_list, budget_scopes
from metering.control.counters import control_counters_rebuild
from metering.control.redis_pipe import ClusterPipe, Script, key_slot_of
from metering.control.scopes import BudgetCost, BudgetScope, Grant, RateScope, to_nano
from metering.control.scripts import CANCEL
from metering.control.store import (
    ControlStore,
    admit_keys,
    cancel_keys,
    holds_key,
    lease_keys,
    load_keys,
)
from metering.control.terms import BalanceTerms, TenantTerms
from metering.ledger.orm import usage_records_write
from metering.tasks import control_counters_rebuild as rebuild_task
from tests.factories import ApiKeyFactory
from tests.metering.control.test_budgets import setup_budgets
from tests.metering.control.timeouts import REDIS_TIMEOUT_S
from tests.redis_cluster import redis_cluster
from tests.usage_helpers import usage_row

HOLD = 1_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fresh 3-node cluster (redis-cluster://, one node as the seed)."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield f"redis-cluster://127.0.0.1:{ports[0]}"


def client(url: str) -> RedisCluster:
    made = redis_client(url)
    assert isinstance(made, RedisCluster)
    return made


def tenants_on_every_node(url: str, count: int = 6) -> list[uuid.UUID]:
    """Tenants whose keys land on all three nodes (so a test crosses nodes)."""
    nodes = client(url).get_primaries()
    by_node: dict[str, list[uuid.UUID]] = {n.name: [] for n in nodes}
    cluster_client = client(url)
    while min(len(v) for v in by_node.values()) < count // len(nodes):
        tenant = uuid.uuid4()
        node = cluster_client.get_node_from_key(f"rk:{{{tenant}}}:x")
        by_node[node.name].append(tenant)
    return [t for ts in by_node.values() for t in ts[: count // len(nodes)]]


def tagged_budget(tenant: uuid.UUID, limit: int, used: int = 0, kind: str = "spend") -> BudgetScope:
    key = f"rk:{{{tenant}}}:{kind}:tenant:{tenant}:2026-12"
    return BudgetScope(key, kind, f"test {kind}", limit, 120, lambda: used, tenant_id=tenant)


def rate(tenant: uuid.UUID, name: str = "tenant", rpm: int | None = 2) -> RateScope:
    return RateScope(name, str(tenant), rpm, 10**9, tenant_id=str(tenant))


async def direct(fn):  # type: ignore[no-untyped-def]
    return fn()


async def admit(store, budgets, holds, rates=()):  # type: ignore[no-untyped-def]
    return await store.admit(
        budgets=list(budgets),
        costs=[BudgetCost(h, 0) for h in holds],
        grant=Grant(1, 1),
        rates=list(rates),
        est_tokens=1,
        load_in_thread=direct,
    )


def spent_held(url: str, b: BudgetScope) -> tuple[int, int]:
    raw = client(url).hgetall(b.key)
    return int(raw[b"spent"]), int(raw[b"held"])


@pytest.mark.django_db
def test_every_scripts_keys_share_one_slot_for_every_budget_and_rate_kind() -> None:
    """The keys of one invocation of each script, for a call under every budget kind
    (tenant and key spend, balance, plan and key reasoning) and both rate kinds."""
    key, _, _ = setup_budgets()
    terms = TenantTerms(
        spend_rates={},
        monthly_reasoning_tokens=1000,
        balance=BalanceTerms(available=Decimal(5), epoch="e1", load_used=lambda: Decimal(0)),
    )
    specs = budget_list(
        tenant_id=key.tenant_id, api_key_id=key.pk, balance=True, plan_reasoning_tokens=1000
    )
    budgets = budget_scopes(
        specs, tenant_id=key.tenant_id, tenant_terms=terms, now=datetime.now(UTC)
    )
    assert {b.kind for b in budgets} == {"spend", "balance", "reasoning"} and len(budgets) == 5
    rates = [
        RateScope("key", str(key.pk), 10, 10, tenant_id=str(key.tenant_id)),
        RateScope("tenant", str(key.tenant_id), 10, 10, tenant_id=str(key.tenant_id)),
    ]
    windows = [r.window_key(123) for r in rates]
    invocations = {
        "ADMIT/SETTLE": admit_keys(budgets, windows),
        "CANCEL": cancel_keys(budgets),
        "LEASE/FLUSH": lease_keys(budgets, windows),
        **{f"LOAD {b.kind}": load_keys(b.key) for b in budgets},
        **{f"RECALL/REBUILD {b.kind}": [b.key] for b in budgets},
        **{f"REAP {b.kind}": [b.key, holds_key(b.key)] for b in budgets},
    }
    for script, keys in invocations.items():
        assert len({key_slot(k.encode()) for k in keys}) == 1, (script, keys)
    other = ApiKeyFactory()  # another tenant's keys hash elsewhere (most likely)
    assert rates[0].window_key(1) != RateScope(
        "key", str(other.pk), 1, 1, tenant_id=str(other.tenant_id)
    ).window_key(1)


def test_admit_settle_load_and_rate_windows_across_the_nodes(cluster: str) -> None:
    tenants = tenants_on_every_node(cluster)
    budgets = [tagged_budget(t, 10 * HOLD, used=HOLD) for t in tenants]

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(cluster, redis_timeout_s=REDIS_TIMEOUT_S)
        try:
            results = []
            for b, t in zip(budgets, tenants, strict=True):
                first = await admit(store, [b], [5 * HOLD], [rate(t)])
                second = await admit(store, [b], [5 * HOLD], [rate(t)])  # 1 + 5 + 5 > 10
                settled = await store.settle(
                    budgets=[b],
                    holds=[5 * HOLD],
                    actuals=[2 * HOLD],
                    rates=[rate(t)],
                    token_delta=0,
                    generations=first.generations,
                )
                third = await admit(store, [b], [HOLD], [rate(t)])  # the window's 2nd call
                fourth = await admit(store, [b], [HOLD], [rate(t)])  # over 2 a minute
                results.append((first, second, settled, third, fourth))
            return results
        finally:
            await store.close()

    for b, (first, second, settled, third, fourth) in zip(
        budgets, asyncio.run(scenario()), strict=True
    ):
        assert first.allowed and not second.allowed and second.reason == "budget"
        assert settled == [3 * HOLD]  # loaded with 1, plus 2 used
        assert third.allowed and not fourth.allowed and fourth.reason == "requests"
        assert spent_held(cluster, b) == (3 * HOLD, HOLD)  # the third call's hold is out
    nodes = {client(cluster).get_node_from_key(b.key).name for b in budgets}
    assert len(nodes) == 3  # the budgets really were on every node


def test_a_lost_admission_is_cancelled(cluster: str) -> None:
    (tenant, *_) = tenants_on_every_node(cluster)
    b = tagged_budget(tenant, 10 * HOLD)

    async def scenario() -> int:
        store = ControlStore(cluster, redis_timeout_s=REDIS_TIMEOUT_S)
        try:
            admitted = await admit(store, [b], [4 * HOLD])
            assert admitted.allowed
            pipe = store._redis
            return int(await pipe.run(CANCEL, cancel_keys([b]), [1, admitted.generations[0]]))
        finally:
            await store.close()

    assert asyncio.run(scenario()) == 1
    assert spent_held(cluster, b) == (0, 0)
    assert not client(cluster).exists(holds_key(b.key))


def test_leased_calls_of_many_tenants_report_per_slot_and_count_exactly(cluster: str) -> None:
    """One process leases slices of budgets and windows on every node; its flushes go
    one per slot; every call's use lands in its own budget, once."""
    tenants = tenants_on_every_node(cluster)
    budgets = [tagged_budget(t, 10**9) for t in tenants]
    calls = 40

    async def scenario() -> None:
        store = ControlStore(cluster, redis_timeout_s=REDIS_TIMEOUT_S, lease_calls=8)
        try:
            leased, exact = 0, []
            for _ in range(calls):
                for b, t in zip(budgets, tenants, strict=True):
                    a = await admit(store, [b], [HOLD], [rate(t, rpm=10**6)])
                    assert a.allowed
                    leased += a.lease is not None
                    settled = store.settle(
                        budgets=[b],
                        holds=[HOLD],
                        actuals=[7],
                        rates=[rate(t, rpm=10**6)],
                        token_delta=0,
                        generations=a.generations,
                        lease=a.lease,
                    )
                    if settled is not None:
                        exact.append(settled)
            await asyncio.gather(*exact)
            assert leased > calls  # most calls went on slices
        finally:
            await store.close()  # reports every slice until Redis has them all

    asyncio.run(scenario())
    for b in budgets:
        assert spent_held(cluster, b) == (calls * 7, 0)
        raw = client(cluster).hgetall(b.key)
        assert int(raw.get(b"leased", 0)) == 0


@pytest.mark.django_db
def test_reasoning_and_spend_budgets_of_a_real_key_on_the_cluster(cluster: str) -> None:
    """A key's real budget list (spend, reasoning: tokens) held and settled together."""
    key, _, _ = setup_budgets()
    terms = TenantTerms(spend_rates={}, monthly_reasoning_tokens=1000)
    specs = budget_list(
        tenant_id=key.tenant_id, api_key_id=key.pk, balance=False, plan_reasoning_tokens=1000
    )
    budgets = [  # nothing used yet (read here: the ORM stays out of the event loop)
        dataclasses.replace(b, load_used=lambda: 0)
        for b in budget_scopes(
            specs, tenant_id=key.tenant_id, tenant_terms=terms, now=datetime.now(UTC)
        )
    ]
    reasoning = [i for i, b in enumerate(budgets) if b.kind == "reasoning"]
    assert len(reasoning) == 2 and len(budgets) == 4
    costs = [
        BudgetCost(0, 1) if b.kind == "reasoning" else BudgetCost(to_nano(Decimal("0.01")), 0)
        for b in budgets
    ]

    async def scenario():  # type: ignore[no-untyped-def]
        store = ControlStore(cluster, redis_timeout_s=REDIS_TIMEOUT_S)
        try:
            budgets_ = list(budgets)
            first = await store.admit(
                budgets=budgets_, costs=costs, grant=Grant(1, 150), rates=[], est_tokens=1,
                load_in_thread=direct,
            )  # fmt: skip
            assert first.allowed and first.output_tokens == 150
            holds = [c.fixed + c.per_token * 150 for c in costs]
            actuals = [120 if b.kind == "reasoning" else to_nano(Decimal("0.004")) for b in budgets]
            await store.settle(
                budgets=budgets_, holds=holds, actuals=actuals, rates=[], token_delta=0,
                generations=first.generations,
            )  # fmt: skip
            # the key's reasoning budget (200) has 80 left: a call asking 150 is refused
            second = await store.admit(
                budgets=budgets_, costs=costs, grant=Grant(150, 150), rates=[], est_tokens=1,
                load_in_thread=direct,
            )  # fmt: skip
            return second
        finally:
            await store.close()

    second = asyncio.run(scenario())
    assert not second.allowed and second.budget is not None and second.budget.kind == "reasoning"
    assert second.left == 80
    for i in reasoning:
        assert spent_held(cluster, budgets[i]) == (120, 0)


@pytest.mark.django_db
def test_the_rebuild_scans_every_node_and_returns_budgets_to_the_ledger(
    cluster: str, settings
) -> None:  # type: ignore[no-untyped-def]
    """The beat task on a cluster URL: stale budgets of tenants on every node (a dead
    process's lapsed slice) go back to the ledger's figure."""
    settings.REDIS_URL = cluster
    settings.RECKON_CONTROL_HOLD_TTL_SECONDS = 0
    keys = [ApiKeyFactory() for _ in range(9)]
    c = client(cluster)
    names = []
    for api_key in keys:
        usage_records_write([usage_row(api_key, spend_usd=Decimal("0.25"))])
        name = f"rk:{{{api_key.tenant_id}}}:spend:tenant:{api_key.tenant_id}:total"
        c.hset(
            name,
            mapping={"spent": 0, "held": 32 * HOLD, "gen": 1, "leased": 32 * HOLD}
            | {"lo:host:7:abc:1": 32 * HOLD, "lt:host:7:abc:1": 1},
        )
        names.append(name)
    assert len({c.get_node_from_key(n).name for n in names}) > 1
    assert rebuild_task.delay().get() >= len(keys)
    for name in names:
        state = {k.decode(): int(v) for k, v in c.hgetall(name).items()}
        assert state == {"spent": to_nano(Decimal("0.25")), "held": 0, "gen": 1, "leased": 0}
    # and the function itself, on the cluster client: nothing stale is left
    assert control_counters_rebuild(client=c, grace_s=0).rebuilt == 0


def test_moved_and_ask_are_followed(cluster: str) -> None:
    """A stale slot map (MOVED) and a slot being migrated (ASK) are followed, not
    reported as an unavailable store."""
    c = client(cluster)
    incr = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    tenant = uuid.uuid4()
    key = f"rk:{{{tenant}}}:moved"
    slot = key_slot_of(key)
    owner = c.get_node_from_key(key)
    others = [n for n in c.get_primaries() if n.name != owner.name]

    async def scenario() -> list[int]:
        pipe = ClusterPipe(cluster)
        try:
            first = await pipe.run(incr, [key], [1])
            assert pipe._slots is not None
            pipe._slots[slot] = (others[0].host, others[0].port)  # a stale map: MOVED
            second = await pipe.run(incr, [key], [1])
            assert pipe._slots[slot] == (owner.host, owner.port)  # learned again
            # migrate the slot of a fresh key to another node: the owner answers ASK
            fresh = f"rk:{{{uuid.uuid4()}}}:asked"
            source = c.get_node_from_key(fresh)
            target = next(n for n in c.get_primaries() if n.name != source.name)
            fresh_slot = key_slot_of(fresh)
            src = redis.Redis(host=source.host, port=source.port)
            dst = redis.Redis(host=target.host, port=target.port)
            src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
            dst.execute_command("CLUSTER SETSLOT", fresh_slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", fresh_slot, "MIGRATING", dst_id)
            try:
                asked = await pipe.run(incr, [fresh], [5])  # no such key at the source: ASK
                on_target = dst.execute_command("ASKING") and int(dst.execute_command("GET", fresh))
            finally:  # finish the migration: the slot now belongs to the target
                for node in (src, dst):
                    node.execute_command("CLUSTER SETSLOT", fresh_slot, "NODE", dst_id)
            return [first, second, asked, on_target]
        finally:
            await pipe.close()

    assert asyncio.run(scenario()) == [1, 2, 5, 5]


def test_the_other_redis_users_work_on_the_cluster(cluster: str, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Failed-login counting (a transaction on one key) and the ledger spool's reports
    (keys on several nodes, read back with one MGET per node) on a cluster URL."""
    from api import throttling
    from metering.ledger.spool import spool_outstanding, spool_report

    settings.REDIS_URL = cluster
    settings.RECKON_AUTH_FAILURE_LIMIT = 2
    address = f"198.51.100.{uuid.uuid4().int % 250}"
    throttling.local_counter = throttling.LocalFailureCounter()  # only Redis counts here
    for _ in range(2):
        throttling.auth_failures_record(address)
    assert int(client(cluster).get(throttling.KEY_PREFIX + address)) == 2
    with pytest.raises(throttling.AuthFailuresThrottled):
        throttling.auth_failures_check(address)

    writers = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(12)]
    for i, writer in enumerate(writers):
        (tmp_path / f"ledger-{writer}.jsonl").write_text("{}\n" * (i + 1))
    reported = spool_report(spool_dir=tmp_path, redis_url=cluster, writers=writers, ttl_seconds=60)
    keys = [f"rk:spool:{w}" for w in writers]
    assert len({client(cluster).get_node_from_key(k).name for k in keys}) > 1
    empty = tmp_path / "elsewhere"  # another machine: only Redis knows
    empty.mkdir()
    assert spool_outstanding(spool_dir=empty, redis_url=cluster) == reported
    assert reported == {w: i + 1 for i, w in enumerate(writers)}
    spool_report(
        spool_dir=empty, redis_url=cluster, writers=writers, ttl_seconds=60
    )  # all replayed: the keys go
    assert spool_outstanding(spool_dir=empty, redis_url=cluster) == {}
