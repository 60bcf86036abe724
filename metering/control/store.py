"""The control store: admission, settlement and lazy loading of budgets in Redis, over one
pipelined connection per server process (metering.control.redis_pipe; on a Redis Cluster,
one per node, each script sent to the node of its keys' slot).

Every decision is one Lua script (metering.control.scripts), so it is atomic across
processes: concurrent calls can never together pass a budget. Far from every limit, calls
are admitted on this process's slices instead (metering.control.leases). A budget missing
from Redis is loaded from the ledger before anything is admitted against it. An
admission whose reply was lost is cancelled by its hold id once Redis answers; a hold
never settled is reaped by the periodic rebuild (metering.control.counters).
"""

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from metering.control.leases import (
    ELIGIBLE_MULTIPLE,
    FLUSH_S,
    OWNER_TTL_S,
    RECALL_WAIT_S,
    Lease,
    LeaseBook,
)
from metering.control.redis_pipe import RedisUnavailable, control_client, key_slot_of
from metering.control.scopes import BudgetCost, BudgetScope, Grant, RateScope, generation_key
from metering.control.scripts import ADMIT, CANCEL, FLUSH, LEASE, LOAD, RECALL, SETTLE

logger = logging.getLogger(__name__)


HOLD_TTL_S = 3600.0  # default: a hold not settled this long after admission is reaped
CANCEL_AGAIN_S = 2.0  # a lost admission's cancel that found nothing is tried again after


def holds_key(key: str) -> str:
    """The sorted set registering a budget's exact holds ("<hold id>:<amount>" by expiry)."""
    return key + ":holds"


# The keys each script names (metering.control.scripts), in its KEYS order. On a Redis
# Cluster they must share one slot: every one carries the tenant's hash tag.


def load_keys(key: str) -> list[str]:
    """LOAD: the budget, its hold register, its tenant's generation counter."""
    return [key, holds_key(key), generation_key(key)]


def admit_keys(budgets: Sequence[BudgetScope], windows: Sequence[str]) -> list[str]:
    """ADMIT and SETTLE: the budgets, the rate windows, the budgets' hold registers."""
    return [*(b.key for b in budgets), *windows, *(holds_key(b.key) for b in budgets)]


def cancel_keys(budgets: Sequence[BudgetScope]) -> list[str]:
    """CANCEL: the budgets and their hold registers."""
    return [*(b.key for b in budgets), *(holds_key(b.key) for b in budgets)]


def lease_keys(budgets: Sequence[BudgetScope], windows: Sequence[str]) -> list[str]:
    """LEASE: the budgets and the rate windows (FLUSH: those of one slot, LeaseBook)."""
    return [*(b.key for b in budgets), *windows]


@dataclass(slots=True)
class Admission:
    allowed: bool
    reason: str = ""  # "budget" | "requests" | "tokens" | "unavailable"
    # Granted output tokens (allowed), or the refusing budget and what was left in it.
    output_tokens: int = 0
    budget: BudgetScope | None = None
    left: int = 0
    # The id of the hold placed on each budget (exact path: settlement names it back; a
    # leased call settles on its slices, which need none).
    generations: list[int] = field(default_factory=list)
    # The token-rate windows the call was counted in (settlement corrects those).
    token_windows: list[str] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    retry_after_s: int = 0
    # The call was admitted on this process's slices (metering.control.leases), not in Redis.
    lease: Lease | None = None
    # What it holds of each budget, where known here (leased: the grant is out_max).
    holds: list[int] | None = None


# The control store cannot be reached or did not answer in time.
ControlUnavailable = RedisUnavailable


