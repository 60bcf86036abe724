"""Routing end to end (decision 0117): one alias served by targets on three simulator
processes behind a real Reckon server, called with the official SDKs.

What is checked is what the ledger says: every attempt leaves a record naming its
target, policy, reason and attempt number; a failed-over attempt is followed by the next
attempt of the same call (same upper 124 id bits); records that did not fail over are
the client calls; completed records per target equal what each simulator served.
Counts are smaller than the design's (300 calls for failover) to keep the file fast.
"""

import concurrent.futures
import contextlib
import json
import math
import os
import select
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

import anthropic
import openai
import pytest

from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from config.redis_clients import redis_client
from metering.ledger.record import Rates
from metering.models import Alias, RateLimit, Route, SpendLimit, Tenant, UsageRecord
from metering.routing.breaker import breaker_key, breaker_states
from metering.services import api_key_create, route_set, serving_cost_rate_create, tenant_create
from tests.e2e.conftest import SIM_KEY_ENV, database_url, free_port, http, start, stop

PROMPT = [{"role": "user", "content": "Think about prime gaps, briefly."}]
Status = UsageRecord.Status


class Gate:
    """A loopback port relaying to another, that can refuse connections (and cut the open
    ones) and accept them again at once: a target that goes away and comes back without a
    process restart, whose seconds of start-up under load would race the breaker's times."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = ("127.0.0.1", target_port)
        self.listener: socket.socket | None = None
        self.open_sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    def accept(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
            listener.close()
        with self.lock:
            for sock in self.open_sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        pair = {client: upstream, upstream: client}
        with self.lock:
            self.open_sockets.update(pair)
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [])
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open_sockets.difference_update(pair)
            client.close()
            upstream.close()


class Simulator:
    """A simulator process behind a `Gate` (its `url`), so it can go away and come back."""

    def __init__(self, *args: str) -> None:
        self.process_port = free_port()
        self.gate = Gate(self.process_port)
        self.url = f"http://127.0.0.1:{self.gate.port}"
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start(
            ["run_simulator", "--port", str(self.process_port), *self.args],
            {},
            f"http://127.0.0.1:{self.process_port}/_sim/health",
        )
        self.gate.accept()

    def stop(self) -> None:
        self.gate.refuse()
        if self.process is not None:
            stop(self.process)
            self.process = None

    def reset(self) -> None:
        if self.process is None:
            self.start()
        http("POST", self.url + "/_sim/reset")

    def served(self) -> int:
        return http("GET", self.url + "/_sim/totals")[2]["requests"]  # type: ignore[index]


@pytest.fixture(scope="module")
def sims() -> Iterator[list[Simulator]]:
    three = [Simulator() for _ in range(3)]
    try:  # one that fails to start stops those already started
        for sim in three:
            sim.start()
        yield three
    finally:
        for sim in three:
            sim.stop()


@pytest.fixture(scope="module")
def routed_url(django_db_setup, django_db_blocker) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A Reckon server whose breakers react fast enough for a test."""
    port = free_port()
    with django_db_blocker.unblock():
        url = database_url()
    env = {
        "DATABASE_URL": url,
        "RECKON_AUTH_CACHE_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        "RECKON_RATE_WINDOW_SECONDS": "3",
        "RECKON_ROUTE_BREAKER_COOLDOWN_S": "1",
        "RECKON_ROUTE_BREAKER_MAX_COOLDOWN_S": "2",
        SIM_KEY_ENV: "sim-test-key",
    }
    process = start(["serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/v1/models")
    yield f"http://127.0.0.1:{port}"
    stop(process)


@dataclass
class Routed:
    tenant_id: uuid.UUID
    raw_key: str
    url: str
    sims: list[Simulator]

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=self.raw_key, max_retries=0, timeout=30
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=self.raw_key, max_retries=0)

    def records(self, alias: str) -> list[UsageRecord]:
        return list(
            UsageRecord.objects.filter(tenant_id=self.tenant_id, alias=alias).order_by("request_id")
        )


