"""Leases: admission and settlement without a Redis round trip while far from every limit.

A server process reserves a slice of a budget's room in Redis (the budget's `held` grows
by the slice) and a slice of a rate window (its request and token counts grow by it), in
one script, then admits calls against its slices and settles them in its own memory.
Every FLUSH_S it sends what its calls used in one script (spent grows, the slice shrinks
by as much) and gives back what it no longer needs. Redis's `held` and the window counts
always include every slice, so all processes together can never admit past a limit: the
guarantee is the exact path's, with one Redis call per many calls instead of two each.

Slices are taken only far from a limit: what is left must be at least ELIGIBLE_MULTIPLE
times the slice, a slice covers LEASE_CALLS calls of the size asking for it, and a call
that does not fit its process's slice goes through the exact per-call script. Near a
limit, slices stop being granted and the ones out come back at their holders' next flush
(a slice no longer eligible is given back whole), and the exact script, when it would
refuse a call while slices are out, makes the call wait for them (RECALL_WAIT_S at most;
slices of a process that died lapse after OWNER_TTL_S) so that no call is refused while
the budget could cover it.

What a lease costs: usage settled in a process reaches Redis within FLUSH_S (a process
that dies loses at most that much from the Redis counters; the ledger has every record,
and the counters are rebuilt from it whenever a budget is reloaded), and the rate-limit
headers of a leased call are computed from the window as its process last saw it.
"""

import asyncio
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from metering.redis_pipe import Script

FLUSH_S = 0.05  # how often a process with leases settles them in Redis
IDLE_S = 1.0  # a slice unused this long is given back
MAX_AGE_S = 10.0  # a slice is renewed (given back, taken again) at least this often
OWNER_TTL_S = 30  # Redis forgets the slices of a process silent this long
RECALL_WAIT_S = 0.5  # the most a near-limit call waits for other processes' slices
ELIGIBLE_MULTIPLE = 16  # a slice is granted only where what is left is 16 times larger

LEASE_LUA = """
-- One call's scopes, all or nothing.
-- KEYS: n budget hashes, m rate-window hashes
-- ARGV: now_ms, expires_at_ms, multiple, n, m, ttl, (limit, amount, slice) x n,
--       (rpm, tpm, requests, tokens) x m  (slice: the name a slice has in the budget)
-- Returns {1, gen x n, r x m, t x m} (granted; the window counts after the slice), or
-- {0, i} (scope i is too close to its limit, or recalling), or {-1, i} (budget i is
-- not loaded).
local now = tonumber(ARGV[1]); local expires = ARGV[2]
local k = tonumber(ARGV[3]); local n = tonumber(ARGV[4]); local m = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local gens = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'held', 'gen', 'recall')
  if not v[3] then return {-1, i} end
  if v[4] and tonumber(v[4]) > now then return {0, i} end
  gens[i] = tonumber(v[3])
  local left = tonumber(ARGV[4 + 3 * i]) - tonumber(v[1] or '0') - tonumber(v[2] or '0')
  if left < k * tonumber(ARGV[5 + 3 * i]) then return {0, i} end
end
local base = 6 + 3 * n
for j = 1, m do
  local rpm = tonumber(ARGV[base + 4 * j - 3]); local tpm = tonumber(ARGV[base + 4 * j - 2])
  local v = redis.call('HMGET', KEYS[n + j], 'r', 't')
  local r = tonumber(v[1] or '0'); local t = tonumber(v[2] or '0')
  if rpm > 0 and rpm - r < k * tonumber(ARGV[base + 4 * j - 1]) then return {0, n + j} end
  if tpm > 0 and tpm - t < k * tonumber(ARGV[base + 4 * j]) then return {0, n + j} end
end
local out = {1}
for i = 1, n do
  local amount = tonumber(ARGV[5 + 3 * i]); local slice = ARGV[6 + 3 * i]
  redis.call('HINCRBY', KEYS[i], 'held', amount)
  redis.call('HINCRBY', KEYS[i], 'leased', amount)
  redis.call('HINCRBY', KEYS[i], 'lo:' .. slice, amount)
  redis.call('HSET', KEYS[i], 'lt:' .. slice, expires)
  out[1 + i] = gens[i]
end
for j = 1, m do
  local requests = tonumber(ARGV[base + 4 * j - 1])
  local r = redis.call('HINCRBY', KEYS[n + j], 'r', requests)
  local t = redis.call('HINCRBY', KEYS[n + j], 't', ARGV[base + 4 * j])
  if r == requests then redis.call('EXPIRE', KEYS[n + j], ttl) end
  out[1 + n + j] = r; out[1 + n + m + j] = t
end
return out
"""

