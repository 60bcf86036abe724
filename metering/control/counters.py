"""Spend-control counters that never stay wrong: the periodic rebuild from the ledger.

Redis's budget counters (metering.control.store) may count too much, never too little, when
something goes wrong: an exact hold that is never settled (its admission reply was lost
and its cancel never got through, its process crashed, its settlement was lost) is reaped
once it expires and counted as spent in full; a slice of a process that stopped reporting
lapses and what it held counts as spent in full (metering.control.leases). Either marks the
budget `stale`. This module gives that room back: `control_counters_rebuild` (Celery beat,
every minute) reaps and lapses on every budget in Redis, and replaces the `spent` of each
stale budget by the ledger's figure, under three conditions:

- Nothing is out: no live hold and no slice (`held` and `leased` are 0). Every call
  admitted on the budget has then settled, and a call settles only after its usage
  record committed, so the ledger read next has all of them.
- The grace after a lapse is over (`safe_at`): a lapsed slice's process may still have
  calls in flight that Redis no longer holds, for at most the hold expiry.
- Compare-and-set: the ledger is read after the budget was seen (generation and spent),
  and the new figure is written by a script only if the budget still has that generation
  and spent and still nothing out. A settlement that landed in between (its record may or
  may not be in the figure read) changed spent: the write is refused and retried. A
  settlement after the write adds its use on top: if its record was already in the
  figure, it counts twice (too much, never too little) until the next rebuild.

Records durable only in a server's local spool (the database was down) are not in the
ledger yet: while any writer reports spool (`rk:spool:*` in Redis) nothing is rebuilt.
A budget that never has a quiet moment (a hold or a slice always out) keeps its
over-count until it has one, or until its key expires and is loaded again.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from metering.control.budgets import Loader, budget_loader
from metering.control.leases import LAPSE_SLICES_LUA, NOW_LUA
from metering.control.store import HOLD_TTL_S, holds_key

logger = logging.getLogger(__name__)

REAP_LUA = (
    NOW_LUA
    + """
-- The periodic rebuild's first step on budget KEYS[1] (hold register KEYS[2]): holds past
-- their expiry are reaped and counted as spent in full (their call may have spent upstream
-- and never settled: the ledger knows), slices not reported in time lapse (leases), and
-- either marks the budget for a rebuild. ARGV[1]: the grace (ms) after a lapse.
-- Returns {gen, spent, held, leased, stale, safe_at, now} ({-1}: not loaded; a register
-- left behind by a budget that expired goes: LOAD would delete it anyway).
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  redis.call('DEL', KEYS[2])
  return {-1}
end
local grace = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  local total = 0
  for _, member in ipairs(expired) do
    total = total + tonumber(string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if total > 0 then
    if redis.call('HINCRBY', KEYS[1], 'held', 0 - total) < 0 then
      redis.call('HSET', KEYS[1], 'held', 0)
    end
    redis.call('HINCRBY', KEYS[1], 'spent', total)
  end
  redis.call('HSET', KEYS[1], 'stale', 1)
end
"""
    + LAPSE_SLICES_LUA
    + """
local v = redis.call('HMGET', KEYS[1], 'gen', 'spent', 'held', 'leased', 'stale', 'safe_at')
return {tonumber(v[1]), tonumber(v[2] or '0'), tonumber(v[3] or '0'), tonumber(v[4] or '0'),
        tonumber(v[5] or '0'), tonumber(v[6] or '0'), now}
"""
)

REBUILD_LUA = """
-- Replace a budget's spent by the ledger's figure, read after REAP_LUA saw the budget with
-- nothing out: only if nothing touched it since (same generation and spent, still no hold
-- and no slice). A call settled meanwhile changed spent: the rebuild is retried.
-- KEYS[1]: the budget; ARGV: gen, spent as seen, spent from the ledger. Returns 1 or 0.
local v = redis.call('HMGET', KEYS[1], 'gen', 'spent', 'held', 'leased')
if not v[1] or tonumber(v[1]) ~= tonumber(ARGV[1]) or tonumber(v[2] or '0') ~= tonumber(ARGV[2])
    or tonumber(v[3] or '0') ~= 0 or tonumber(v[4] or '0') ~= 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'spent', ARGV[3])
redis.call('HDEL', KEYS[1], 'stale', 'safe_at')
return 1
"""

BUDGET_PATTERNS = ("rk:spend:*", "rk:balance:*", "rk:reasoning:*")
SPOOL_PATTERN = "rk:spool:*"  # a ledger writer with records not yet in the database
ATTEMPTS = 3  # compare-and-set tries per budget per run


@dataclass
class RebuildResult:
    budgets: int = 0  # budget keys seen
    stale: int = 0  # marked for a rebuild (reaped holds or lapsed slices)
    rebuilt: int = 0  # spent replaced by the ledger's figure
    busy: int = 0  # stale, but a hold or slice was out, or within the grace: next run
    skipped: str = ""  # why nothing was rebuilt (ledger spool pending)


def control_counters_rebuild(
    *,
    client: redis.Redis,
    loader_for: Callable[[str], Loader | None] = budget_loader,
    grace_s: float = HOLD_TTL_S,  # float-ok: seconds
    patterns: Sequence[str] = BUDGET_PATTERNS,
) -> RebuildResult:
    """Reap expired holds and lapsed slices on every budget in Redis and rebuild the
    stale ones from the ledger (see the module docstring). Safe to run at any time, any
    number of times, beside live traffic."""
    result = RebuildResult()
    if next(iter(client.scan_iter(SPOOL_PATTERN, count=1000)), None) is not None:
        result.skipped = "a ledger writer has records spooled, not yet in the database"
        logger.warning("control counters not rebuilt: %s", result.skipped)
        return result
    reap = client.register_script(REAP_LUA)
    rebuild = client.register_script(REBUILD_LUA)
    grace_ms = int(grace_s * 1000)
    for pattern in patterns:
        for raw in client.scan_iter(pattern, count=1000):
            key = raw.decode()
            if key.endswith(":holds"):  # reaped with its budget, or dropped if that is gone
                budget_key = key.removesuffix(":holds")
                if not client.exists(budget_key):
                    reap(keys=[budget_key, key], args=[grace_ms])
                continue
            result.budgets += 1
            _rebuild_one(reap, rebuild, key, loader_for, grace_ms, result)
    return result


def _rebuild_one(
    reap: "redis.commands.core.Script",
    rebuild: "redis.commands.core.Script",
    key: str,
    loader_for: Callable[[str], Loader | None],
    grace_ms: int,
    result: RebuildResult,
) -> None:
    loader: Loader | None = None
    for _ in range(ATTEMPTS):
        seen = reap(keys=[key, holds_key(key)], args=[grace_ms])
        if seen[0] == -1:
            return  # left Redis meanwhile: it is loaded from the ledger on next use
        gen, spent, held, leased, stale, safe_at, now = seen
        if not stale:
            return
        if held or leased or safe_at > now:
            result.stale += 1
            result.busy += 1
            return
        if loader is None:
            loader = loader_for(key)
            if loader is None:
                logger.info("no ledger figure for budget %s: left as counted", key)
                result.stale += 1
                return
        used = loader()  # read after the budget was seen quiet: the CAS checks it still is
        if rebuild(keys=[key], args=[gen, spent, used]) == 1:
            result.stale += 1
            result.rebuilt += 1
            if used != spent:
                logger.info("budget %s rebuilt from the ledger: %d -> %d", key, spent, used)
            return
    result.stale += 1
    result.busy += 1
