"""`manage.py serve --workers 2` through real processes: every limit holds exactly across
the two workers, and the ledger holds one record per call the upstream served.

The server is started once per lease setting (slices of RECKON_CONTROL_LEASE_CALLS=32
calls, and 0: every call on the exact per-call script); the official openai SDK is the
client, the built-in simulator the upstream, PostgreSQL and Redis the shared state. That
both workers served a burst is shown without asking the server: each connection's
server end is found among the workers' file descriptors (/proc), and a connection the
SDK opened carried at least one call of the burst.
"""

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from http.client import HTTPConnection
from pathlib import Path

import httpx2
import openai
import pytest
from django.db.models import Sum

from config.redis_clients import redis_client
from metering.control.scopes import ceil_tokens, to_nano
from metering.models import RateLimit, SpendLimit, UsageRecord
from metering.services import api_key_create, tenant_allow_routes, tenant_create
from tests.e2e.conftest import (
    E2ETenant,
    database_url,
    free_port,
    http,
    make_routes,
    start,
    stop,
)
from tests.e2e.test_spend_control import INPUT_PER_M, OUTPUT_PER_M, priced
from tests.metering.ledger.test_outage_server import (
    PrivatePostgres,
    load_migrated_template,
    seed,
)
from tests.metering.ledger.test_outage_server import (
    private_postgres as private_postgres_fixture,  # noqa: F401 - the fixture, by this name
)

pytestmark = pytest.mark.e2e

WINDOW_S = 20  # the servers' rate window: a burst of the request-rate test fits in one
PROMPT = [{"role": "user", "content": "Plan a long trip and reason carefully."}]
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


# --- which worker holds which connection (/proc) ---------------------------------------


def worker_pids(parent: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker left out)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def _socket_owners(pids: list[int]) -> dict[str, int]:
    owners = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir() if fds.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[target[8:-1]] = pid
    return owners


def _server_ends(port: int, state: str = "01") -> list[tuple[int, str]]:
    """(client port, socket inode) of every connection to `port` in `state` (01:
    established, 0A: listening)."""
    ends = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if fields[3] == state and int(local.rsplit(":", 1)[1], 16) == port:
                ends.append((int(remote.rsplit(":", 1)[1], 16), inode))
    return ends


def listening(port: int, pids: list[int]) -> set[int]:
    """The workers that listen on `port` (a worker listens once its application started)."""
    owners = _socket_owners(pids)
    return {owners[inode] for _, inode in _server_ends(port, "0A") if inode in owners}