FLUSH_LUA = """
-- Settle slices. KEYS: n budget hashes, m rate-window hashes
-- ARGV: now_ms, expires_at_ms, n, m, (slice, gen, used, give_back) x n, (dr, dt) x m
-- A budget adds `used` to spent; if it is still the generation the slice came from, its
-- held (and the slice) shrink by used + give_back. A window's counts move by (dr, dt).
-- Returns {spent x n, held x n, recalling x n, owned x n} (spent -1: the budget left
-- Redis; owned 0: the slice is not in Redis any more, the budget was reloaded or the
-- slice lapsed).
local now = tonumber(ARGV[1]); local expires = ARGV[2]
local n = tonumber(ARGV[3]); local m = tonumber(ARGV[4])
local out = {}
for i = 1, n do
  local slice = ARGV[1 + 4 * i]; local gen = tonumber(ARGV[2 + 4 * i])
  local used = tonumber(ARGV[3 + 4 * i]); local back = tonumber(ARGV[4 + 4 * i])
  local v = redis.call('HMGET', KEYS[i], 'gen', 'lo:' .. slice)
  out[i] = -1; out[n + i] = 0; out[2 * n + i] = 0; out[3 * n + i] = 0
  if v[1] then
    if used ~= 0 then redis.call('HINCRBY', KEYS[i], 'spent', used) end
    if tonumber(v[1]) == gen and v[2] then
      out[3 * n + i] = 1
      local release = math.min(used + back, tonumber(v[2]))
      local left_in_slice = tonumber(v[2]) - release
      if release > 0 then  -- (never -0: Redis takes no "-0" for an integer)
        redis.call('HINCRBY', KEYS[i], 'held', -release)
        redis.call('HINCRBY', KEYS[i], 'leased', -release)
        redis.call('HINCRBY', KEYS[i], 'lo:' .. slice, -release)
      end
      if left_in_slice <= 0 then
        redis.call('HDEL', KEYS[i], 'lo:' .. slice, 'lt:' .. slice)
      else
        redis.call('HSET', KEYS[i], 'lt:' .. slice, expires)
      end
    end
    local w = redis.call('HMGET', KEYS[i], 'spent', 'held', 'recall')
    out[i] = tonumber(w[1] or '0'); out[n + i] = tonumber(w[2] or '0')
    if w[3] and tonumber(w[3]) > now then out[2 * n + i] = 1 end
  end
end
local base = 4 + 4 * n
for j = 1, m do
  local dr = tonumber(ARGV[base + 2 * j - 1]); local dt = tonumber(ARGV[base + 2 * j])
  if redis.call('EXISTS', KEYS[n + j]) == 1 then  -- a lapsed window stays gone
    if dr ~= 0 then redis.call('HINCRBY', KEYS[n + j], 'r', dr) end
    if dt ~= 0 then redis.call('HINCRBY', KEYS[n + j], 't', dt) end
  end
end
return out
"""

RECALL_LUA = """
-- A call near the limit of budget KEYS[1] waits for slices: lapse those of processes
-- silent past their time, ask the others back until ARGV[2] (ms), and return what is
-- still out. ARGV[1]: now in ms.
local fields = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 3) == 'lt:' and tonumber(fields[i + 1]) < now then
    local slice = string.sub(name, 4)
    local amount = tonumber(redis.call('HGET', KEYS[1], 'lo:' .. slice) or '0')
    if amount > 0 then
      redis.call('HINCRBY', KEYS[1], 'held', 0 - amount)
      redis.call('HINCRBY', KEYS[1], 'leased', 0 - amount)
    end
    redis.call('HDEL', KEYS[1], 'lo:' .. slice, name)
  end
end
local leased = tonumber(redis.call('HGET', KEYS[1], 'leased') or '0')
if leased > 0 then redis.call('HSET', KEYS[1], 'recall', ARGV[2]) end
return leased
"""

LEASE, FLUSH, RECALL = Script(LEASE_LUA), Script(FLUSH_LUA), Script(RECALL_LUA)


