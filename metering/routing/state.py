"""A server process's routing state: what `policies.choose` reads, from memory only.

One `RoutingState` per process (ProxyApp makes it). The hot path never waits on Redis or
the database: in the background, every second, the breakers of the aliases this process
serves are read from Redis (one script each, pipelined) and a heartbeat says the process
is live (the live count gives its share of each target's `max_concurrent`); every ten
seconds the learned expectations (`RouteExpectation`) and each target's current serving
cost rate are loaded in a thread and precomputed into integer nano-USD.

Breakers: a retryable failure takes the target out of this process at once, and is
reported to Redis without being awaited; Redis's answer (open until, or still closed)
then replaces the local guess. With Redis out of reach the process keeps local breakers
(the same thresholds, counted here) and never blocks a call.
"""

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from metering.control.redis_pipe import RedisUnavailable, control_client
from metering.routing.breaker import (
    PROBE_TTL_MS,
    BreakerConfig,
    Client,
    TargetBreaker,
    breaker_probe,
    breaker_probe_release,
    breaker_read,
    breaker_report,
    heartbeat,
)
from metering.routing.policies import DEFAULT_COST_TIE_PPM, Features, Pick, PlanLike, choose

logger = logging.getLogger(__name__)

BREAKER_REFRESH_S = 1.0  # float-ok: seconds
COSTS_REFRESH_S = 10.0  # float-ok: seconds
# A probe won but not used by a call within this long is let go, here and in Redis (before
# Redis's probe key lapses, so two processes never both think they hold it).
PROBE_TOKEN_MS = PROBE_TTL_MS // 2
MIN_SAMPLES = 50


class RoutedPlan(PlanLike, Protocol):
    """What the state needs of a plan beyond `policies`: the alias's pk (its breaker)."""

    @property
    def alias_pk(self) -> int: ...


# --- Expected cost, precomputed ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """One RouteExpectation row's figures (means per answered attempt)."""

    route_id: int
    effort: str
    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal
    p50_latency_ms: int | None
    samples: int


