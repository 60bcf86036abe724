"""The circuit breaker of an alias's targets, shared by every server process in Redis.

Every key of one alias carries the hash tag `{route:<alias pk>}` (the pk: the name is free
text), so each script names keys of one Redis Cluster slot:
- `rk:{route:<alias pk>}:breaker`, a hash with per target (`<route id>:<field>`): `ws`
  window start, `f` failures and `s` successes in the window, `open` the time it is open
  until (ms since the epoch; 0 or absent: closed), `cd` its last cooldown (ms).
- `rk:{route:<alias pk>}:probe:<route id>`: the one half-open probe, holding the id of the
  process that won it (SET NX PX).

States: closed (`open` 0); open (`open` in the future); half-open (`open` past, not yet
closed): one process wins the probe; its success closes the target (and resets the
cooldown), its failure re-opens it with the cooldown doubled, up to the maximum.

Times are wall-clock milliseconds passed in by the caller (processes on several hosts
compare them; tests pass their own clock).
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from metering.control.redis_pipe import ClusterPipe, RedisPipe, Script

PROBE_TTL_MS = 60_000  # a probe whose process died is retried by another after this
PROCS_KEY = "rk:{route:procs}:live"  # heartbeat ZSET: the live server processes
PROC_TTL_MS = 5_000  # a process not heard from this long is gone


def route_tag(alias_pk: int) -> str:
    return f"{{route:{alias_pk}}}"


def breaker_key(alias_pk: int) -> str:
    return f"rk:{route_tag(alias_pk)}:breaker"


def probe_key(alias_pk: int, route_id: int) -> str:
    return f"rk:{route_tag(alias_pk)}:probe:{route_id}"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5  # at least this many failures in the window ...
    ratio_ppm: int = 500_000  # ... that are at least this share (ppm) of what was reported
    window_ms: int = 10_000
    cooldown_ms: int = 30_000  # first opening; doubles per re-open
    max_cooldown_ms: int = 300_000

    @classmethod
    def from_settings(cls) -> "BreakerConfig":
        from django.conf import settings

        return cls(
            failures=settings.RECKON_ROUTE_BREAKER_FAILURES,
            ratio_ppm=int(settings.RECKON_ROUTE_BREAKER_RATIO * 1_000_000),
            window_ms=settings.RECKON_ROUTE_BREAKER_WINDOW_S * 1000,
            cooldown_ms=settings.RECKON_ROUTE_BREAKER_COOLDOWN_S * 1000,
            max_cooldown_ms=settings.RECKON_ROUTE_BREAKER_MAX_COOLDOWN_S * 1000,
        )

    def args(self) -> list[int]:
        return [
            self.failures,
            self.ratio_ppm,
            self.window_ms,
            self.cooldown_ms,
            self.max_cooldown_ms,
        ]


REPORT_LUA = """
-- One target's outcomes since the last report.
-- KEYS: the alias's breaker hash, the target's probe key
-- ARGV: route id, failures, successes, now_ms, retry_after_ms (capped at the max cooldown),
--       probe (1: the outcome of this process's half-open probe), min failures, ratio ppm,
--       window ms, cooldown ms, max cooldown ms
-- Returns the time the target is open until (ms; 0: closed).
local h, rid = KEYS[1], ARGV[1]
local f, s, now, ra = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local minf, ratio, window = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local base, cap = tonumber(ARGV[10]), tonumber(ARGV[11])
ra = math.min(math.max(ra, 0), cap)  -- an upstream's retry-after: at most the longest cooldown
local k_open, k_cd, k_ws, k_f, k_s = rid .. ':open', rid .. ':cd', rid .. ':ws', rid .. ':f', rid .. ':s'
local open = tonumber(redis.call('HGET', h, k_open) or '0')
local cd = tonumber(redis.call('HGET', h, k_cd) or '0')
local function keep(until_ms)
  -- the hash outlives every opening by a while, then goes with the alias's idleness
  redis.call('PEXPIRE', h, math.max(until_ms - now, 0) + 2 * cap + window)
  return until_ms
end
if ARGV[6] == '1' and open > 0 then
  redis.call('DEL', KEYS[2])
  if f == 0 then
    redis.call('HSET', h, k_open, 0, k_cd, 0, k_ws, now, k_f, 0, k_s, 0)
    return keep(0)
  end
  cd = math.min(math.max(cd, base) * 2, cap)
  open = now + math.max(cd, ra)
  redis.call('HSET', h, k_open, open, k_cd, cd)
  return keep(open)
end
if open > 0 then
  -- open or half-open: only a probe changes that; a retry-after can only push it later
  if f > 0 and ra > 0 and now + ra > open then
    open = now + ra
    redis.call('HSET', h, k_open, open)
  end
  return keep(open)
end
local ws = tonumber(redis.call('HGET', h, k_ws) or '0')
local nf, ns = f, s
if now >= ws and now - ws < window then
  nf = nf + tonumber(redis.call('HGET', h, k_f) or '0')
  ns = ns + tonumber(redis.call('HGET', h, k_s) or '0')
else
  ws = now
end
if f > 0 and nf >= minf and nf * 1000000 >= ratio * (nf + ns) then
  if cd <= 0 then cd = base else cd = math.min(cd * 2, cap) end
  open = now + math.max(cd, ra)
  redis.call('HSET', h, k_open, open, k_cd, cd, k_ws, now, k_f, 0, k_s, 0)
  return keep(open)
end
redis.call('HSET', h, k_ws, ws, k_f, nf, k_s, ns)
return keep(0)
"""

PROBE_LUA = """
-- May this process send the half-open probe of a target?
-- KEYS: the alias's breaker hash, the target's probe key
-- ARGV: route id, now_ms, ttl_ms, this process's id
-- Returns 2: yes, this process probes; 1: closed meanwhile (no probe needed); 0: no.
local open = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':open') or '0')
if open == 0 then return 1 end
if open > tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then return 2 end
return 0
"""

RELEASE_LUA = """
-- Let go of a probe this process won and no call used.
-- KEYS: the target's probe key; ARGV: this process's id. Returns 1 if it was still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