def connections_by_worker(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to `port` per worker pid."""
    owners = _socket_owners(pids)
    counts = dict.fromkeys(pids, 0)
    for _, inode in _server_ends(port):
        if inode in owners:
            counts[owners[inode]] += 1
    return counts


def worker_of(port: int, client_port: int, pids: list[int]) -> int | None:
    """The worker holding the server end of the connection from `client_port`."""
    owners = _socket_owners(pids)
    for remote, inode in _server_ends(port):
        if remote == client_port:
            return owners.get(inode)
    return None


# --- the server and the tenant ----------------------------------------------------------


@dataclass
class Workers:
    url: str
    port: int
    process: subprocess.Popen
    lease_calls: int

    def pids(self) -> list[int]:
        return worker_pids(self.process.pid)


def start_workers(env: dict[str, str], workers: int = 2) -> Workers:
    port = free_port()
    process = start(
        ["serve", "--port", str(port), "--workers", str(workers)],
        {
            "RECKON_AUTH_CACHE_SECONDS": "0.5",
            "RECKON_RATE_WINDOW_SECONDS": str(WINDOW_S),
            "PYTHONUNBUFFERED": "1",
            "RECKON_SIMULATOR_API_KEY": "sim-test-key",
            "REDIS_URL": REDIS_URL,
            **env,
        },
        f"http://127.0.0.1:{port}/v1/models",
    )
    server = Workers(
        f"http://127.0.0.1:{port}", port, process, int(env.get("RECKON_CONTROL_LEASE_CALLS", 32))
    )
    deadline = time.monotonic() + 30
    while not (
        len(pids := server.pids()) == workers and listening(port, pids) == set(pids)
    ):  # the first worker up answers; wait for all
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    return server


@pytest.fixture(scope="module", params=[32, 0], ids=["leases", "no-leases"])
def two_workers(request, django_db_setup, django_db_blocker) -> Iterator[Workers]:  # type: ignore[no-untyped-def]
    with django_db_blocker.unblock():
        url = database_url()
    server = start_workers({"DATABASE_URL": url, "RECKON_CONTROL_LEASE_CALLS": str(request.param)})
    yield server
    stop(server.process)


def make_tenant(server_url: str, simulator_url: str, slow_simulator_url: str) -> E2ETenant:
    routes = make_routes(simulator_url, slow_simulator_url)
    created_tenant = tenant_create(name="acme")
    tenant_allow_routes(tenant=created_tenant, aliases=[r.alias_id for r in routes])
    created = api_key_create(tenant=created_tenant, name="e2e")
    http("POST", simulator_url + "/_sim/reset")
    http("POST", slow_simulator_url + "/_sim/reset")
    return E2ETenant(created_tenant, created.raw_key, server_url, simulator_url)


@pytest.fixture
def tenant(transactional_db, two_workers, simulator_url, slow_simulator_url) -> E2ETenant:  # type: ignore[no-untyped-def]
    return make_tenant(two_workers.url, simulator_url, slow_simulator_url)


# --- the client: the openai SDK, many calls at once -------------------------------------


@dataclass
class Burst:
    ok: int
    refused: dict[str, int]  # 429s by error code
    by_worker: dict[int, int]  # connections the burst left open, per worker
    body_bytes: int  # the size of the (last) request body the SDK sent

    def refused_all(self) -> int:
        return sum(self.refused.values())


def burst(
    server: Workers,
    key: str,
    *,
    calls: int,
    concurrency: int,
    model: str,
    max_tokens: int,
    stream: bool = False,
) -> Burst:
    """`calls` chat completions, `concurrency` at a time, on one SDK client (its pool
    opens a connection per call in flight); refusals are counted, not retried."""
    sizes: list[int] = []

    async def sized(request: httpx2.Request) -> None:
        sizes.append(len(request.content))

    async def run() -> Burst:
        http_client = httpx2.AsyncClient(
            limits=httpx2.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            ),
            timeout=60,
            event_hooks={"request": [sized]},
        )
        client = openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=key, max_retries=0, http_client=http_client
        )
        gate = asyncio.Semaphore(concurrency)
        refused: dict[str, int] = {}
        ok = 0

        async def one() -> None:
            nonlocal ok
            async with gate:
                try:
                    if stream:
                        chunks = await client.chat.completions.create(
                            model=model,
                            messages=PROMPT,
                            max_completion_tokens=max_tokens,
                            stream=True,
                        )
                        async for _ in chunks:
                            pass
                    else:
                        await client.chat.completions.create(
                            model=model, messages=PROMPT, max_completion_tokens=max_tokens
                        )
                    ok += 1
                except openai.RateLimitError as exc:
                    refused[exc.code or ""] = refused.get(exc.code or "", 0) + 1

        await asyncio.gather(*(one() for _ in range(calls)))
        by_worker = connections_by_worker(server.port, server.pids())
        await client.close()
        return Burst(ok, refused, by_worker, sizes[-1] if sizes else 0)

    return asyncio.run(run())


def assert_both_workers_served(result: Burst) -> None:
    assert len(result.by_worker) == 2 and all(n > 0 for n in result.by_worker.values()), (
        result.by_worker
    )


def records(e2e: E2ETenant) -> int:
    return UsageRecord.objects.filter(tenant=e2e.tenant).count()


def served(url: str) -> int:
    return http("GET", url + "/_sim/totals")[2]["requests"]  # type: ignore[index]


def leased(e2e: E2ETenant) -> bool:
    """Did a slice of any of the tenant's budgets exist (metering.control.leases)?"""
    store = redis_client(REDIS_URL)
    keys = [k for k in store.scan_iter("rk:*") if str(e2e.tenant.id).encode() in k]
    return any(store.type(k) == b"hash" and store.hexists(k, "leased") for k in keys)


def until_window_start() -> None:
    """Sleep to just after the next rate window begins (windows are aligned to time)."""
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)