class ControlStore:
    """Async Redis front: admission, settlement and lazy loading of budgets, over one
    pipelined connection per process (metering.control.redis_pipe)."""

    def __init__(
        self,
        url: str,
        *,
        window_s: int = 60,
        lease_calls: int = 0,
        on_crossed: Callable[[BudgetScope], None] | None = None,
        hold_ttl_s: float = HOLD_TTL_S,  # float-ok: seconds
        redis_timeout_s: float = 1.0,  # float-ok: seconds; no reply this long: unavailable
    ) -> None:
        self._redis = control_client(url, timeout=redis_timeout_s)
        self.window_s = window_s
        # An exact hold not settled this long after admission is reaped (counted as
        # spent, the budget rebuilt from the ledger): the longest a call may run.
        self.hold_ttl_ms = int(hold_ttl_s * 1000)
        # Called when a settlement takes a budget across one of its alert percentages.
        self.on_crossed = on_crossed
        # lease_calls > 0: far from their limits, calls are admitted on slices this
        # process takes lease_calls calls at a time (metering.control.leases).
        self.book = LeaseBook(lease_calls, on_crossed=self._crossed) if lease_calls > 0 else None
        self._leasing: dict[tuple[str, ...], asyncio.Future[None]] = {}
        self._window_keys: dict[int, tuple[int, Sequence[RateScope], list[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ahead: set[tuple[str, ...]] = set()  # scopes whose next slices are coming
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def _windows(self, rates: Sequence[RateScope], now: float) -> tuple[list[str], int]:
        """The rate-window hashes of `rates` at `now`, and seconds until the next window
        (remembered per caller's scopes for the window: every call of a key needs them)."""
        window = int(now // self.window_s)
        reset = int(self.window_s - (now % self.window_s)) + 1
        cached = self._window_keys.get(id(rates))
        if cached is not None and cached[0] == window and cached[1] is rates:
            return cached[2], reset
        keys = [r.window_key(window) for r in rates]
        if len(self._window_keys) > 10_000:
            self._window_keys.clear()
        self._window_keys[id(rates)] = (window, rates, keys)  # holds `rates`: ids stay unique
        return keys, reset

    def admit_leased(
        self,
        budgets: Sequence[BudgetScope],
        costs: Sequence[BudgetCost],
        grant: Grant,
        rates: Sequence[RateScope],
        est_tokens: int,
        load_in_thread: Callable[[Callable[[], int]], Any],
    ) -> Admission | None:
        """Admit the call on this process's slices, without waiting for anything, or
        None (then `admit`). Takes more slices ahead when these run low."""
        book = self.book
        if book is None or not (budgets or rates):
            return None
        out_max = grant.out_max
        holds = [c.fixed + c.per_token * out_max for c in costs]
        windows, reset = self._windows(rates, time.time())
        admission = self._take(book, budgets, holds, grant, rates, windows, est_tokens, reset)
        if admission is not None and admission.lease.low:  # type: ignore[union-attr]
            keys = [b.key for b in budgets]
            group = (*keys, *windows)
            if group not in self._leasing and group not in self._ahead:
                # take more before the slices run out, so calls do not wait for it
                self._ahead.add(group)
                lease = self._lease(
                    budgets, holds, rates, windows, est_tokens, load_in_thread, keys
                )
                self._background(lease, group)
        return admission

    async def admit(
        self,
        *,
        budgets: Sequence[BudgetScope],
        costs: Sequence[BudgetCost],
        grant: Grant,
        rates: Sequence[RateScope],
        est_tokens: int,
        load_in_thread: Callable[[Callable[[], int]], Any],
        leased_tried: bool = False,
    ) -> Admission:
        """Hold the call against every budget and count it in every rate window, or
        refuse it, in one atomic script (or on this process's slices, far from every
        limit). A budget missing from Redis is loaded from the ledger first.
        `leased_tried`: the caller has just had None from `admit_leased`."""
        if not leased_tried:
            admission = self.admit_leased(budgets, costs, grant, rates, est_tokens, load_in_thread)
            if admission is not None:
                return admission
        windows, reset = self._windows(rates, time.time())
        book = self.book
        if book is not None and (budgets or rates):
            keys = [b.key for b in budgets]
            if not book.cooling(keys + windows, time.monotonic()):
                holds = [c.fixed + c.per_token * grant.out_max for c in costs]
                await self._lease(budgets, holds, rates, windows, est_tokens, load_in_thread, keys)
                admission = self._take(
                    book, budgets, holds, grant, rates, windows, est_tokens, reset
                )
                if admission is not None:
                    return admission
        keys = admit_keys(budgets, windows)
        hold_id = random.getrandbits(52) + 1  # unique among a budget's live holds
        args: list[int] = [
            len(budgets),
            len(rates),
            grant.out_min,
            grant.out_max,
            grant.share,
            est_tokens,
            self.window_s * 2,
            hold_id,
            self.hold_ttl_ms,
        ]
        for budget, cost in zip(budgets, costs, strict=True):
            args += (budget.limit, cost.fixed, cost.per_token)
        for r in rates:
            args += (r.requests_per_minute or 0, r.tokens_per_minute or 0)
        deadline = time.monotonic() + RECALL_WAIT_S
        loads = 0
        while True:  # raises ControlUnavailable when Redis is out of reach
            try:
                code, index, *values = await self._redis.run(ADMIT, keys, args)
            except ControlUnavailable:
                if budgets:  # Redis may have taken the holds: give them back once it answers
                    self._background(self._cancel(budgets, hold_id), ())
                raise
            if code == -1:
                loads += 1
                if loads > len(budgets) + 1:
                    raise ControlUnavailable("budgets keep leaving Redis while loading them")
                budget = budgets[index - 1]  # not in Redis yet: load it from the ledger, retry
                used = await load_in_thread(budget.load_used)
                await self._redis.run(LOAD, load_keys(budget.key), [used, budget.ttl_s])
                continue
            if code == -4 and values[1] > 0 and time.monotonic() < deadline:
                # Refused while slices hold part of the budget: ask them back, then retry.
                await self._recall(budgets[index - 1].key)
                continue
            break
        if code == 1:
            return Admission(
                True,
                output_tokens=index,
                generations=values[2:],
                token_windows=windows,
                headers=self._headers(rates, code, values[0], values[1], reset) if rates else [],
            )
        headers = self._headers(rates, code, 0, 0, reset)
        if code == -4:
            return Admission(
                False, "budget", budget=budgets[index - 1], left=int(values[0]), headers=headers
            )
        reason = "requests" if code == -2 else "tokens"
        return Admission(False, reason, headers=headers, retry_after_s=reset)

    # --- leases (metering.control.leases) ----------------------------------------------------

    def _take(
        self,
        book: LeaseBook,
        budgets: Sequence[BudgetScope],
        holds: list[int],
        grant: Grant,
        rates: Sequence[RateScope],
        windows: list[str],
        est_tokens: int,
        reset: int,
    ) -> Admission | None:
        lease = book.take(budgets, holds, windows, est_tokens)
        if lease is None:
            return None
        headers: list[tuple[bytes, bytes]] = []
        if rates:  # the first window as this process last saw it, plus its own calls
            w = lease.windows[0]
            used_r = w.r_seen - w.requests + w.used_r
            used_t = w.t_seen - w.tokens + w.used_t
            headers = self._headers(rates, 1, used_r, used_t, reset)
        return Admission(
            True,
            output_tokens=grant.out_max,
            token_windows=windows,
            headers=headers,
            lease=lease,
            holds=holds,
        )

    async def _lease(
        self,
        budgets: Sequence[BudgetScope],
        holds: list[int],
        rates: Sequence[RateScope],
        windows: list[str],
        est_tokens: int,
        load_in_thread: Callable[[Callable[[], int]], Any],
        keys: list[str],
    ) -> None:
        """Take new slices of the call's scopes that need one (one script), unless one is
        near its limit; concurrent calls of the same scopes share one request."""
        assert self.book is not None
        book = self.book
        group = (*keys, *windows)
        pending = self._leasing.get(group)
        if pending is not None:
            await asyncio.shield(pending)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leasing[group] = done
        try:
            amounts, counts = book.wanted(keys, holds, windows, est_tokens)
            if not any(amounts) and not any(r for r, _ in counts):
                return
            names = [book.new_name() if a else "" for a in amounts]
            window_names = [book.new_name() if r else "" for r, _ in counts]
            args: list[int | str] = [
                ELIGIBLE_MULTIPLE,
                len(budgets),
                len(rates),
                self.window_s * 2,
                OWNER_TTL_S * 1000,
            ]
            for budget, amount, name in zip(budgets, amounts, names, strict=True):
                args += (budget.limit, amount, name)
            for r, (requests, tokens), name in zip(rates, counts, window_names, strict=True):
                args += (
                    r.requests_per_minute or 0,
                    r.tokens_per_minute or 0,
                    requests,
                    tokens,
                    name,
                )
            for _ in range(len(budgets) + 2):
                try:
                    reply = await self._redis.run(LEASE, lease_keys(budgets, windows), args)
                except ControlUnavailable:
                    # no reply, but Redis may have taken the slices: free them if so
                    window_slices = [
                        (key, name, requests, tokens)
                        for key, name, (requests, tokens) in zip(
                            windows, window_names, counts, strict=True
                        )
                    ]
                    book.lost(list(budgets), names, amounts, window_slices)
                    self._start_flusher()
                    raise
                if reply[0] != -1:
                    break
                budget = budgets[reply[1] - 1]
                used = await load_in_thread(budget.load_used)
                await self._redis.run(LOAD, load_keys(budget.key), [used, budget.ttl_s])
            else:
                return
            if reply[0] == 0:  # near a limit: exact admission for a while
                book.cooldown[group[reply[1] - 1]] = time.monotonic() + 1.0
                return
            n, m = len(budgets), len(rates)
            for i, budget in enumerate(budgets):
                if amounts[i]:
                    book.granted(budget, names[i], amounts[i])
            for j, key in enumerate(windows):
                requests, tokens = counts[j]
                if requests:
                    limits = (rates[j].requests_per_minute or 0, rates[j].tokens_per_minute or 0)
                    seen = (reply[1 + n + j], reply[1 + n + m + j])
                    book.granted_window(key, window_names[j], limits, requests, tokens, seen)
            self._start_flusher()
        finally:
            del self._leasing[group]
            done.set_result(None)

    async def _cancel(self, budgets: Sequence[BudgetScope], hold_id: int) -> None:
        """Release the holds of an admission whose reply was lost (its caller was refused):
        as soon as Redis answers, and twice more a little later in case the admission,
        still queued in Redis on the dropped connection, ran after the first try. Past the
        hold's expiry the periodic rebuild reaps it anyway (metering.control.counters)."""
        keys = cancel_keys(budgets)
        deadline = time.monotonic() + self.hold_ttl_ms / 1000
        delay, tries = FLUSH_S, 0
        while tries < 3:
            try:
                if await self._redis.run(CANCEL, keys, [len(budgets), hold_id]):
                    return  # released: it cannot be registered again
                tries += 1
                await asyncio.sleep(CANCEL_AGAIN_S)
            except ControlUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _background(self, work: Any, group: tuple[str, ...]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(partial(self._background_done, group))

    def _background_done(self, group: tuple[str, ...], task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        self._ahead.discard(group)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("background control work failed: %r", task.exception())

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            while self.book is not None and self.book.pending():
                if self.book.urgent:
                    self.book.urgent = False
                else:
                    await asyncio.sleep(FLUSH_S)
                try:
                    await self.flush()
                except ControlUnavailable:
                    pass  # the next report carries the same figures
                except Exception:  # a bug must not stop the reports: slices would lapse
                    logger.exception("reporting leased slices failed")
                    self.book.healthy = False
        finally:
            self._flusher = None

    async def flush(self) -> None:
        """Report this process's slices to Redis: what leased calls used, what the slices
        still hold. Safe to repeat; after a failure the slices admit nothing until a
        report gets through."""
        book = self.book
        if book is None:
            return
        async with self._flushing:
            now = time.monotonic()
            book.due(now)
            reports = book.reports(now, key_slot_of if self._redis.cluster else None)
            if not reports:
                if not book.healthy:  # nothing to report: ask Redis whether it is back
                    await self._redis.run(FLUSH, [], [OWNER_TTL_S * 1000, 0, 0])
                    book.healthy = True
                return
            replies = await asyncio.gather(
                *(
                    self._redis.run(FLUSH, keys, [OWNER_TTL_S * 1000, *args])
                    for keys, args, _ in reports
                ),
                return_exceptions=True,
            )
            failed: BaseException | None = None
            for (_, _, carried), reply in zip(reports, replies, strict=True):
                if isinstance(reply, BaseException):
                    failed = reply  # its slices are reported again next time
                else:
                    book.confirmed(carried, reply, time.monotonic())
            if failed is not None:
                book.healthy = False
                raise failed
            book.healthy = True

    async def _recall(self, key: str) -> None:
        """Ask every process's slices of budget `key` back (this one's at once), lapse
        those of processes gone silent, and give them a flush to come back."""
        if self.book is not None:
            mine = self.book.budgets.get(key)
            if mine is not None:
                mine.closing = True
                try:
                    await self.flush()
                except ControlUnavailable:
                    pass
        await self._redis.run(RECALL, [key], [int(RECALL_WAIT_S * 1000), self.hold_ttl_ms])
        await asyncio.sleep(FLUSH_S * 2)

    def _headers(
        self,
        rates: Sequence[RateScope],
        code: int,
        used_requests: int,
        used_tokens: int,
        reset: int,
    ) -> list[tuple[bytes, bytes]]:
        if not rates:
            return []
        scope = rates[0]  # (b"%d": one C call per value, where str().encode() made two)
        out: list[tuple[bytes, bytes]] = []
        if scope.requests_per_minute:
            remaining = max(0, scope.requests_per_minute - used_requests) if code == 1 else 0
            out += [
                (b"x-ratelimit-limit-requests", b"%d" % scope.requests_per_minute),
                (b"x-ratelimit-remaining-requests", b"%d" % remaining),
                (b"x-ratelimit-reset-requests", b"%ds" % reset),
            ]
        if scope.tokens_per_minute:
            remaining_tokens = max(0, scope.tokens_per_minute - used_tokens) if code == 1 else 0
            out += [
                (b"x-ratelimit-limit-tokens", b"%d" % scope.tokens_per_minute),
                (b"x-ratelimit-remaining-tokens", b"%d" % remaining_tokens),
                (b"x-ratelimit-reset-tokens", b"%ds" % reset),
            ]
        if code in (-2, -3):
            out.append((b"retry-after", b"%d" % reset))
        return out

    def settle(
        self,
        *,
        budgets: Sequence[BudgetScope],
        holds: list[int],
        actuals: list[int],
        rates: Sequence[RateScope],
        token_delta: int,
        generations: list[int] | None = None,
        token_windows: list[str] | None = None,
        lease: Lease | None = None,
    ) -> "asyncio.Future[list[int]] | None":
        """Release each budget's hold and add what the call actually used; callers need
        not wait. The command is on its way when this returns (later commands of this
        process run after it); its future gives each budget's use after settling (-1
        where the budget has left Redis) or fails with ControlUnavailable. A leased call
        settles on its slices (None: the next report carries it). Either way a budget
        taken across an alert percentage calls `on_crossed`."""
        if lease is not None:
            self.settle_leased(lease, holds, actuals, token_delta)
            return None
        if token_windows is None:
            token_windows = self._windows(rates, time.time())[0]
        keys = admit_keys(budgets, token_windows)
        args: list[int] = [len(budgets), len(token_windows), token_delta, self.window_s * 2]
        for hold, actual, gen in zip(holds, actuals, generations or [0] * len(holds), strict=True):
            args += (hold, actual, gen)
        future = self._redis.run_nowait(SETTLE, keys, args)
        future.add_done_callback(partial(self._settled, budgets, actuals))
        return future

    def settle_leased(
        self, lease: Lease, holds: list[int], actuals: list[int], token_delta: int
    ) -> None:
        """Settle a call admitted on this process's slices (the next report carries it)."""
        assert self.book is not None
        self.book.settle(lease, holds, actuals, token_delta)

    def _settled(
        self, budgets: Sequence[BudgetScope], actuals: list[int], done: "asyncio.Future[list[int]]"
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            logger.error(
                "could not settle a hold (%s); it stays until the budget is reloaded",
                None if done.cancelled() else done.exception(),
            )
            return
        for budget, after, actual in zip(budgets, done.result(), actuals, strict=True):
            if after >= 0 and budget.alert_at:
                self._crossed(budget, after - actual, after)

    def _crossed(self, budget: BudgetScope, before: int, after: int) -> None:
        if self.on_crossed is not None and budget.crossed(before, after):
            try:
                self.on_crossed(budget)
            except Exception:  # an alert is best effort; the sweep catches up
                logger.exception("could not signal an alert for %s", budget.label)

    async def close(self) -> None:
        if self._tasks:  # leases being taken land first: none may arrive after the end
            await asyncio.wait(self._tasks, timeout=2.0)
        book = self.book
        if book is not None:  # close every slice and report until Redis has them all
            book.close_all()
            for _ in range(40):
                try:
                    await self.flush()
                except ControlUnavailable:
                    pass
                if not book.pending():
                    break
                await asyncio.sleep(FLUSH_S)
        if self._flusher is not None:
            self._flusher.cancel()
        await self._redis.close()