@pytest.fixture
def routed(transactional_db, routed_url, sims) -> Routed:  # type: ignore[no-untyped-def]
    tenant = tenant_create(name="acme")
    created = api_key_create(tenant=tenant, name="routing")
    for sim in sims:
        sim.reset()
    return Routed(tenant.id, created.raw_key, routed_url, sims)


def alias_with_targets(
    routed: Routed,
    alias: str,
    policy: str,
    targets: list[dict],
    *,
    max_attempts: int = 3,
    rules: list | None = None,
    provider: str = "openai",
) -> dict[str, int]:
    """An alias with a target per entry (name, sim index, model, priority, weight,
    path, first_byte_timeout_ms), granted to the tenant; returns name -> route id."""
    first = targets[0]
    route_set(
        alias=alias,
        provider=provider,
        base_url=routed.sims[first["sim"]].url + first.get("path", "/v1"),
        upstream_model=first.get("model", "sim-reasoner"),
        api_key_env=SIM_KEY_ENV,
    )
    Alias.objects.filter(name=alias).update(
        policy=policy, max_attempts=max_attempts, rules=rules or []
    )
    ids = {}
    for n, target in enumerate(targets):
        values = {
            "provider": provider,
            "base_url": routed.sims[target["sim"]].url + target.get("path", "/v1"),
            "upstream_model": target.get("model", "sim-reasoner"),
            "api_key_env": SIM_KEY_ENV,
            "name": target["name"],
            "priority": target.get("priority", n),
            "weight": target.get("weight", 100),
            "first_byte_timeout_ms": target.get("first_byte_timeout_ms"),
            "max_concurrent": target.get("max_concurrent"),
        }
        if n == 0:
            route = Route.objects.get(alias_id=alias)
            for field, value in values.items():
                setattr(route, field, value)
            route.save()
        else:
            route = Route.objects.create(alias_id=alias, **values)
        ids[target["name"]] = route.pk
    Alias.objects.get(name=alias).tenants.add(routed.tenant_id)
    wait_for_alias(routed, alias)
    return ids