READ_LUA = """
-- KEYS: one alias's breaker hash. A script, so the cluster client routes it by its key.
return redis.call('HGETALL', KEYS[1])
"""

HEARTBEAT_LUA = """
-- KEYS: the live-process ZSET; ARGV: this process's id, now_ms, ttl_ms (0: leaving)
-- Returns how many processes are live.
local key, now, ttl = KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if ttl <= 0 then
  redis.call('ZREM', key, ARGV[1])
else
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, ttl * 4)
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - math.max(ttl, 1))
return redis.call('ZCARD', key)
"""

REPORT = Script(REPORT_LUA)
PROBE = Script(PROBE_LUA)
RELEASE = Script(RELEASE_LUA)
READ = Script(READ_LUA)
HEARTBEAT = Script(HEARTBEAT_LUA)

Client = RedisPipe | ClusterPipe


@dataclass(frozen=True, slots=True)
class TargetBreaker:
    open_until_ms: int  # 0: closed
    cooldown_ms: int

    def state(self, now_ms: int) -> str:
        if self.open_until_ms <= 0:
            return "closed"
        return "open" if self.open_until_ms > now_ms else "half-open"


def parse_hash(flat: Any) -> dict[int, TargetBreaker]:
    """HGETALL's reply (flat list or dict, bytes or str) as each target's open and cooldown."""
    items = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    fields: dict[int, dict[str, int]] = {}
    for name, value in items:
        name = name.decode() if isinstance(name, bytes) else name
        rid, _, field = name.partition(":")
        if rid.isdigit():
            fields.setdefault(int(rid), {})[field] = int(value)
    return {rid: TargetBreaker(f.get("open", 0), f.get("cd", 0)) for rid, f in fields.items()}


async def breaker_report(
    client: Client,
    alias_pk: int,
    route_id: int,
    *,
    failures: int,
    successes: int,
    now_ms: int,
    retry_after_ms: int = 0,
    probe: bool = False,
    config: BreakerConfig,
) -> int:
    """Report one target's failures and successes; the time it is open until (0 closed)."""
    keys = [breaker_key(alias_pk), probe_key(alias_pk, route_id)]
    args = [
        route_id,
        failures,
        successes,
        now_ms,
        retry_after_ms,
        1 if probe else 0,
        *config.args(),
    ]
    return int(await client.run(REPORT, keys, args))


async def breaker_probe(
    client: Client, alias_pk: int, route_id: int, *, now_ms: int, owner: str
) -> int:
    """2: process `owner` sends the half-open probe; 1: the target is closed; 0: not now."""
    keys = [breaker_key(alias_pk), probe_key(alias_pk, route_id)]
    args: list[int | str] = [route_id, now_ms, PROBE_TTL_MS, owner]
    return int(await client.run(PROBE, keys, args))


async def breaker_probe_release(client: Client, alias_pk: int, route_id: int, *, owner: str) -> int:
    """Let go of the probe `owner` won and did not use (1: it held it), so that any
    process may win it at once rather than when its key lapses."""
    args: list[int | str] = [owner]
    return int(await client.run(RELEASE, [probe_key(alias_pk, route_id)], args))


async def breaker_read(client: Client, alias_pk: int) -> dict[int, TargetBreaker]:
    return parse_hash(await client.run(READ, [breaker_key(alias_pk)], []))


async def heartbeat(
    client: Client, process_id: str, *, now_ms: int, ttl_ms: int = PROC_TTL_MS
) -> int:
    """Say this process is live (ttl_ms 0: leaving); how many processes are."""
    args: list[int | str] = [process_id, now_ms, ttl_ms]
    return int(await client.run(HEARTBEAT, [PROCS_KEY], args))


UNKNOWN = "unknown"  # the admin's and the API's word for a breaker Redis cannot tell


@dataclass(frozen=True, slots=True)
class BreakerStates:
    """An alias's breakers as the admin and the API show them."""

    known: dict[int, str]  # route id -> "open until HH:MM:SS" (UTC), "half-open" or "closed"
    reachable: bool  # False: no Redis or out of reach, so no state is known

    def state(self, route_id: int) -> str:
        """A target's state: one Redis knows nothing of is closed; without Redis, "unknown"
        (each process then keeps its own local breakers: none speaks for the others)."""
        if not self.reachable:
            return UNKNOWN
        return self.known.get(route_id, "closed")


def breaker_states(alias_pk: int, *, now_ms: int | None = None) -> BreakerStates:
    """Each target's breaker as Redis holds it (one HGETALL, 1 s timeouts)."""
    from django.conf import settings

    from config.redis_clients import redis_client

    if not settings.REDIS_URL:
        return BreakerStates({}, reachable=False)
    import redis

    client = redis_client(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        flat = client.hgetall(breaker_key(alias_pk))
    except redis.RedisError:
        return BreakerStates({}, reachable=False)
    finally:
        client.close()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    states: dict[int, str] = {}
    for rid, breaker in parse_hash(flat).items():
        state = breaker.state(now)
        if state == "open":
            until = datetime.fromtimestamp(breaker.open_until_ms // 1000, tz=UTC)
            state = f"open until {until:%H:%M:%S}"
        states[rid] = state
    return BreakerStates(states, reachable=True)