def owner_id() -> str:
    """This process, as its slices are named in Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def now_ms() -> int:
    return int(time.time() * 1000)


class SettledCall:
    """A leased call's settlement: resolves with each budget's spent after it, once the
    flush that carries it has run (-1 where the budget had left Redis)."""

    __slots__ = ("future", "afters", "missing")

    def __init__(self, future: "asyncio.Future[list[int]]", budgets: int) -> None:
        self.future = future
        self.afters = [-1] * budgets
        self.missing = budgets
        if budgets == 0:
            future.set_result([])

    def fill(self, index: int, after: int) -> None:
        self.afters[index] = after
        self.missing -= 1
        if self.missing == 0 and not self.future.done():
            self.future.set_result(self.afters)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(slots=True)
class BudgetSlice:
    key: str
    name: str  # its name in the budget's hash (lo:<name>, lt:<name>): process and slice
    gen: int
    limit: int
    granted: int  # what the slice holds in Redis
    busy: int = 0  # holds of this process's calls in flight on it
    used: int = 0  # what settled calls used, not yet sent to Redis
    give_back: bool = False  # return the free part at the next flush; take no new calls
    dropped: bool = False  # its budget left Redis: what its calls use is not carried
    last_use: float = field(default_factory=time.monotonic)
    born: float = field(default_factory=time.monotonic)
    # settled calls waiting for the spent their flush leaves: (call, index, actual)
    waiting: list[tuple[SettledCall, int, int]] = field(default_factory=list)

    @property
    def free(self) -> int:
        return self.granted - self.busy - self.used


@dataclass(slots=True)
class WindowSlice:
    key: str
    requests: int  # granted in Redis
    tokens: int  # granted in Redis (grows when calls overrun their estimate)
    r_seen: int  # the window's counts right after the slice was taken (for headers)
    t_seen: int
    used_r: int = 0
    used_t: int = 0
    give_back: bool = False
    last_use: float = field(default_factory=time.monotonic)
    born: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Lease:
    """The slices one call was admitted on (settlement gives them back)."""

    budgets: list[BudgetSlice]
    windows: list[WindowSlice]
    low: bool = False  # a slice has less than a quarter left: time to take more


@dataclass(slots=True)
class _Sent:
    """One flush in flight: what it carries, to apply or restore when it ends."""

    budgets: list[tuple[BudgetSlice, int, int, list[tuple[SettledCall, int, int]]]]
    windows: list[tuple[WindowSlice, int, int]]


class LeaseBook:
    """This process's slices, by Redis key. Pure bookkeeping: ControlStore talks to Redis."""

    def __init__(self, lease_calls: int, owner: str = "") -> None:
        self.lease_calls = lease_calls
        self.owner = owner or owner_id()
        self._serial = 0
        self.budgets: dict[str, BudgetSlice] = {}
        self.windows: dict[str, WindowSlice] = {}
        # slices replaced by a slice of a newer generation, flushed until their calls end
        self.retired: list[BudgetSlice] = []
        self.urgent = False  # a slice is to be given back at once
        # scopes refused a slice (near a limit) are not asked again before this time
        self.cooldown: dict[str, float] = {}

    def take(
        self, keys: list[str], costs: list[int], windows: list[str], est_tokens: int
    ) -> "Lease | None":
        """Admit a call on this process's slices, on all of them or none."""
        budgets = self.budgets
        slices = []
        for i, key in enumerate(keys):
            s = budgets.get(key)
            if s is None or s.give_back or s.granted - s.busy - s.used < costs[i]:
                return None
            slices.append(s)
        wins = []
        for key in windows:
            w = self.windows.get(key)
            if (
                w is None
                or w.give_back
                or w.used_r >= w.requests
                or w.used_t + est_tokens > w.tokens
            ):
                return None
            wins.append(w)
        now = time.monotonic()
        low = False
        for i, s in enumerate(slices):
            s.busy += costs[i]
            s.last_use = now
            low = low or (s.granted - s.busy - s.used) * 4 < s.granted
        for w in wins:
            w.used_r += 1
            w.used_t += est_tokens
            w.last_use = now
            low = low or (w.requests - w.used_r) * 4 < w.requests
        return Lease(slices, wins, low)

    def settle(
        self,
        lease: "Lease",
        holds: list[int],
        actuals: list[int],
        token_delta: int,
        call: SettledCall,
    ) -> None:
        """A leased call ended: its holds leave its slices, what it used waits for the
        next flush."""
        for index, (s, hold, actual) in enumerate(zip(lease.budgets, holds, actuals, strict=True)):
            s.busy -= hold
            if s.dropped:  # its budget was reloaded from the ledger, which has this call
                call.fill(index, -1)
                continue
            s.used += actual
            s.waiting.append((call, index, actual))
        for w in lease.windows:
            w.used_t += token_delta

    def due(self, now: float) -> None:
        """Mark idle and old slices for giving back; forget cooldowns that are over."""
        if self.cooldown:
            self.cooldown = {k: t for k, t in self.cooldown.items() if t > now}
        for s in self.budgets.values():
            if now - s.last_use > IDLE_S or now - s.born > MAX_AGE_S:
                s.give_back = True
        for w in self.windows.values():
            if now - w.last_use > IDLE_S or now - w.born > MAX_AGE_S:
                w.give_back = True

    def pending(self) -> bool:
        return bool(self.budgets or self.windows or self.retired)

    def send(self) -> tuple[list[str], list[int | str], _Sent] | None:
        """What the next flush carries (taken off the slices until `flushed`/`restore`)."""
        sent = _Sent([], [])
        # Every budget slice goes, even with nothing to carry: the flush keeps this
        # process's slices alive in Redis and hears whether a call waits for them.
        for s in [*self.budgets.values(), *self.retired]:
            back = max(s.free, 0) if s.give_back else 0
            sent.budgets.append((s, s.used, back, s.waiting))
            s.granted -= s.used + back
            s.used, s.waiting = 0, []
        for w in list(self.windows.values()):
            over = max(w.used_t - w.tokens, 0)
            if w.give_back:  # the unused part back (tokens past the slice are added)
                dr, dt = -(w.requests - w.used_r), w.used_t - w.tokens
            else:  # tokens past the slice: calls that used more than their estimate
                dr, dt = 0, over
            if dr or dt or w.give_back:
                sent.windows.append((w, dr, dt))
                w.tokens += over
        if not sent.budgets and not sent.windows:
            return None
        keys = [s.key for s, *_ in sent.budgets] + [w.key for w, *_ in sent.windows]
        args: list[int | str] = [len(sent.budgets), len(sent.windows)]
        for s, used, back, _ in sent.budgets:
            args += (s.name, s.gen, used, back)
        for _, dr, dt in sent.windows:
            args += (dr, dt)
        return keys, args, sent

    def restore(self, sent: _Sent, exc: BaseException) -> None:
        """The flush failed: what it carried goes back on the slices for the next one."""
        for s, used, back, waiting in sent.budgets:
            s.granted += used + back
            s.used += used
            s.waiting = waiting + s.waiting
        for w, _, dt in sent.windows:
            if dt > 0:
                w.tokens -= dt

    def flushed(self, sent: _Sent, reply: list[int], now: float) -> None:
        """Apply a flush's reply: settled calls learn the spent they leave; slices given
        back (or whose budget was reloaded) are dropped; a slice whose budget is no longer
        far from its limit, or is being recalled, is given back at the next flush."""
        n = len(sent.budgets)
        for i, (s, used, _, waiting) in enumerate(sent.budgets):
            spent_after, held_after = reply[i], reply[n + i]
            recalling, owned = reply[2 * n + i], reply[3 * n + i]
            running = spent_after - used
            for call, index, actual in waiting:
                running += actual
                call.fill(index, -1 if spent_after < 0 else running)
            if spent_after < 0:  # the budget left Redis: it is reloaded from the ledger
                s.dropped = True
                self._drop(s)
            elif not owned:  # reloaded, or lapsed: admit nothing more on it; what its
                # calls in flight use is still carried (added to spent, nothing released)
                s.give_back = True
                s.granted = s.busy
                if s.busy == 0 and s.used == 0:
                    self._drop(s)
            elif s.give_back and s.busy == 0 and s.used == 0:
                self._drop(s)
            elif not s.give_back and (
                recalling
                # half the margin it was granted with: no giving back right after taking
                or s.limit - spent_after - held_after < ELIGIBLE_MULTIPLE // 2 * s.granted
            ):
                s.give_back = True
                self.urgent = True  # a call may be waiting for it: flush again now
                self.cooldown[s.key] = now + IDLE_S
        for w, _, _ in sent.windows:
            if w.give_back and self.windows.get(w.key) is w:
                del self.windows[w.key]

    def _drop(self, s: BudgetSlice) -> None:
        if self.budgets.get(s.key) is s:
            del self.budgets[s.key]
        elif s in self.retired:
            self.retired.remove(s)

    def slice_name(self, key: str) -> str:
        """The name the next slice of budget `key` takes in Redis: the current slice's
        when more is added to it, else a new one (a slice whose reply was lost then
        lapses on its own, never mixed with a live one)."""
        current = self.budgets.get(key)
        if current is not None and not current.give_back:
            return current.name
        self._serial += 1
        return f"{self.owner}:{self._serial}"

    def granted(self, key: str, name: str, gen: int, limit: int, amount: int) -> None:
        """A slice taken in Redis: added to this process's slice of that name, or a new
        slice (the one it replaces is kept until its calls end)."""
        current = self.budgets.get(key)
        if current is not None and current.name == name and current.gen == gen:
            current.granted += amount
            current.born = time.monotonic()
            if current.give_back:  # taken back into use: what was added is not free yet
                current.give_back = False
            return
        if current is not None:
            current.give_back = True
            self.retired.append(current)
        self.budgets[key] = BudgetSlice(key, name, gen, limit, amount)

    def granted_window(self, key: str, requests: int, tokens: int, r: int, t: int) -> None:
        current = self.windows.get(key)
        if current is not None and not current.give_back:
            current.requests += requests
            current.tokens += tokens
            current.r_seen, current.t_seen = r, t
            return
        self.windows[key] = WindowSlice(key, requests, tokens, r, t)

    def cooling(self, keys: list[str], now: float) -> bool:
        return any(self.cooldown.get(key, 0.0) > now for key in keys)