# --- the limits ---------------------------------------------------------------------------


def test_a_request_rate_admits_exactly_its_limit_across_both_workers(
    tenant: E2ETenant, two_workers: Workers
) -> None:
    # large enough that slices are granted far from the limit (16 x 32 calls left), so
    # with leases on both the leased and the exact path admit calls
    limit = 800
    RateLimit.objects.create(tenant=tenant.tenant, requests_per_minute=limit)
    until_window_start()
    window = int(time.time() // WINDOW_S)
    result = burst(
        two_workers, tenant.raw_key, calls=1000, concurrency=48, model="reasoner", max_tokens=16
    )
    assert int(time.time() // WINDOW_S) == window, "the burst outlasted its rate window"
    assert result.ok == limit, result
    assert result.refused == {"rate_limit_exceeded": 1000 - limit}
    assert_both_workers_served(result)
    assert records(tenant) == limit == served(tenant.simulator_url)


def test_a_token_rate_admits_exactly_what_fits_across_both_workers(
    tenant: E2ETenant, two_workers: Workers, slow_simulator_url: str
) -> None:
    max_tokens = 200  # ~1 s a call upstream: every admission happens before any settles
    probe = burst(
        two_workers, tenant.raw_key, calls=1, concurrency=1, model="slow-reasoner", max_tokens=1
    )
    # the call's estimate: its input from the body's size (max tokens 1 -> 200: two more
    # bytes) and its whole output cap
    estimate = ceil_tokens(probe.body_bytes + 2) + max_tokens
    fits = 20
    RateLimit.objects.create(
        tenant=tenant.tenant, tokens_per_minute=estimate * fits + estimate // 2
    )
    time.sleep(0.6)  # the caller cache (0.5 s) sees the new limit
    until_window_start()
    result = burst(
        two_workers,
        tenant.raw_key,
        calls=60,
        concurrency=60,
        model="slow-reasoner",
        max_tokens=max_tokens,
    )
    assert ceil_tokens(result.body_bytes) + max_tokens == estimate
    assert result.ok == fits, result
    assert result.refused == {"rate_limit_exceeded": 60 - fits}
    assert_both_workers_served(result)
    assert records(tenant) == fits + 1 == served(slow_simulator_url)


def _hold_nano(body_bytes: int, max_tokens: int) -> int:
    """The proxy's hold for a call: ceil(bytes / 3) input tokens at the input price, plus
    the output cap at the output price (nano-USD, rounded up)."""
    return to_nano((ceil_tokens(body_bytes) * INPUT_PER_M + max_tokens * OUTPUT_PER_M) / 1_000_000)


@pytest.mark.parametrize("scope", ["tenant-month", "key-total"])
def test_a_spend_limit_admits_exactly_the_calls_it_covers_across_both_workers(
    tenant: E2ETenant, two_workers: Workers, slow_simulator_url: str, scope: str
) -> None:
    priced(tenant)
    max_tokens = 200
    probe = burst(
        two_workers,
        tenant.raw_key,
        calls=1,
        concurrency=1,
        model="slow-reasoner",
        max_tokens=1,
        stream=True,
    )
    body_bytes = probe.body_bytes + 2  # max_completion_tokens 1 -> 200
    hold = _hold_nano(body_bytes, max_tokens)
    probe_spend = UsageRecord.objects.get(tenant=tenant.tenant).spend_usd
    fits = 20
    limit = Decimal(hold * fits + hold // 2) / 10**9 + probe_spend
    if scope == "tenant-month":
        SpendLimit.objects.create(tenant=tenant.tenant, window="month", amount_usd=limit)
    else:
        SpendLimit.objects.create(
            tenant=tenant.tenant,
            api_key=tenant.tenant.api_keys.get(),
            window="total",
            amount_usd=limit,
        )
    time.sleep(0.6)  # the caller cache sees the new limit
    result = burst(
        two_workers,
        tenant.raw_key,
        calls=64,
        concurrency=64,
        model="slow-reasoner",
        max_tokens=max_tokens,
        stream=True,
    )
    assert result.body_bytes == body_bytes
    assert result.ok == fits, result
    assert result.refused == {"insufficient_quota": 64 - fits}
    assert_both_workers_served(result)
    spent = UsageRecord.objects.filter(tenant=tenant.tenant).aggregate(s=Sum("spend_usd"))["s"]
    assert spent <= limit
    assert records(tenant) == fits + 1 == served(slow_simulator_url)


def test_leased_spend_fills_a_monthly_limit_across_both_workers_and_stops_exactly(
    tenant: E2ETenant, two_workers: Workers
) -> None:
    """Far from the limit calls are admitted on each worker's slices (with leases on), near
    it call by call; spend never passes the limit, and once everything has settled a call
    is refused only when what is left cannot cover its hold."""
    priced(tenant)
    max_tokens = 40
    probe = burst(
        two_workers, tenant.raw_key, calls=1, concurrency=1, model="reasoner", max_tokens=1
    )
    body_bytes = probe.body_bytes + 1  # max_completion_tokens 1 -> 40
    hold = _hold_nano(body_bytes, max_tokens)
    probe_spend = to_nano(UsageRecord.objects.get(tenant=tenant.tenant).spend_usd)
    limit_nano = hold * 1500 + probe_spend  # slices of 32 calls are 16 times smaller
    SpendLimit.objects.create(
        tenant=tenant.tenant, window="month", amount_usd=Decimal(limit_nano) / 10**9
    )
    time.sleep(0.6)
    result = burst(
        two_workers,
        tenant.raw_key,
        calls=2400,  # more than fit: the calls use less than their holds
        concurrency=32,
        model="reasoner",
        max_tokens=max_tokens,
    )
    assert result.body_bytes == body_bytes
    assert result.ok > 1500 and set(result.refused) == {"insufficient_quota"}, result
    assert_both_workers_served(result)
    # slices were taken (their running total is the budget's `leased`) only with leases on
    assert leased(tenant) == bool(two_workers.lease_calls)
    time.sleep(0.3)  # the last leased calls are reported and their slices given back

    def left() -> int:
        spends = UsageRecord.objects.filter(tenant=tenant.tenant).values_list(
            "spend_usd", flat=True
        )
        return limit_nano - sum(to_nano(s) for s in spends)

    sequential = 0
    while True:  # one call at a time: refused exactly when what is left cannot cover it
        again = burst(
            two_workers,
            tenant.raw_key,
            calls=1,
            concurrency=1,
            model="reasoner",
            max_tokens=max_tokens,
        )
        if not again.ok:
            break
        sequential += 1
    assert 0 <= left() < hold, (result, sequential, left(), hold)
    assert records(tenant) == 1 + result.ok + sequential == served(tenant.simulator_url)


# --- the workers' lives: SIGTERM, kill -9 -------------------------------------------------


def test_sigterm_lets_both_workers_finish_their_streams_and_record_each(
    transactional_db,  # type: ignore[no-untyped-def]
    simulator_url: str,
    slow_simulator_url: str,
) -> None:
    server = start_workers({"DATABASE_URL": database_url()})
    try:
        e2e = make_tenant(server.url, simulator_url, slow_simulator_url)
        outcome: list[Burst] = []
        calls = threading.Thread(
            target=lambda: outcome.append(
                burst(
                    server,
                    e2e.raw_key,
                    calls=16,
                    concurrency=16,
                    model="slow-reasoner",
                    max_tokens=300,  # ~1.5 s a stream upstream
                    stream=True,
                )
            )
        )
        calls.start()
        deadline = time.monotonic() + 10
        while True:  # every stream is open, on both workers
            by_worker = connections_by_worker(server.port, server.pids())
            if sum(by_worker.values()) == 16 and all(by_worker.values()):
                break
            assert time.monotonic() < deadline, by_worker
            time.sleep(0.02)
        os.kill(server.process.pid, signal.SIGTERM)
        calls.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
    finally:
        stop(server.process)
    assert outcome and outcome[0].ok == 16, outcome
    assert records(e2e) == 16 == served(slow_simulator_url)


def _call(conn: HTTPConnection, key: str) -> tuple[int, str]:
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=b'{"model":"sim","messages":[{"role":"user","content":"hi"}]}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("x-reckon-request-id") or ""


def test_a_killed_worker_is_replaced_and_its_spool_reaches_the_ledger(
    private_postgres_fixture: PrivatePostgres,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    migrated_template: str,
) -> None:
    """PostgreSQL down: both workers answer calls and spool their records; one worker is
    killed with -9 (its spool file is left unlocked); uvicorn's supervisor starts another;
    PostgreSQL back: every answered call is in the ledger once, and no spool is left."""
    pg = private_postgres_fixture
    env = {
        "DATABASE_URL": pg.url,
        "RECKON_LEDGER_SPOOL_DIR": str(tmp_path),
        "RECKON_AUTH_CACHE_SECONDS": "3600",  # the key stays known while the database is down
        "RECKON_SIMULATOR_API_KEY": "sim-test-key",
    }
    load_migrated_template(pg, migrated_template)
    sim_port = free_port()
    simulator = start(
        ["run_simulator", "--port", str(sim_port)], env, f"http://127.0.0.1:{sim_port}/_sim/health"
    )
    server = None
    try:
        key = seed(env, sim_port)
        server = start_workers(env)
        pids = server.pids()
        conns = [HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(12)]
        answered = []
        for conn in conns:  # warm each worker's caller cache and ledger
            status, request_id = _call(conn, key)
            assert status == 200
            answered.append(request_id)
        holders = {worker_of(server.port, c.sock.getsockname()[1], pids) for c in conns}
        assert holders == set(pids), holders  # both workers hold some of the connections

        pg.stop()
        # at once, on the open connections (uvicorn closes one idle for 5 s, and each call
        # retries the database for 5 s before it spools)
        with ThreadPoolExecutor(len(conns)) as pool:
            outage = list(pool.map(lambda conn: _call(conn, key), conns))
        assert [status for status, _ in outage] == [200] * len(conns)  # spooled durably
        answered += [request_id for _, request_id in outage]
        spooled_by = {int(p.name.split("-")[-2]) for p in tmp_path.glob("ledger-*.jsonl")}
        assert spooled_by == set(pids), spooled_by
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (
            len(now := server.pids()) == 2
            and victim not in now
            and listening(server.port, now) == set(now)
        ):
            assert time.monotonic() < deadline, "the supervisor did not replace the worker"
            time.sleep(0.1)

        pg.start()
        deadline = time.monotonic() + 15
        while list(tmp_path.glob("ledger-*.jsonl")):
            assert time.monotonic() < deadline, "a spool was not loaded into the ledger"
            time.sleep(0.1)
        assert all(pg.count(request_id) == 1 for request_id in answered)
        assert served(f"http://127.0.0.1:{sim_port}") == len(answered) == 24
        for conn in conns:
            conn.close()
    finally:
        if server is not None:
            stop(server.process)
        stop(simulator)
