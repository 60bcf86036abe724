"""Spend-control counters that never stay wrong: the periodic rebuild from the ledger.

Redis's budget counters (metering.control.store) may count too much, never too little, when
something goes wrong: an exact hold that is never settled (its admission reply was lost
and its cancel never got through, its process crashed, its settlement was lost) is reaped
once it expires and counted as spent in full; a slice of a process that stopped reporting
lapses and what it held counts as spent in full (metering.control.leases). Either marks the
budget `stale`. This module gives that room back: `control_counters_rebuild` (Celery beat,
every minute) reaps and lapses on every budget in Redis, and replaces the `spent` of each
stale budget by the ledger's figure (read as metering.control.budgets.budget_loader
says), under three conditions:

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

Budget keys carry their tenant as a hash tag (`rk:{<tenant>}:spend:…`, for Redis
Cluster); each budget is loaded from the ledger under its new name on first use. Keys of
the names before that (`rk:spend:…`) are read by no process of this version, but during
a rolling deploy processes of the earlier one still hold calls and slices on them: the
rebuild deletes such a key only when it is idle (no hold, no slice, untouched for the
hold TTL: metering.control.scripts LEGACY_DROP_LUA), which is what its own expiry would
do. One kept busy by a hold never settled (its process died mid-call) stays until it
expires, or for good on an all-time budget: harmless, no process of this version reads
it. An LFU maxmemory-policy keeps no idle time: then none is deleted (logged). The
earlier version ran on a single Redis only, so a cluster has none to look for. On a
cluster the scan visits every primary.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from metering.control.budgets import Loader, budget_loader
from metering.control.scripts import LEGACY_DROP_LUA, REAP_LUA, REBUILD_LUA
from metering.control.store import HOLD_TTL_S, holds_key

logger = logging.getLogger(__name__)


BUDGET_PATTERNS = ("rk:{*}:spend:*", "rk:{*}:balance:*", "rk:{*}:reasoning:*")
# Budget names before the tenant hash tag: used only by processes of the earlier version
# (a rolling deploy), deleted once idle.
LEGACY_PATTERNS = ("rk:spend:*", "rk:balance:*", "rk:reasoning:*")
SPOOL_PATTERN = "rk:spool:*"  # a ledger writer with records not yet in the database
ATTEMPTS = 3  # compare-and-set tries per budget per run


@dataclass
class RebuildResult:
    budgets: int = 0  # budget keys seen
    stale: int = 0  # marked for a rebuild (reaped holds or lapsed slices)
    rebuilt: int = 0  # spent replaced by the ledger's figure
    busy: int = 0  # stale, but a hold or slice was out, or within the grace: next run
    legacy: int = 0  # keys of the names before the hash tag, deleted (idle)
    legacy_kept: int = 0  # such keys kept: in use by the earlier version, or not idle yet
    skipped: str = ""  # why nothing was rebuilt (ledger spool pending)


def control_counters_rebuild(
    *,
    client: "redis.Redis | redis.RedisCluster",
    loader_for: Callable[[str], Loader | None] = budget_loader,
    grace_s: float = HOLD_TTL_S,  # float-ok: seconds
    patterns: Sequence[str] = BUDGET_PATTERNS,
    legacy_patterns: Sequence[str] = LEGACY_PATTERNS,
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
    if not isinstance(client, redis.RedisCluster):
        _legacy_drop(client, legacy_patterns, idle_s=max(int(grace_s), 0), result=result)
    return result


def _legacy_drop(
    client: redis.Redis, patterns: Sequence[str], *, idle_s: int, result: RebuildResult
) -> None:
    """Delete the idle budgets of the names before the tenant hash tag (module
    docstring): each checked and deleted in one script, so no call of the earlier
    version can slip in between."""
    drop = client.register_script(LEGACY_DROP_LUA)
    untracked = 0
    for pattern in patterns:
        for raw in client.scan_iter(pattern, count=1000):
            key = raw.decode()
            budget_key = key.removesuffix(":holds")
            if budget_key != key and client.exists(budget_key):
                continue  # a register goes with its budget
            outcome = drop(keys=[budget_key, holds_key(budget_key)], args=[idle_s])
            if outcome == 1:
                result.legacy += 1
            else:
                result.legacy_kept += 1
                untracked += outcome == -1
    if result.legacy:
        logger.info("control counters: %d idle budget keys of the old names deleted", result.legacy)
    if untracked:
        logger.warning(
            "control counters: %d budget keys of the old names kept: Redis keeps no idle "
            "time under an LFU maxmemory-policy (delete rk:spend:*, rk:balance:*, "
            "rk:reasoning:* once no process of the earlier version runs)",
            untracked,
        )


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
