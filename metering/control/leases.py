"""Leases: admission and settlement without a Redis round trip while far from every limit.

A server process reserves a slice of a budget's room in Redis (the budget's `held` grows
by the slice) and a slice of a rate window (its request and token counts grow by it), in
one script, then admits calls against its slices and settles them in its own memory.
Every FLUSH_S it reports each slice to Redis in one script and gives back what it no
longer needs. Redis's `held` and the window counts always include every slice, so all
processes together can never admit past a limit: the guarantee is the exact path's, with
one Redis call per many calls instead of two each.

A report is safe to apply twice, late or out of order. A budget slice reports absolute
figures: `used`, what its settled calls used in all (spent grows by the part Redis has
not seen), and `out`, what it still holds (held shrinks to it); `used` only grows and
`out` only shrinks, so an old report changes nothing. A finished slice leaves a
tombstone (its `used`) for FORGET_S, so that even its last report counts once. A window
slice reports the counts it stands for, with a sequence number (its token count may
move both ways). A report whose reply was lost is simply followed by the next one;
nothing is restored or resent as a delta. Slice names are unique (host, pid, a random
part and a serial), so a name in the budget's hash is always this slice of this
generation of the budget.

Slices are taken only far from a limit: what is left must be at least ELIGIBLE_MULTIPLE
times the slice, a slice covers LEASE_CALLS calls of the size asking for it (or twice
the calls in flight; a rate window's, the calls its predecessor saw in SLICE_LIFE_S,
within a share of the room left), and a call that does not fit its process's slice goes
through the exact per-call script. Near a limit slices stop being granted, and the ones
out close at their holders' next report (a closing slice admits nothing, keeps what its
calls in flight hold and gives the rest back). When the exact script would refuse a call while
slices are out, the call waits for them (RECALL_WAIT_S at most) so that no call is
refused while the budget could cover it. Times are Redis's own clock (TIME).

When things go wrong, counters may count too much, never too little:
- A slice not reported for OWNER_TTL_S lapses when a call needs its room (or the periodic
  rebuild finds it): what it holds counts as spent (its process may have admitted and
  settled calls it never reported), the way an expired exact hold is, and the budget is
  rebuilt from the ledger once every call that slice may still carry is over
  (metering.control.counters).
- A slice Redis no longer knows (the budget was reloaded from the ledger after a Redis
  restart, or the slice lapsed) becomes an orphan: it admits nothing more, and what its
  calls used that Redis had not seen is added to spent (absolute, so once), as an exact
  settlement adds a call's use whatever the budget's generation.
- A lease whose reply was lost is reported back as a closing slice that used nothing:
  if Redis took it, it is freed.
- After a failed report the process admits nothing on its slices until a report gets
  through (calls go to the exact path, which answers as configured when Redis is down).
- The rate-limit headers of a leased call are computed from the window as its process
  last saw it, plus its own calls.
"""

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metering.control.scopes import BudgetScope

FLUSH_S = 0.05  # how often a process with leases reports its slices to Redis
IDLE_S = 1.0  # a slice unused this long closes
MAX_AGE_S = 10.0  # a slice closes (and a new one is taken) at least this often
OWNER_TTL_S = 30  # a slice not reported for this long may lapse
RECALL_WAIT_S = 0.5  # the most a near-limit call waits for other processes' slices
ELIGIBLE_MULTIPLE = 16  # a slice is granted only where what is left is 16 times larger
# A rate-window slice counts every request it admits for good (a window never gives a
# request back), so at a steady rate it runs out every LEASE_CALLS calls: at thousands of
# calls a second that is a LEASE script per few milliseconds. Its successor is sized for
# the rate it was used at, to last about SLICE_LIFE_S, growing at most SLICE_GROWTH-fold
# per renewal and never past what the window can grant far from its limits.
SLICE_LIFE_S = 1.0
SLICE_GROWTH = 8
FORGET_S = 5.0  # a finished slice's tombstone stays this long (late copies of reports)


