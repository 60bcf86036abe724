"""Spend control and rate limits on the hot path, shared by every server process.

State lives in Redis; every decision is one Lua script, so it is atomic across processes:
- Admission places a hold for the call's worst plausible spend on every spend scope that
  applies (tenant and key, month and total) and counts the call against the rate windows,
  or refuses, in one step. Concurrent calls can never together pass a limit
  (no check-then-increment race), and a call is refused only when the remaining budget
  does not cover its own hold.
- Settlement releases the hold and adds the actual spend (and corrects the token count).

Amounts are integers of nano-USD (1e-9 USD), rounded up from the exact Decimal spend so a
counter never under-counts. The durable truth is the ledger (`UsageRecord.spend_usd`,
committed before settlement): a scope missing from Redis (first use, expiry, Redis
restart) is loaded from it before anything is admitted against it.

When Redis cannot be reached the proxy refuses calls that have controls
(RECKON_CONTROL_FAIL_OPEN=false, the default) or lets them through unchecked (true).
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

NANO = Decimal(1_000_000_000)

ADMIT_LUA = """
local n = tonumber(ARGV[1]); local m = tonumber(ARGV[2])
local hold = tonumber(ARGV[3]); local tokens = tonumber(ARGV[4]); local ttl = tonumber(ARGV[5])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {-1, i, 0} end
end
for j = 1, m do
  local rpm = tonumber(ARGV[5 + n + j]); local tpm = tonumber(ARGV[5 + n + m + j])
  local used_r = tonumber(redis.call('GET', KEYS[n + j]) or '0')
  local used_t = tonumber(redis.call('GET', KEYS[n + m + j]) or '0')
  if rpm > 0 and used_r + 1 > rpm then return {-2, j, 0} end
  if tpm > 0 and used_t + tokens > tpm then return {-3, j, 0} end
end
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'held')
  local left = tonumber(ARGV[5 + i]) - tonumber(v[1] or '0') - tonumber(v[2] or '0')
  if hold > left then return {-4, i, left} end
end
for i = 1, n do redis.call('HINCRBY', KEYS[i], 'held', hold) end
local out = {1, 0, 0}
for j = 1, m do
  local r = redis.call('INCR', KEYS[n + j]); redis.call('EXPIRE', KEYS[n + j], ttl)
  local t = redis.call('INCRBY', KEYS[n + m + j], tokens); redis.call('EXPIRE', KEYS[n + m + j], ttl)
  if j == 1 then out[2] = r; out[3] = t end
end
return out
"""

SETTLE_LUA = """
local n = tonumber(ARGV[1]); local m = tonumber(ARGV[2])
local hold = tonumber(ARGV[3]); local actual = tonumber(ARGV[4]); local delta = tonumber(ARGV[5])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('HINCRBY', KEYS[i], 'held', -hold) < 0 then redis.call('HSET', KEYS[i], 'held', 0) end
    redis.call('HINCRBY', KEYS[i], 'spent', actual)
  end
end
for j = 1, m do
  if redis.call('EXISTS', KEYS[n + j]) == 1 then redis.call('INCRBY', KEYS[n + j], delta) end
end
return 1
"""

LOAD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'held', 0)
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return 1
"""


def to_nano(amount: Decimal) -> int:
    """USD to nano-USD, rounded up (a counter must never under-count)."""
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class SpendScope:
    key: str  # Redis hash for this scope and window
    limit_nano: int
    ttl_s: int  # 0: no expiry (all-time scopes)
    # Loads the scope's durable spend (USD) from the ledger when Redis lacks it.
    load_spent: Callable[[], Decimal] = field(compare=False)


@dataclass(frozen=True)
class RateScope:
    name: str  # "key" or "tenant"
    scope_id: str
    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass
class Admission:
    allowed: bool
    reason: str = ""  # "spend" | "requests" | "tokens" | "unavailable"
    remaining_usd: Decimal | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    retry_after_s: int = 0


class ControlUnavailable(Exception):
    pass