@dataclass(frozen=True, slots=True)
class TargetRates:
    """A target's serving cost, USD per 1M tokens of each class (`ledger.record.Rates`)."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal


@dataclass(frozen=True, slots=True)
class Expected:
    """A target's expected cost for one effort, in integers: nano-USD per million input
    tokens (input, cache-read and cache-write rates blended by the learned cache shares)
    and nano-USD of the expected output and reasoning, both rounded up."""

    input_nano_per_mtok: int
    output_nano: int

    def cost_nano(self, input_tokens: int) -> int:
        return -(-input_tokens * self.input_nano_per_mtok // 1_000_000) + self.output_nano


@dataclass(frozen=True, slots=True)
class TargetCosts:
    by_effort: dict[str, Expected]
    other: Expected  # an effort nothing was learned for


_ZERO = Decimal(0)


@dataclass(slots=True)
class _Means:
    input: Decimal = _ZERO
    cache_read: Decimal = _ZERO
    cache_write: Decimal = _ZERO
    output: Decimal = _ZERO
    reasoning: Decimal = _ZERO
    samples: int = 0


def _pooled(rows: Iterable[Expectation]) -> _Means:
    """The sample-weighted means of several rows (exact, Decimal)."""
    pool = _Means()
    for r in rows:
        n = Decimal(r.samples)
        pool.input += r.input * n
        pool.cache_read += r.cache_read * n
        pool.cache_write += r.cache_write * n
        pool.output += r.output * n
        pool.reasoning += r.reasoning * n
        pool.samples += r.samples
    if pool.samples:
        n = Decimal(pool.samples)
        pool.input /= n
        pool.cache_read /= n
        pool.cache_write /= n
        pool.output /= n
        pool.reasoning /= n
    return pool


def _ceil(value: Decimal) -> int:
    return math.ceil(value)


def expected_at(rates: TargetRates, means: _Means) -> Expected:
    """`Expected` of `means` at `rates` (the one place a rate meets the means)."""
    inputs = means.input + means.cache_read + means.cache_write
    if inputs > 0:
        per_mtok = (
            means.input * rates.input
            + means.cache_read * rates.cache_read
            + means.cache_write * rates.cache_write
        ) / inputs
    else:
        per_mtok = rates.input
    # mean tokens x USD per 1M tokens x 1e9 nano / 1e6 tokens
    output = (means.output * rates.output + means.reasoning * rates.reasoning) * 1000
    return Expected(_ceil(per_mtok * 1_000_000_000), _ceil(output))


def cost_table(
    alias_routes: Mapping[int, Sequence[int]],
    rates: dict[int, TargetRates],
    expectations: Iterable[Expectation],
    *,
    min_samples: int = MIN_SAMPLES,
) -> dict[int, TargetCosts]:
    """Each priced target's expected costs per effort. A target with fewer than
    `min_samples` answered attempts for an effort takes its alias's pooled means for it
    (all targets' rows of that effort; none: of every effort), so a new target is
    neither starved nor favoured blindly. Targets with no rate are absent (unpriced)."""
    rows = list(expectations)
    table: dict[int, TargetCosts] = {}
    for route_ids in alias_routes.values():
        mine = [r for r in rows if r.route_id in route_ids]
        alias_all = _pooled(mine)
        efforts = {r.effort for r in mine}
        alias_by_effort = {e: _pooled(r for r in mine if r.effort == e) for e in efforts}
        for rid in route_ids:
            target_rates = rates.get(rid)
            if target_rates is None:
                continue
            own = {r.effort: r for r in mine if r.route_id == rid}
            by_effort: dict[str, Expected] = {}
            for effort in efforts:
                row = own.get(effort)
                means = _pooled([row]) if row and row.samples >= min_samples else None
                if means is None:
                    pooled = alias_by_effort[effort]
                    means = pooled if pooled.samples else alias_all
                by_effort[effort] = expected_at(target_rates, means)
            own_all = _pooled(own.values())
            other = own_all if own_all.samples >= min_samples else alias_all
            table[rid] = TargetCosts(by_effort, expected_at(target_rates, other))
    return table


def load_costs(
    route_ids: Sequence[int], at: datetime | None = None
) -> tuple[dict[int, TargetRates], list[Expectation]]:
    """The targets' current serving cost rates and learned expectations (2 queries)."""
    from metering.models import RouteExpectation
    from metering.selectors import current_cost_rates

    rates = {
        route_id: TargetRates(
            rate.input_usd,
            rate.cache_read_usd,
            rate.cache_write_usd,
            rate.output_usd,
            rate.reasoning_usd,
        )
        for route_id, rate in current_cost_rates(route_ids, at).items()
    }
    expectations = [
        Expectation(
            e.route_id,
            e.reasoning_effort,
            e.mean_input_tokens,
            e.mean_cached_input_tokens,
            e.mean_cache_write_tokens,
            e.mean_output_tokens,
            e.mean_reasoning_tokens,
            e.p50_latency_ms,
            e.samples,
        )
        for e in RouteExpectation.objects.filter(route_id__in=route_ids)
    ]
    return rates, expectations


def _load_in_thread(
    route_ids: Sequence[int],
) -> tuple[dict[int, TargetRates], list[Expectation]]:
    from django.db import close_old_connections

    close_old_connections()  # a worker thread's connection may have gone stale
    return load_costs(route_ids)


# --- The process's state ---------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    """This process's own count of a target's outcomes (Redis down: the breaker's rule here)."""

    start_ms: int = 0
    failures: int = 0
    successes: int = 0


@dataclass(slots=True)
class _Target:
    alias_pk: int
    in_flight: int = 0
    # Out of this process until then: a failure Redis has not answered for yet ...
    pending_until_ms: int = 0
    # ... and the breaker's rule on this process's own counts (Redis out of reach).
    local_open_ms: int = 0
    remote: TargetBreaker = field(default_factory=lambda: TargetBreaker(0, 0))
    unreported_successes: int = 0
    # Half-open: this process won the probe (until then, nobody used it yet) ...
    probe_token_until_ms: int = 0
    # ... and the call that is the probe started then (0: none in flight).
    probing_since_ms: int = 0
    window: _Window = field(default_factory=_Window)
    local_cooldown_ms: int = 0


class _View:
    """`policies.TargetView` over a RoutingState (kept apart: `choose` sees only this)."""

    __slots__ = ("_state",)

    def __init__(self, state: "RoutingState") -> None:
        self._state = state

    @property
    def cost_tie_ppm(self) -> int:
        """RECKON_ROUTE_COST_TIE, read by `choose` when its caller passes none."""
        return self._state.cost_tie_ppm

    def is_open(self, route_id: int) -> bool:
        return self._state.is_open(route_id)

    def saturated(self, route_id: int, max_concurrent: int | None) -> bool:
        if max_concurrent is None:
            return False
        target = self._state._targets.get(route_id)
        if target is None:
            return False
        share = -(-max_concurrent // max(self._state.processes, 1))
        return target.in_flight >= share

    def expected_cost_nano(self, route_id: int, effort: str, input_tokens: int) -> int | None:
        costs = self._state._costs.get(route_id)
        if costs is None:
            return None
        return costs.by_effort.get(effort, costs.other).cost_nano(input_tokens)

    def p50_latency_ms(self, route_id: int, effort: str) -> int | None:
        return self._state._latency.get((route_id, effort))


class RoutingState:
    """The routing state of one server process (see the module docstring)."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        clock: Callable[[], float] = time.time,  # wall clock: open-until times cross hosts
        config: BreakerConfig | None = None,
        cost_tie_ppm: int | None = None,
        min_samples: int | None = None,
        load: Callable[[Sequence[int]], tuple[dict[int, TargetRates], list[Expectation]]]
        | None = None,
        breaker_refresh_s: float = BREAKER_REFRESH_S,  # float-ok: seconds
        costs_refresh_s: float = COSTS_REFRESH_S,  # float-ok: seconds
    ) -> None:
        from django.conf import settings

        self._clock = clock
        self.config = config or BreakerConfig.from_settings()
        self.cost_tie_ppm = (
            cost_tie_ppm
            if cost_tie_ppm is not None
            else int(settings.RECKON_ROUTE_COST_TIE * 1_000_000)
            if hasattr(settings, "RECKON_ROUTE_COST_TIE")
            else DEFAULT_COST_TIE_PPM
        )
        self.min_samples = (
            min_samples
            if min_samples is not None
            else getattr(settings, "RECKON_ROUTE_MIN_SAMPLES", MIN_SAMPLES)
        )
        self._load = load or _load_in_thread
        self._redis: Client | None = control_client(redis_url, timeout=1.0) if redis_url else None
        self._breaker_refresh_s = breaker_refresh_s
        self._costs_refresh_s = costs_refresh_s
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.processes = 1
        self._plans: dict[int, RoutedPlan] = {}  # by alias pk
        self._targets: dict[int, _Target] = {}  # by route id
        self._costs: dict[int, TargetCosts] = {}
        self._latency: dict[tuple[int, str], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._costs_wanted: asyncio.Event | None = None  # made in start(), on the loop
        self.view = _View(self)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background refreshes (breakers and heartbeat; costs)."""
        self._costs_wanted = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._every(self._breaker_refresh_s, self.refresh_breakers)),
            asyncio.create_task(self._costs_loop()),
        ]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - stopping anyway
                pass
        self._loops = []
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._redis is not None:
            try:
                await heartbeat(self._redis, self.process_id, now_ms=self._now_ms(), ttl_ms=0)
            except RedisUnavailable:
                pass
            await self._redis.close()

    async def _every(self, seconds: float, step: Callable[[], Any]) -> None:  # float-ok
        while True:
            try:
                await step()
            except Exception:
                logger.exception("routing state refresh failed")
            await asyncio.sleep(seconds)

    async def _costs_loop(self) -> None:
        assert self._costs_wanted is not None
        while True:
            self._costs_wanted.clear()
            try:
                await self.refresh_costs()
            except Exception:
                logger.exception("routing costs refresh failed")
            try:  # a newly watched alias wakes it early
                await asyncio.wait_for(self._costs_wanted.wait(), self._costs_refresh_s)
            except TimeoutError:
                pass

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- plans ------------------------------------------------------------------------

    def watch(self, plan: RoutedPlan) -> None:
        """Serve `plan` from this state (cheap and idempotent: call it per call)."""
        known = self._plans.get(plan.alias_pk)
        if known is plan:
            return
        self._plans[plan.alias_pk] = plan
        new = False
        for t in plan.targets:
            if t.route_id is not None and t.route_id not in self._targets:
                self._targets[t.route_id] = _Target(plan.alias_pk)
                new = True
        if new and self._costs_wanted is not None:
            self._costs_wanted.set()

    def choose(self, plan: RoutedPlan, features: Features, rng: Any) -> list[Pick]:
        """`policies.choose` on this state, with the configured cost tie."""
        self.watch(plan)
        return choose(plan, features, self.view, rng, cost_tie_ppm=self.cost_tie_ppm)

    # --- breakers ---------------------------------------------------------------------

    def is_open(self, route_id: int) -> bool:
        """Out of this process's choice: open, or half-open unless this process holds the
        probe and no call has taken it yet (then the next call to it is the probe)."""
        target = self._targets.get(route_id)
        if target is None:
            return False
        now = self._now_ms()
        if target.pending_until_ms > now or target.local_open_ms > now:
            return True
        remote = target.remote.open_until_ms
        if remote > now:
            return True
        if remote > 0:
            return not target.probe_token_until_ms > now
        return False

    def needs_probe(self, route_id: int) -> bool:
        """Half-open, and this process does not hold the probe (`probe_allowed` asks)."""
        target = self._targets.get(route_id)
        if target is None or target.remote.open_until_ms <= 0:
            return False
        return self.is_open(route_id) and target.remote.open_until_ms <= self._now_ms()

    async def probe_allowed(self, plan: RoutedPlan, route_id: int) -> bool:
        """May a call go to this target now? Closed: yes. Half-open: yes for the one
        process that wins the probe (one awaited round trip); the call's outcome, given
        to `report`, closes or re-opens the target. The background refresh asks this for
        every half-open target, so callers need not (the winner's next call probes).
        Redis out of reach: yes."""
        self.watch(plan)
        target = self._targets.get(route_id)
        if target is None or not self.needs_probe(route_id):
            return not self.is_open(route_id)
        now = self._now_ms()
        if target.probing_since_ms and now - target.probing_since_ms < PROBE_TTL_MS:
            return False  # this process's probe is running
        won = 2
        if self._redis is not None:
            try:
                won = await breaker_probe(
                    self._redis, plan.alias_pk, route_id, now_ms=now, owner=self.process_id
                )
            except RedisUnavailable:
                pass
        if won == 1:  # closed meanwhile
            target.remote = TargetBreaker(0, 0)
            return True
        if won == 2:
            target.probe_token_until_ms = now + PROBE_TOKEN_MS
            return True
        return False

    def report(
        self, plan: RoutedPlan, route_id: int, *, ok: bool, retry_after_s: int | None = None
    ) -> None:
        """The outcome of an attempt on a target (ok: it answered; not ok: a retryable
        failure). Never waits: a failure takes the target out here at once and goes to
        Redis in the background; successes go along with the next failure (or at once
        when they close a probe)."""
        self.watch(plan)
        target = self._targets.get(route_id)
        if target is None:
            return
        now = self._now_ms()
        probing = bool(target.probing_since_ms)
        target.probing_since_ms = 0
        window = target.window
        if now - window.start_ms >= self.config.window_ms or now < window.start_ms:
            target.window = window = _Window(now)
            # Successes older than the window are not in it: a target that answered for
            # hours would otherwise need as many failures within one window to open.
            target.unreported_successes = 0
        # An upstream's Retry-After is a hint, never longer than the longest cooldown.
        retry_ms = min(max(retry_after_s or 0, 0) * 1000, self.config.max_cooldown_ms)
        if ok:
            window.successes += 1
            if target.local_open_ms <= now:
                target.local_cooldown_ms = 0
            if not probing:
                target.unreported_successes += 1
                return
            target.pending_until_ms = target.local_open_ms = 0
            target.remote = TargetBreaker(0, 0)
            self._send(plan.alias_pk, route_id, 0, 1, now, 0, probe=True)
            return
        window.failures += 1
        # Out here at once, for the cooldown (or the retry-after), until Redis answers.
        cooldown = max(self.config.cooldown_ms, retry_ms)
        target.pending_until_ms = max(target.pending_until_ms, now + cooldown)
        successes, target.unreported_successes = target.unreported_successes, 0
        self._send(plan.alias_pk, route_id, 1, successes, now, retry_ms, probe=probing)

    def _send(
        self,
        alias_pk: int,
        route_id: int,
        failures: int,
        successes: int,
        now: int,
        retry_ms: int,
        *,
        probe: bool,
    ) -> None:
        if self._redis is None:
            self._settle_local(route_id, now, retry_ms)
            return
        task = asyncio.ensure_future(
            breaker_report(
                self._redis,
                alias_pk,
                route_id,
                failures=failures,
                successes=successes,
                now_ms=now,
                retry_after_ms=retry_ms,
                probe=probe,
                config=self.config,
            )
        )
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._reported(done, route_id, now, retry_ms))

    def _reported(
        self, done: "asyncio.Future[int]", route_id: int, sent_ms: int, retry_ms: int
    ) -> None:
        self._tasks.discard(done)  # type: ignore[arg-type]
        target = self._targets.get(route_id)
        if target is None or done.cancelled():
            return
        if done.exception() is not None:
            self._settle_local(route_id, sent_ms, retry_ms)
            return
        open_until = done.result()
        # Redis's verdict replaces the local guess.
        target.pending_until_ms = target.local_open_ms = 0
        target.remote = TargetBreaker(open_until, target.remote.cooldown_ms)

    def _settle_local(self, route_id: int, now: int, retry_ms: int) -> None:
        """Redis out of reach: the breaker's rule on this process's own counts (a
        retry-after is kept as the floor)."""
        target = self._targets[route_id]
        target.pending_until_ms = 0
        if retry_ms:
            target.local_open_ms = max(target.local_open_ms, now + retry_ms)
        w = target.window
        cfg = self.config
        if w.failures >= cfg.failures and w.failures * 1_000_000 >= cfg.ratio_ppm * (
            w.failures + w.successes
        ):
            cooldown = target.local_cooldown_ms
            cooldown = cfg.cooldown_ms if not cooldown else min(cooldown * 2, cfg.max_cooldown_ms)
            target.local_cooldown_ms = cooldown
            target.local_open_ms = max(target.local_open_ms, now + cooldown)
            target.window = _Window(now)

    # --- concurrency --------------------------------------------------------------------

    def acquire(self, route_id: int) -> None:
        """An attempt on the target starts (in flight +1; if this process holds the
        target's probe, this attempt is the probe)."""
        target = self._targets.get(route_id)
        if target is not None:
            target.in_flight += 1
            if target.probe_token_until_ms:
                target.probe_token_until_ms = 0
                target.probing_since_ms = self._now_ms()

    def release(self, route_id: int) -> None:
        target = self._targets.get(route_id)
        if target is not None and target.in_flight > 0:
            target.in_flight -= 1

    # --- refreshes --------------------------------------------------------------------

    async def refresh_breakers(self) -> None:
        """Read every watched alias's breakers and beat the heartbeat (pipelined), then
        ask for the probe of each half-open target."""
        if self._redis is None:
            return
        plans = list(self._plans.values())
        now = self._now_ms()
        beat = heartbeat(self._redis, self.process_id, now_ms=now)
        reads = [breaker_read(self._redis, p.alias_pk) for p in plans]
        live, *results = await asyncio.gather(beat, *reads, return_exceptions=True)
        if isinstance(live, int) and live > 0:
            self.processes = live
        for plan, read in zip(plans, results, strict=True):
            if not isinstance(read, dict):
                continue  # Redis out of reach: keep what was known
            for t in plan.targets:
                target = self._targets.get(t.route_id) if t.route_id is not None else None
                if target is not None:
                    target.remote = read.get(t.route_id or 0, TargetBreaker(0, 0))
        # A probe this process won and no call used is let go in Redis too (else the
        # target would wait for the key to lapse); another process may win it first.
        now = self._now_ms()
        releases, released = [], set()
        for plan in plans:
            for t in plan.targets:
                target = self._targets.get(t.route_id) if t.route_id is not None else None
                if target is not None and 0 < target.probe_token_until_ms <= now:
                    target.probe_token_until_ms = 0
                    released.add(t.route_id)
                    releases.append(
                        breaker_probe_release(
                            self._redis, plan.alias_pk, t.route_id or 0, owner=self.process_id
                        )
                    )
        # Half-open targets: try to win their probe now, so a call never waits for it.
        asks = [
            self.probe_allowed(plan, t.route_id)
            for plan in plans
            for t in plan.targets
            if t.route_id is not None
            and t.route_id not in released
            and self.needs_probe(t.route_id)
        ]
        if releases or asks:
            await asyncio.gather(*releases, *asks, return_exceptions=True)

    async def refresh_costs(self) -> None:
        """Reload rates and expectations of every watched target, off the event loop."""
        plans = list(self._plans.values())
        alias_routes = {
            p.alias_pk: [t.route_id for t in p.targets if t.route_id is not None] for p in plans
        }
        route_ids = sorted({rid for rids in alias_routes.values() for rid in rids})
        if not route_ids:
            return
        rates, expectations = await asyncio.to_thread(self._load, route_ids)
        self._costs = cost_table(alias_routes, rates, expectations, min_samples=self.min_samples)
        self._latency = {
            (e.route_id, e.effort): e.p50_latency_ms
            for e in expectations
            if e.p50_latency_ms is not None
        }