def owner_id() -> str:
    """This process, as its slices are named in Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class BudgetSlice:
    scope: BudgetScope
    key: str
    name: str  # its name in the budget's hash (lo:, lu:, lc:, lt:<name>), never reused
    limit: int
    granted: int  # what Redis held for it when it was taken
    busy: int = 0  # holds of this process's calls in flight on it
    calls: int = 0  # how many calls those are
    used: int = 0  # what its settled calls used, in all
    closing: bool = False  # admits no call; keeps only what its calls in flight hold
    orphan: bool = False  # Redis does not know it (reloaded budget, or lapsed)
    acked_used: int = 0  # `used` as Redis last confirmed it
    acked_out: int = -1  # what Redis last confirmed the slice holds (-1: not yet)
    orphan_base: int = 0  # an orphan's `used` when Redis lost it
    charged: int = 0  # what Redis has added to spent of an orphan's use since
    finished: float = 0.0  # when Redis confirmed it done (its tombstone goes FORGET_S on)
    last_use: float = field(default_factory=time.monotonic)
    born: float = field(default_factory=time.monotonic)

    @property
    def free(self) -> int:
        return self.granted - self.busy - self.used

    def target(self) -> int:
        """What the slice should hold in Redis now (never more than it did before)."""
        if self.closing:
            return self.busy
        return max(self.granted - self.used, self.busy)


@dataclass(slots=True)
class WindowSlice:
    key: str
    name: str
    rpm: int
    tpm: int
    requests: int  # granted in Redis
    tokens: int  # granted in Redis
    r_seen: int  # the window's counts when last seen, this slice's share included
    t_seen: int
    busy: int = 0  # calls in flight on it
    used_r: int = 0
    used_t: int = 0  # estimates of calls admitted, corrected by their settlements
    closing: bool = False
    seq: int = 0  # reports sent
    acked: tuple[int, int] = (-1, -1)  # counts Redis last confirmed for it
    last_use: float = field(default_factory=time.monotonic)
    born: float = field(default_factory=time.monotonic)

    def target(self) -> tuple[int, int]:
        """The counts this slice stands for in the window: its grant while open (tokens
        past it included), what its calls used once closing."""
        if self.closing:
            return self.used_r, self.used_t
        return self.requests, max(self.tokens, self.used_t)

    def eligible(self, r: int, t: int) -> bool:
        """Still far enough from the window's limits to keep (half the margin it was
        granted with: no giving back right after taking)."""
        half = ELIGIBLE_MULTIPLE // 2
        return (self.rpm <= 0 or self.rpm - r >= half * self.requests) and (
            self.tpm <= 0 or self.tpm - t >= half * self.tokens
        )


def paced_calls(w: WindowSlice, est_tokens: int, now: float) -> int:
    """The requests a successor of window slice `w` should cover: as many as `w` admitted
    per SLICE_LIFE_S, at most SLICE_GROWTH times `w`'s, and at most a 2 * ELIGIBLE_MULTIPLE
    share of the room the window had left when last seen (so a grown slice is still one
    LEASE grants, and near the limit slices shrink back to LEASE_CALLS)."""
    age = max(now - w.born, FLUSH_S)
    calls = min(int(w.used_r * SLICE_LIFE_S / age), SLICE_GROWTH * w.requests)
    share = 2 * ELIGIBLE_MULTIPLE
    if w.rpm > 0:
        calls = min(calls, (w.rpm - w.r_seen) // share)
    if w.tpm > 0:
        calls = min(calls, (w.tpm - w.t_seen) // (share * max(est_tokens, 1)))
    return calls


@dataclass(slots=True)
class Lease:
    """The slices one call was admitted on (settlement gives them back)."""

    budgets: list[BudgetSlice]
    windows: list[WindowSlice]
    low: bool = False  # a slice has less than a quarter left: time to take more


REPORT, CHARGE, FORGET = 0, 1, 2


@dataclass(slots=True)
class Report:
    """One flush: the figures it carries, to confirm when its reply comes."""

    # (slice, mode, used, out): mode REPORT, CHARGE (an orphan's) or FORGET (FLUSH_LUA)
    budgets: list[tuple[BudgetSlice, int, int, int]]
    windows: list[tuple[WindowSlice, tuple[int, int]]]


class LeaseBook:
    """This process's slices, by Redis key. Pure bookkeeping: ControlStore talks to Redis."""

    def __init__(
        self,
        lease_calls: int,
        owner: str = "",
        on_crossed: Callable[[BudgetScope, int, int], None] | None = None,
    ) -> None:
        self.lease_calls = lease_calls
        # told each budget's spent before and after what a report added to it (alerts)
        self.on_crossed = on_crossed
        self.owner = owner or owner_id()
        self._pid = os.getpid()
        self._serial = 0
        self.budgets: dict[str, BudgetSlice] = {}  # the slice new calls go on
        self.windows: dict[str, WindowSlice] = {}
        # closing slices replaced by a newer one, reported until they are done
        self.retired: list[BudgetSlice] = []
        self.retired_windows: list[WindowSlice] = []
        self.urgent = False  # a slice is to be reported at once
        self.healthy = True  # the last flush succeeded: slices may admit calls
        self.closed = False  # the store is closing: tombstones go at once
        # scopes refused a slice (near a limit) are not asked again before this time
        self.cooldown: dict[str, float] = {}

    def take(
        self,
        scopes: Sequence[BudgetScope],
        costs: list[int],
        windows: list[str],
        est_tokens: int,
    ) -> "Lease | None":
        """Admit a call on this process's slices, on all of them or none."""
        if not self.healthy:
            return None
        budgets = self.budgets
        slices = []
        for i, scope in enumerate(scopes):
            s = budgets.get(scope.key)
            if s is None or s.closing or s.granted - s.busy - s.used < costs[i]:
                return None
            if s.limit != scope.limit:  # the limit changed: a new slice, checked anew
                s.closing = True
                return None
            slices.append(s)
        wins = []
        for key in windows:
            w = self.windows.get(key)
            if w is None or w.closing or w.used_r >= w.requests or w.used_t + est_tokens > w.tokens:
                return None
            wins.append(w)
        now = time.monotonic()
        low = False
        for i, s in enumerate(slices):
            s.busy += costs[i]
            s.calls += 1
            s.last_use = now
            low = low or (s.granted - s.busy - s.used) * 4 < s.granted
        for w in wins:
            w.busy += 1
            w.used_r += 1
            w.used_t += est_tokens
            w.last_use = now
            low = low or (w.requests - w.used_r) * 4 < w.requests
        return Lease(slices, wins, low)

    def wanted(
        self, keys: list[str], holds: list[int], windows: list[str], est_tokens: int
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """What a new lease should reserve for a call's scopes where the current slice is
        missing, closing or running low (else nothing): lease_calls calls, or twice the
        calls this process has in flight on the slice if more (a slice that the calls in
        flight fill would be renewed on every call)."""
        amounts = []
        for key, hold in zip(keys, holds, strict=True):
            s = self.budgets.get(key)
            if s is None or s.closing or s.free < hold or s.free * 4 < s.granted:
                calls = max(self.lease_calls, 2 * s.calls if s is not None else 0)
                amounts.append(max(calls * hold, 1))
            else:
                amounts.append(0)
        counts = []
        now = time.monotonic()
        for key in windows:
            w = self.windows.get(key)
            if (
                w is None
                or w.closing
                or w.used_t + est_tokens > w.tokens
                or (w.requests - w.used_r) * 4 < w.requests
            ):
                calls = self.lease_calls
                if w is not None:
                    calls = max(calls, 2 * w.busy, paced_calls(w, est_tokens, now))
                counts.append((calls, calls * est_tokens))
            else:
                counts.append((0, 0))
        return amounts, counts

    def settle(
        self,
        lease: "Lease",
        holds: list[int],
        actuals: list[int],
        token_delta: int,
    ) -> None:
        """A leased call ended: its holds leave its slices, what it used waits for the
        next report."""
        for s, hold, actual in zip(lease.budgets, holds, actuals, strict=True):
            s.busy -= hold
            s.calls -= 1
            s.used += actual
        for w in lease.windows:
            w.busy -= 1
            w.used_t += token_delta

    def due(self, now: float) -> None:
        """Close idle and old slices; forget cooldowns that are over."""
        if self.cooldown:
            self.cooldown = {k: t for k, t in self.cooldown.items() if t > now}
        for s in self.budgets.values():
            if now - s.last_use > IDLE_S or now - s.born > MAX_AGE_S:
                s.closing = True
        for w in self.windows.values():
            if now - w.last_use > IDLE_S or now - w.born > MAX_AGE_S:
                w.closing = True

    def close_all(self) -> None:
        self.closed = True
        for s in self._all_budgets():
            s.closing = True
        for w in self._all_windows():
            w.closing = True

    def pending(self) -> bool:
        return bool(self.budgets or self.windows or self.retired or self.retired_windows)

    def _all_budgets(self) -> list[BudgetSlice]:
        return [*self.budgets.values(), *self.retired]

    def _all_windows(self) -> list[WindowSlice]:
        return [*self.windows.values(), *self.retired_windows]

    def report(self, now: float) -> tuple[list[str], list[int | str], Report] | None:
        """What the next flush carries, as one script's keys and arguments."""
        reports = self.reports(now)
        return reports[0] if reports else None

    def reports(
        self, now: float, slot_of: Callable[[str], int] | None = None
    ) -> list[tuple[list[str], list[int | str], Report]]:
        """What the next flush carries: one FLUSH per hash slot with `slot_of` (a Redis
        Cluster runs a script only on keys of one slot), else one for all. Every live
        budget slice goes, even with nothing new: the report keeps it from lapsing and
        hears whether a call waits for it."""
        report = self._collect(now)
        if report is None:
            return []
        if slot_of is None:
            return [(*self._encode(report), report)]
        groups: dict[int, Report] = {}
        for entry in report.budgets:
            groups.setdefault(slot_of(entry[0].key), Report([], [])).budgets.append(entry)
        for window in report.windows:
            groups.setdefault(slot_of(window[0].key), Report([], [])).windows.append(window)
        return [(*self._encode(group), group) for group in groups.values()]

    def _collect(self, now: float) -> Report | None:
        report = Report([], [])
        for s in self._all_budgets():
            if s.finished:
                if now - s.finished > FORGET_S or self.closed:
                    report.budgets.append((s, FORGET, 0, 0))
            elif not s.orphan:
                report.budgets.append((s, REPORT, s.used, s.target()))
            elif s.used - s.orphan_base > s.charged:
                report.budgets.append((s, CHARGE, s.used - s.orphan_base, 0))
            else:
                self._finish_if_done(s, now)
        for w in self._all_windows():
            counts = w.target()
            if counts != w.acked:
                report.windows.append((w, counts))
            elif w.closing and w.busy == 0:
                self._drop_window(w)
        if not report.budgets and not report.windows:
            return None
        return report

    @staticmethod
    def _encode(report: Report) -> tuple[list[str], list[int | str]]:
        keys = [s.key for s, *_ in report.budgets] + [w.key for w, _ in report.windows]
        args: list[int | str] = [len(report.budgets), len(report.windows)]
        for s, mode, used, out in report.budgets:
            args += (s.name, mode, used, out)
        for w, (r, t) in report.windows:
            w.seq += 1
            args += (w.name, w.seq, r, t)
        return keys, args

    def confirmed(self, report: Report, reply: list[int], now: float) -> None:
        """Apply a flush's reply: budgets taken across an alert percentage are told;
        done slices finish; a slice no longer far from its limit, or asked back, closes;
        one Redis no longer knows becomes an orphan."""
        n, m = len(report.budgets), len(report.windows)
        for i, (s, mode, used, out) in enumerate(report.budgets):
            spent_after, held_after = reply[i], reply[n + i]
            recalling, owned = reply[2 * n + i], reply[3 * n + i]
            if mode == FORGET:
                self._drop(s)
                continue
            if mode == CHARGE:
                self._added(s, used - s.charged, spent_after)
                s.charged = used
            elif owned:
                self._added(s, used - s.acked_used, spent_after)
                s.acked_used, s.acked_out = used, out
                if not s.closing and (
                    recalling
                    or s.limit - spent_after - held_after < ELIGIBLE_MULTIPLE // 2 * s.granted
                ):
                    s.closing = True
                    self.urgent = True  # a call may be waiting for it: report again now
                    self.cooldown[s.key] = now + IDLE_S
            else:  # reloaded or lapsed: what Redis has not seen of it is charged
                s.orphan = s.closing = True
                s.orphan_base = s.acked_used
                self.urgent = True
            self._finish_if_done(s, now)
        for j, (w, counts) in enumerate(report.windows):
            r, t = reply[4 * n + j], reply[4 * n + m + j]
            if r < 0:  # the window expired: nothing left to correct
                self._drop_window(w)
                continue
            w.acked = counts
            w.r_seen, w.t_seen = r - counts[0] + w.requests, t - counts[1] + w.tokens
            if w.closing:
                if w.busy == 0 and w.target() == counts:
                    self._drop_window(w)
            elif not w.eligible(r, t):
                w.closing = True
                self.urgent = True

    def _added(self, s: BudgetSlice, amount: int, spent_after: int) -> None:
        if amount > 0 and spent_after >= 0 and self.on_crossed is not None:
            self.on_crossed(s.scope, spent_after - amount, spent_after)

    def _finish_if_done(self, s: BudgetSlice, now: float) -> None:
        """A slice with no call in flight whose every use Redis has, and that holds
        nothing, is done: no call goes on it; its tombstone is forgotten later."""
        if s.busy or s.finished:
            return
        if s.orphan and s.charged < s.used - s.orphan_base:
            return
        if not s.orphan and (s.acked_out != 0 or s.acked_used != s.used):
            return
        s.finished = now
        if self.budgets.get(s.key) is s:
            del self.budgets[s.key]
            self.retired.append(s)

    def _drop(self, s: BudgetSlice) -> None:
        if self.budgets.get(s.key) is s:
            del self.budgets[s.key]
        elif s in self.retired:
            self.retired.remove(s)

    def _drop_window(self, w: WindowSlice) -> None:
        if self.windows.get(w.key) is w:
            del self.windows[w.key]
        elif w in self.retired_windows:
            self.retired_windows.remove(w)

    def new_name(self) -> str:
        if os.getpid() != self._pid:  # a forked copy of the book: never share names
            self.owner, self._pid = owner_id(), os.getpid()
        self._serial += 1
        return f"{self.owner}:{self._serial}"

    def lost(
        self,
        scopes: list[BudgetScope],
        names: list[str],
        amounts: list[int],
        windows: list[tuple[str, str, int, int]],
    ) -> None:
        """A lease whose reply never came may still have been taken: its slices are
        reported closing with nothing used, which frees them if they exist."""
        for scope, name, amount in zip(scopes, names, amounts, strict=True):
            if amount:
                lapsed = BudgetSlice(scope, scope.key, name, scope.limit, amount)
                lapsed.closing = True
                self.retired.append(lapsed)
        for key, name, requests, tokens in windows:
            if requests:
                w = WindowSlice(key, name, 0, 0, requests, tokens, 0, 0, closing=True)
                w.acked = (requests, tokens)  # as LEASE would have counted it
                self.retired_windows.append(w)
        self.urgent = True

    def granted(self, scope: BudgetScope, name: str, amount: int) -> None:
        """A slice taken in Redis becomes the one new calls go on; the one it replaces
        closes and is reported until its calls end."""
        key = scope.key
        current = self.budgets.get(key)
        if current is not None:
            current.closing = True
            self.retired.append(current)
        self.budgets[key] = BudgetSlice(scope, key, name, scope.limit, amount)

    def granted_window(
        self,
        key: str,
        name: str,
        limits: tuple[int, int],
        requests: int,
        tokens: int,
        seen: tuple[int, int],
    ) -> None:
        current = self.windows.get(key)
        if current is not None:
            current.closing = True
            self.retired_windows.append(current)
        rpm, tpm = limits
        self.windows[key] = WindowSlice(
            key, name, rpm, tpm, requests, tokens, *seen, acked=(requests, tokens)
        )

    def cooling(self, keys: list[str], now: float) -> bool:
        return any(self.cooldown.get(key, 0.0) > now for key in keys)