class ControlStore:
    """Async Redis front: admission, settlement and lazy loading of spend scopes."""

    def __init__(self, url: str, *, window_s: int = 60) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._admit = self._redis.register_script(ADMIT_LUA)
        self._settle = self._redis.register_script(SETTLE_LUA)
        self._load = self._redis.register_script(LOAD_LUA)
        self.window_s = window_s

    def _rate_keys(
        self, rates: list[RateScope], now: float
    ) -> tuple[list[str], list[str], int]:  # float-ok: wall clock
        window = int(now // self.window_s)
        reset = int(self.window_s - (now % self.window_s)) + 1
        req = [f"rk:rl:req:{r.name}:{r.scope_id}:{window}" for r in rates]
        tok = [f"rk:rl:tok:{r.name}:{r.scope_id}:{window}" for r in rates]
        return req, tok, reset

    async def admit(
        self,
        *,
        spend: list[SpendScope],
        rates: list[RateScope],
        hold_nano: int,
        est_tokens: int,
        load_in_thread: Callable[[Callable[[], Decimal]], Any],
    ) -> Admission:
        now = time.time()
        req_keys, tok_keys, reset = self._rate_keys(rates, now)
        keys = [s.key for s in spend] + req_keys + tok_keys
        args: list[Any] = [len(spend), len(rates), hold_nano, est_tokens, self.window_s * 2]
        args += [s.limit_nano for s in spend]
        args += [r.requests_per_minute or 0 for r in rates]
        args += [r.tokens_per_minute or 0 for r in rates]
        from redis.exceptions import RedisError

        try:
            for _ in range(3):
                code, index, value = await self._admit(keys=keys, args=args)
                if code != -1:
                    break
                scope = spend[index - 1]  # not in Redis yet: load it from the ledger, retry
                spent = await load_in_thread(scope.load_spent)
                await self._load(keys=[scope.key], args=[to_nano(spent), scope.ttl_s])
        except RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc
        # on success the script returns {1, requests used, tokens used} for the first scope
        headers = self._headers(
            rates, code, index if code == 1 else 0, value if code == 1 else 0, reset
        )
        if code == 1:
            return Admission(True, headers=headers)
        if code == -4:
            return Admission(
                False, "spend", remaining_usd=Decimal(int(value)) / NANO, headers=headers
            )
        reason = "requests" if code == -2 else "tokens"
        return Admission(False, reason, headers=headers, retry_after_s=reset)

    def _headers(
        self, rates: list[RateScope], code: int, used_requests: int, used_tokens: int, reset: int
    ) -> list[tuple[bytes, bytes]]:
        if not rates:
            return []
        scope = rates[0]
        out: list[tuple[bytes, bytes]] = []
        if scope.requests_per_minute:
            remaining = max(0, scope.requests_per_minute - used_requests) if code == 1 else 0
            out += [
                (b"x-ratelimit-limit-requests", str(scope.requests_per_minute).encode()),
                (b"x-ratelimit-remaining-requests", str(remaining).encode()),
                (b"x-ratelimit-reset-requests", f"{reset}s".encode()),
            ]
        if scope.tokens_per_minute:
            remaining_tokens = max(0, scope.tokens_per_minute - used_tokens) if code == 1 else 0
            out += [
                (b"x-ratelimit-limit-tokens", str(scope.tokens_per_minute).encode()),
                (b"x-ratelimit-remaining-tokens", str(remaining_tokens).encode()),
                (b"x-ratelimit-reset-tokens", f"{reset}s".encode()),
            ]
        if code in (-2, -3):
            out.append((b"retry-after", str(reset).encode()))
        return out

    async def settle(
        self,
        *,
        spend: list[SpendScope],
        rates: list[RateScope],
        hold_nano: int,
        actual_nano: int,
        token_delta: int,
    ) -> None:
        _, tok_keys, _ = self._rate_keys(rates, time.time())
        from redis.exceptions import RedisError

        try:
            await self._settle(
                keys=[s.key for s in spend] + tok_keys,
                args=[len(spend), len(rates), hold_nano, actual_nano, token_delta],
            )
        except RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    async def close(self) -> None:
        await self._redis.aclose()


def ceil_tokens(byte_length: int) -> int:
    """A generous input-token estimate from a request's size (about 3 bytes per token)."""
    return math.ceil(byte_length / 3)