def breaker_failures_reach(alias_pk: int, route_id: int, failures: int) -> None:
    """Until the breaker in Redis has counted `failures` failures of the target."""
    client = redis_client(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = client.hget(breaker_key(alias_pk), f"{route_id}:f")
            if seen is not None and int(seen) >= failures:
                return
            time.sleep(0.01)
    finally:
        client.close()
    pytest.fail(f"the breaker never counted {failures} failures of target {route_id}")


def wait_for_alias(routed: Routed, alias: str) -> None:
    """Until the server's caller cache (0.5 s in tests) has reloaded the key's context:
    the model list names the new alias (every test uses its own alias)."""

    def listed() -> bool:
        headers = {"Authorization": f"Bearer {routed.raw_key}"}
        status, _, body = http("GET", routed.url + "/v1/models", None, headers)
        return status == 200 and any(m["id"] == alias for m in body["data"])  # type: ignore[index]

    assert eventually(listed), f"{alias} never reached the server's caller cache"


def eventually(check, timeout: float = 20):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something true (then return it), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def tokens(record: UsageRecord) -> int:
    return (
        record.input_tokens
        + record.cached_input_tokens
        + record.cache_write_tokens
        + record.output_tokens
        + record.reasoning_tokens
    )


def attempts_are_chained(records: list[UsageRecord]) -> None:
    """Each failed-over attempt k is followed by attempt k+1 of the same call."""
    by_id = {r.request_id.int: r for r in records}
    for record in records:
        if record.failed_over:
            assert record.attempt is not None and tokens(record) == 0
            following = by_id.get((record.request_id.int & ~0xF) | (record.attempt + 1))
            assert following is not None, record.request_id
        if record.attempt:
            assert record.request_id.int & 0xF == record.attempt


def many(fn, count: int, workers: int = 8) -> list:  # type: ignore[no-untyped-def]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: fn(), range(count)))


def test_fallback_fails_over_from_a_stopped_target_and_its_breaker_opens_and_closes(
    routed: Routed,
) -> None:
    ids = alias_with_targets(
        routed,
        "fb",
        "fallback",
        [{"name": "a", "sim": 0}, {"name": "b", "sim": 1}, {"name": "c", "sim": 2}],
    )
    client = routed.openai()

    def call() -> str:
        completion = client.chat.completions.create(model="fb", messages=PROMPT)
        assert completion.choices[0].message.content
        return completion.id

    alias_pk = Alias.objects.get(name="fb").pk

    def opened() -> bool:
        """A's breaker opened in Redis (open, or half-open since), and a call that found
        A out went to B first."""
        return breaker_states(alias_pk).state(ids["a"]) != "closed" and any(
            r.route_id == ids["b"] and r.attempt == 1 and r.route_reason == "breaker"
            for r in routed.records("fb")
        )

    many(call, 40)
    routed.sims[0].gate.refuse()  # A goes away mid-run
    try:
        answered = many(call, 80)  # every client call succeeds
        # ... and on until A's breaker opens: how many of A's failures fall in one
        # breaker window depends on how fast the calls run
        deadline = time.monotonic() + 60
        while not opened() and time.monotonic() < deadline:
            answered += many(call, 8)
        assert opened(), "A's breaker never opened, or no call went to B for it"
        records = routed.records("fb")
        # one per client call
        assert sum(1 for r in records if not r.failed_over) == 40 + len(answered)
        failed_over = [r for r in records if r.failed_over]
        assert failed_over and all(r.route_id == ids["a"] for r in failed_over)
        assert all(r.status == Status.FAILED and r.attempt == 1 for r in failed_over)
        attempts_are_chained(records)
        second = {(r.request_id.int >> 4): r for r in records if r.attempt == 2}
        for r in failed_over:
            follower = second[r.request_id.int >> 4]
            assert follower.route_id == ids["b"] and follower.route_reason == "failover"
        completed = Counter(r.route_id for r in records if r.status == Status.COMPLETED)
        assert completed[ids["c"]] == 0
        assert all(r.route_policy == "fallback" for r in records)
    finally:
        routed.sims[0].gate.accept()
    assert completed[ids["a"]] == 40 == routed.sims[0].served()
    assert completed[ids["b"]] == routed.sims[1].served()
    # A is back: after the cooldown one probe succeeds and the breaker closes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        call()
        last = routed.records("fb")[-1:]
        if routed.sims[0].served() >= 40 + 3:
            break
        time.sleep(0.2)
    assert routed.sims[0].served() >= 40 + 3, "A never served again"
    newest = UsageRecord.objects.filter(tenant_id=routed.tenant_id, alias="fb").order_by(
        "-started_at"
    )[0]
    assert newest.route_id == ids["a"] and newest.route_reason == "priority", last
    # Closed by a probe, not left half-open (where the probe holder also sends A a call
    # now and then): a probe's success resets open and cooldown to 0; a half-open breaker
    # keeps them, or expires with its hash.
    assert breaker_states(alias_pk).state(ids["a"]) == "closed"
    client = redis_client(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    try:
        fields = client.hgetall(breaker_key(alias_pk))
    finally:
        client.close()
    a = ids["a"]
    assert (fields.get(f"{a}:open".encode()), fields.get(f"{a}:cd".encode())) == (b"0", b"0")


@pytest.mark.parametrize(("model", "status"), [("error-500", 500), ("error-429", 429)])
def test_error_answers_fail_over_and_keep_the_upstream_status(
    routed: Routed, model: str, status: int
) -> None:
    ids = alias_with_targets(
        routed,
        "errs",
        "fallback",
        [{"name": "a", "sim": 0, "model": model}, {"name": "b", "sim": 1}],
    )
    client = routed.openai()
    answered_ids = []
    for n in range(1, 4):
        raw = client.chat.completions.with_raw_response.create(model="errs", messages=PROMPT)
        completion = raw.parse()
        assert completion.usage and completion.usage.completion_tokens > 0
        answered_ids.append(uuid.UUID(raw.headers["x-reckon-request-id"]))
        # A failed target sits out until Redis has its breaker report (a loaded machine
        # can take longer than the next call): wait for it, so each call tries A first.
        breaker_failures_reach(Alias.objects.get(name="errs").pk, ids["a"], n)
    records = routed.records("errs")
    # the client is told the serving attempt's id
    assert sorted(answered_ids) == [r.request_id for r in records if not r.failed_over]
    assert len(records) == 6
    attempts_are_chained(records)
    failed = [r for r in records if r.failed_over]
    assert [(r.route_id, r.status, r.upstream_status, r.attempt) for r in failed] == [
        (ids["a"], Status.UPSTREAM_ERROR, status, 1)
    ] * 3
    served = [r for r in records if not r.failed_over]
    assert {(r.route_id, r.status, r.attempt) for r in served} == {(ids["b"], Status.COMPLETED, 2)}
    assert routed.sims[1].served() == 3


def test_an_anthropic_alias_fails_over_with_the_anthropic_sdk(routed: Routed) -> None:
    ids = alias_with_targets(
        routed,
        "thinkers",
        "fallback",
        [
            {"name": "a", "sim": 0, "model": "error-500"},
            {"name": "b", "sim": 2, "model": "sim-thinker"},
        ],
        provider="anthropic",
    )
    client = routed.anthropic()
    message = client.messages.create(model="thinkers", max_tokens=400, messages=PROMPT)
    assert message.content and message.usage.output_tokens > 0
    breaker_failures_reach(Alias.objects.get(name="thinkers").pk, ids["a"], 1)
    with client.messages.stream(model="thinkers", max_tokens=400, messages=PROMPT) as stream:
        assert "".join(stream.text_stream)
    records = routed.records("thinkers")
    assert [(r.route_id, r.failed_over, r.upstream_status, r.stream) for r in records] == [
        (ids["a"], True, 500, False),
        (ids["b"], False, 200, False),
        (ids["a"], True, 500, True),
        (ids["b"], False, 200, True),
    ]


def test_weighted_split_stays_within_four_points(routed: Routed) -> None:
    ids = alias_with_targets(
        routed,
        "canary",
        "weighted",
        [{"name": "main", "sim": 0, "weight": 80}, {"name": "canary", "sim": 1, "weight": 20}],
    )
    client = routed.openai()
    count = 1000
    many(lambda: client.chat.completions.create(model="canary", messages=PROMPT), count, 16)
    records = routed.records("canary")
    assert len(records) == count and not any(r.failed_over for r in records)
    per_target = Counter(r.route_id for r in records)
    share = per_target[ids["main"]] / count
    assert 0.76 <= share <= 0.84, share
    assert per_target[ids["main"]] == routed.sims[0].served()
    assert per_target[ids["canary"]] == routed.sims[1].served()
    assert {r.route_reason for r in records} == {"weight"}


def test_effort_rules_route_low_and_high_effort_to_different_targets(routed: Routed) -> None:
    ids = alias_with_targets(
        routed,
        "smart",
        "effort",
        [
            {"name": "default", "sim": 0, "model": "sim-reasoner"},
            {"name": "mini", "sim": 1, "model": "sim-reasoner-mini"},
        ],
        rules=[{"name": "light", "efforts": ["minimal", "low"], "target": "mini"}],
    )
    client = routed.openai()
    low = client.chat.completions.create(model="smart", messages=PROMPT, reasoning_effort="low")
    high = client.chat.completions.create(model="smart", messages=PROMPT, reasoning_effort="high")
    plain = client.chat.completions.create(model="smart", messages=PROMPT)
    assert low.model == "sim-reasoner-mini" and high.model == "sim-reasoner"
    assert plain.model == "sim-reasoner"
    records = {r.reasoning_effort: r for r in routed.records("smart")}
    assert (records["low"].route_id, records["low"].route_reason) == (ids["mini"], "rule:light")
    assert (records["high"].route_id, records["high"].route_reason) == (ids["default"], "default")
    assert records[""].route_id == ids["default"]
    assert all(r.route_policy == "effort" and r.attempt == 1 for r in records.values())


def rate(routed: Routed, alias: str, route_id: int, input_usd: str) -> None:
    """A serving cost rate for one target from now on (USD per 1M tokens)."""
    usd = Decimal(input_usd)
    serving_cost_rate_create(
        alias=alias,
        accelerator="nvidia-h100-sxm",
        effective_from=datetime.now(UTC),
        rates=Rates(usd, usd, usd, usd * 4, usd * 4),
        source={"test": True},
        route_id=route_id,
    )


def test_cheapest_follows_the_cost_basis_and_switches_when_it_changes(routed: Routed) -> None:
    ids = alias_with_targets(
        routed,
        "cheap",
        "cheapest",
        [{"name": "h100", "sim": 0}, {"name": "mi300x", "sim": 1}],
    )
    rate(routed, "cheap", ids["h100"], "2.00")
    rate(routed, "cheap", ids["mi300x"], "1.00")
    client = routed.openai()

    def served_by() -> int | None:
        client.chat.completions.create(model="cheap", messages=PROMPT)
        return routed.records("cheap")[-1:][0].route_id if routed.records("cheap") else None

    # the first calls may come before the state has loaded the rates (then: unpriced)
    deadline = time.monotonic() + 15
    while served_by() != ids["mi300x"] and time.monotonic() < deadline:
        time.sleep(0.3)
    newest = UsageRecord.objects.filter(tenant_id=routed.tenant_id, alias="cheap").latest(
        "started_at"
    )
    assert (newest.route_id, newest.route_reason) == (ids["mi300x"], "cost")
    rate(routed, "cheap", ids["h100"], "0.50")  # a new cost basis: H100 is cheaper now
    switched = time.monotonic() + 15  # one refresh is 10 s
    while time.monotonic() < switched:
        client.chat.completions.create(model="cheap", messages=PROMPT)
        newest = UsageRecord.objects.filter(tenant_id=routed.tenant_id, alias="cheap").latest(
            "started_at"
        )
        if newest.route_id == ids["h100"]:
            break
        time.sleep(0.3)
    assert (newest.route_id, newest.route_reason) == (ids["h100"], "cost")
    assert newest.cost_rate_id is not None  # priced at the target's own rate
    assert newest.serving_cost_usd is not None and newest.serving_cost_usd > 0


def test_a_single_target_alias_keeps_the_fast_path_and_stamps_its_records(
    routed: Routed,
) -> None:
    route = route_set(
        alias="solo",
        provider="openai",
        base_url=routed.sims[0].url + "/v1",
        upstream_model="sim-reasoner",
        api_key_env=SIM_KEY_ENV,
    )
    Alias.objects.get(name="solo").tenants.add(routed.tenant_id)
    wait_for_alias(routed, "solo")
    completion = routed.openai().chat.completions.create(
        model="solo", messages=PROMPT, reasoning_effort="medium"
    )
    assert completion.choices
    (record,) = routed.records("solo")
    assert (record.route_id, record.attempt, record.reasoning_effort) == (route.pk, 1, "medium")
    assert (record.failed_over, record.route_policy, record.route_reason) == (None, None, None)


def stream_text(client: openai.OpenAI, alias: str) -> str:
    stream = client.chat.completions.create(model=alias, messages=PROMPT, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@pytest.mark.parametrize(
    ("path", "model", "flag"),
    [
        ("/v1", "error-500", None),
        ("/faults/hang/v1", "sim-reasoner", None),
        ("/faults/stall-before-first-event/v1", "sim-reasoner", "first_event_timeout"),
        ("/faults/error-first-event/v1", "sim-reasoner", "upstream_error_event"),
    ],
)
def test_a_stream_fails_over_before_its_first_event(
    routed: Routed, path: str, model: str, flag: str | None
) -> None:
    ids = alias_with_targets(
        routed,
        "streams",
        "fallback",
        [
            {"name": "a", "sim": 0, "path": path, "model": model, "first_byte_timeout_ms": 400},
            {"name": "b", "sim": 1},
        ],
    )
    assert stream_text(routed.openai(), "streams")  # a clean stream from B
    records = routed.records("streams")
    assert [(r.route_id, r.failed_over, r.attempt) for r in records] == [
        (ids["a"], True, 1),
        (ids["b"], False, 2),
    ]
    failed, served = records
    assert failed.status in (Status.FAILED, Status.UPSTREAM_ERROR) and tokens(failed) == 0
    if flag:
        assert flag in failed.flags
    assert served.status == Status.COMPLETED and served.stream
    assert routed.sims[1].served() == 1


def test_a_whole_answer_slower_than_the_first_byte_timeout_is_not_failed_over(
    routed: Routed,
) -> None:
    """A whole answer's headers come when it is complete: the first-byte timeout is for
    streams, or a healthy (and billed) reasoning call would be abandoned and re-run."""
    slow = Simulator("--token-delay-ms", "10")
    slow.start()
    try:
        routed.sims.append(slow)
        ids = alias_with_targets(
            routed,
            "slow",
            "fallback",
            [
                {"name": "a", "sim": 3, "first_byte_timeout_ms": 50},
                {"name": "b", "sim": 1},
            ],
        )
        completion = routed.openai().chat.completions.create(model="slow", messages=PROMPT)
        assert completion.usage and completion.usage.completion_tokens >= 10  # > 100 ms
        records = routed.records("slow")
        assert [(r.route_id, r.status, r.failed_over, r.attempt) for r in records] == [
            (ids["a"], Status.COMPLETED, False, 1)
        ]
        assert slow.served() == 1 and routed.sims[1].served() == 0
    finally:
        routed.sims.remove(slow)
        slow.stop()


def test_a_client_that_leaves_before_the_first_event_is_not_failed_over(
    routed: Routed,
) -> None:
    """A stalls before its first event and the client leaves: B must not run the call
    for nobody; A's attempt is the final one, failed, client_disconnected."""
    ids = alias_with_targets(
        routed,
        "leaves",
        "fallback",
        [
            {
                "name": "a",
                "sim": 0,
                "path": "/faults/stall-before-first-event/v1",
                "first_byte_timeout_ms": 1000,
            },
            {"name": "b", "sim": 1},
        ],
    )
    body = json.dumps({"model": "leaves", "messages": PROMPT, "stream": True}).encode()
    host, port = routed.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Authorization: Bearer " + routed.raw_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        time.sleep(0.3)  # the server has the call, A has not sent its first event
    records = eventually(lambda: routed.records("leaves"))
    assert [
        (r.route_id, r.status, r.failed_over, r.attempt, r.client_disconnected) for r in records
    ] == [(ids["a"], Status.FAILED, False, 1, True)]
    assert records[0].flags == ["first_event_timeout"]
    time.sleep(0.5)  # a failover would have reached B by now
    assert routed.sims[1].served() == 0 and len(routed.records("leaves")) == 1


def test_a_target_limited_to_one_call_in_flight_serves_sequential_calls(
    routed: Routed,
) -> None:
    """max_concurrent=1: each finished call gives its slot back, so A serves them all."""
    ids = alias_with_targets(
        routed,
        "one",
        "fallback",
        [{"name": "a", "sim": 0, "max_concurrent": 1}, {"name": "b", "sim": 1}],
    )
    client = routed.openai()
    for _ in range(5):
        assert client.chat.completions.create(model="one", messages=PROMPT).choices
    records = routed.records("one")
    assert [(r.route_id, r.attempt, r.route_reason) for r in records] == [
        (ids["a"], 1, "priority")
    ] * 5
    assert routed.sims[0].served() == 5 and routed.sims[1].served() == 0


def test_a_stream_cut_after_its_first_event_does_not_fail_over(routed: Routed) -> None:
    ids = alias_with_targets(
        routed,
        "cut",
        "fallback",
        [
            {"name": "a", "sim": 0, "path": "/faults/reset-mid-stream/v1"},
            {"name": "b", "sim": 1},
        ],
    )
    # the first event reached the client: the stream stays A's, cut short
    assert stream_text(routed.openai(), "cut") == "Hel"
    records = routed.records("cut")
    assert [(r.route_id, r.status, r.failed_over) for r in records] == [
        (ids["a"], Status.INCOMPLETE, False)
    ]
    assert routed.sims[1].served() == 0


def nano(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_CEILING))


def test_a_failed_over_call_settles_its_hold_once(routed: Routed) -> None:
    """Spend limits and a rate limit: each call counts one request, and the spend in
    Redis is the final records' spend (a call is refused only when what is left cannot
    cover its hold)."""
    input_per_m, output_per_m = Decimal("2"), Decimal("10")
    version = plan_version_publish(
        version=plan_version_create(
            plan=plan_create(code="metered", name="Metered"),
            currency="USD",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            components=[
                {"token_class": "input", "charge_model": "per_unit", "unit_price": input_per_m},
                {"token_class": "output", "charge_model": "per_unit", "unit_price": output_per_m},
            ],
        )
    )
    subscription_create(
        tenant=Tenant.objects.get(pk=routed.tenant_id),
        plan_version=version,
        starts_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    alias_with_targets(
        routed,
        "held",
        "fallback",
        [{"name": "a", "sim": 0, "model": "error-500"}, {"name": "b", "sim": 1}],
    )
    body = {"model": "held", "messages": PROMPT, "max_completion_tokens": 60}
    hold = nano(
        (math.ceil(len(json.dumps(body)) / 3) * input_per_m + 60 * output_per_m) / 1_000_000
    )
    limit_nano = hold * 6 + hold // 2
    SpendLimit.objects.create(
        tenant_id=routed.tenant_id, window="total", amount_usd=Decimal(limit_nano) / 10**9
    )
    RateLimit.objects.create(tenant_id=routed.tenant_id, requests_per_minute=1000)
    time.sleep(0.6)
    headers = {"Authorization": f"Bearer {routed.raw_key}", "Content-Type": "application/json"}
    remaining = []
    admitted = 0
    time.sleep(3 - time.time() % 3 + 0.05)  # the first calls share one 3 s window
    while True:
        status, hdrs, _ = http("POST", routed.url + "/v1/chat/completions", body, headers)
        if status != 200:
            assert status == 429
            break
        admitted += 1
        remaining.append(int(hdrs["x-ratelimit-remaining-requests"]))
        assert admitted < 100
    # one request per call in the window, however many attempts it made
    assert remaining[:3] == [remaining[0], remaining[0] - 1, remaining[0] - 2]
    records = routed.records("held")
    served = [r for r in records if not r.failed_over]
    assert len(served) == admitted and len(records) > admitted  # some failed over
    assert all(r.spend_usd == 0 for r in records if r.failed_over)
    left = limit_nano - sum(nano(r.spend_usd) for r in served)
    assert 0 <= left < hold, (admitted, left, hold)
