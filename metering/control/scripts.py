"""The control store's Lua scripts: every decision on Redis's counters is one script, so
it is atomic across server processes (what each one does, and why, is in its comments).

- The exact path, one call at a time (metering.control.store): ADMIT holds a call
  against its budgets and counts it in its rate windows, or refuses; SETTLE releases the
  hold and adds what the call used; LOAD puts a budget missing from Redis back from the
  ledger; CANCEL releases the holds of an admission whose reply was lost.
- Leases, many calls per script (metering.control.leases): LEASE reserves slices of
  budgets and windows for one process; FLUSH reports them; RECALL asks them back near a
  limit and lapses those of processes gone silent.
- The periodic rebuild (metering.control.counters): REAP_LUA reaps expired holds and
  lapsed slices; REBUILD_LUA replaces a quiet budget's spent by the ledger's figure;
  LEGACY_DROP_LUA deletes an idle budget of the names before the tenant hash tag.

Every script names every key it touches in KEYS, and the keys of one invocation share a
hash tag (the tenant: metering.control.scopes.tenant_tag), so each runs on Redis Cluster
(LEGACY_DROP_LUA excepted: keys of the earlier names exist only on a single Redis).

Budget hashes hold `spent`, `held`, `gen` (the generation: new whenever the budget is
loaded), `leased` and each slice's fields; a budget's exact holds are registered in a
sorted set beside it (metering.control.store.holds_key). Amounts are integers; Lua
numbers are doubles, exact up to 2^53.
"""

from metering.control.redis_pipe import Script

NOW_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

LEASE_LUA = (
    NOW_LUA
    + """
-- New slices for one call's scopes, all or nothing.
-- KEYS: n budget hashes, m rate-window hashes
-- ARGV: multiple, n, m, window_ttl, owner_ttl_ms, (limit, amount, slice) x n,
--       (rpm, tpm, requests, tokens, slice) x m
-- A scope asked for 0 keeps the slice it has (a budget must still be loaded).
-- Returns {1, gen x n, r x m, t x m} (granted; the window counts after the slice), or
-- {0, i} (scope i is too close to its limit, or recalling), or {-1, i} (budget i is
-- not loaded).
local k = tonumber(ARGV[1]); local n = tonumber(ARGV[2]); local m = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4]); local expires = now + tonumber(ARGV[5])
local gens = {}
for i = 1, n do
  local amount = tonumber(ARGV[4 + 3 * i])
  local v = redis.call('HMGET', KEYS[i], 'spent', 'held', 'gen', 'recall')
  if not v[3] then return {-1, i} end
  gens[i] = tonumber(v[3])
  if amount > 0 then
    if v[4] and tonumber(v[4]) > now then return {0, i} end
    local left = tonumber(ARGV[3 + 3 * i]) - tonumber(v[1] or '0') - tonumber(v[2] or '0')
    if left < k * amount then return {0, i} end
  end
end
local base = 5 + 3 * n
for j = 1, m do
  local o = base + 5 * (j - 1)
  local rpm = tonumber(ARGV[o + 1]); local tpm = tonumber(ARGV[o + 2])
  local req = tonumber(ARGV[o + 3]); local tok = tonumber(ARGV[o + 4])
  if req > 0 then
    local v = redis.call('HMGET', KEYS[n + j], 'r', 't')
    if rpm > 0 and rpm - tonumber(v[1] or '0') < k * req then return {0, n + j} end
    if tpm > 0 and tpm - tonumber(v[2] or '0') < k * tok then return {0, n + j} end
  end
end
local out = {1}
for i = 1, n do
  local amount = tonumber(ARGV[4 + 3 * i]); local slice = ARGV[5 + 3 * i]
  if amount > 0 then
    redis.call('HINCRBY', KEYS[i], 'held', amount)
    redis.call('HINCRBY', KEYS[i], 'leased', amount)
    redis.call('HSET', KEYS[i], 'lo:' .. slice, amount, 'lt:' .. slice, expires)
  end
  out[1 + i] = gens[i]
end
for j = 1, m do
  local o = base + 5 * (j - 1)
  local req = tonumber(ARGV[o + 3]); local tok = tonumber(ARGV[o + 4]); local slice = ARGV[o + 5]
  local r, t = 0, 0
  if req > 0 then
    r = redis.call('HINCRBY', KEYS[n + j], 'r', req)
    t = redis.call('HINCRBY', KEYS[n + j], 't', tok)
    redis.call('HSET', KEYS[n + j], 'ws:' .. slice, 0, 'wr:' .. slice, req, 'wt:' .. slice, tok)
    if r == req then redis.call('EXPIRE', KEYS[n + j], ttl) end
  end
  out[1 + n + j] = r; out[1 + n + m + j] = t
end
return out
"""
)

FLUSH_LUA = (
    NOW_LUA
    + """
-- Report slices. KEYS: n budget hashes, m rate-window hashes
-- ARGV: owner_ttl_ms, n, m, (slice, mode, used, out) x n, (slice, seq, r, t) x m
-- Budget slices, in absolute figures (metering.control.leases), by mode:
--   0 report: spent grows by used - lu (what Redis has not seen), the slice's hold
--     shrinks to out (never grows); at out 0 the slice is done and only its lu stays
--     behind (a tombstone: a late copy of a report then changes nothing);
--   1 orphan charge: `used` is what the orphan used since Redis lost it; spent grows by
--     used - lc;
--   2 forget: a finished slice's tombstone and charge go.
-- A window slice's counts become (r, t) if seq is newer than the last applied.
-- Returns {spent x n, held x n, recalling x n, owned x n, r x m, t x m}
-- (spent -1: the budget is not in Redis; owned 0: Redis does not know the slice, it
-- lapsed or the budget was reloaded; r -1: the window is gone).
local expires = now + tonumber(ARGV[1])
local n = tonumber(ARGV[2]); local m = tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local o = 3 + 4 * (i - 1); local key = KEYS[i]
  local slice = ARGV[o + 1]; local mode = ARGV[o + 2]; local used = tonumber(ARGV[o + 3])
  out[i] = -1; out[n + i] = 0; out[2 * n + i] = 0; out[3 * n + i] = 0
  if redis.call('HEXISTS', key, 'gen') == 1 then
    out[3 * n + i] = 1
    if mode == '0' then
      local v = redis.call('HMGET', key, 'lo:' .. slice, 'lu:' .. slice)
      if v[1] or v[2] then
        local lu = tonumber(v[2] or '0')
        if used > lu then
          redis.call('HINCRBY', key, 'spent', used - lu)
          redis.call('HSET', key, 'lu:' .. slice, used)
        end
        if v[1] then
          local lo = tonumber(v[1]); local target = tonumber(ARGV[o + 4])
          if target < lo then  -- (never -0: Redis takes no "-0" for an integer)
            redis.call('HINCRBY', key, 'held', target - lo)
            redis.call('HINCRBY', key, 'leased', target - lo)
            lo = target
          end
          if lo <= 0 then redis.call('HDEL', key, 'lo:' .. slice) else
            redis.call('HSET', key, 'lo:' .. slice, lo)
          end
          -- a tombstone keeps its time too: RECALL clears those of processes that died
          redis.call('HSET', key, 'lt:' .. slice, expires)
        end
      else
        out[3 * n + i] = 0
      end
    elseif mode == '1' then
      local lc = tonumber(redis.call('HGET', key, 'lc:' .. slice) or '0')
      if used > lc then
        redis.call('HINCRBY', key, 'spent', used - lc)
        redis.call('HSET', key, 'lc:' .. slice, used)
      end
    else
      redis.call('HDEL', key, 'lo:' .. slice, 'lu:' .. slice, 'lc:' .. slice, 'lt:' .. slice)
    end
    local w = redis.call('HMGET', key, 'spent', 'held', 'recall')
    out[i] = tonumber(w[1] or '0'); out[n + i] = tonumber(w[2] or '0')
    if w[3] and tonumber(w[3]) > now then out[2 * n + i] = 1 end
  end
end
local base = 3 + 4 * n
for j = 1, m do
  local o = base + 4 * (j - 1); local key = KEYS[n + j]; local slice = ARGV[o + 1]
  local v = redis.call('HMGET', key, 'ws:' .. slice, 'wr:' .. slice, 'wt:' .. slice, 'r', 't')
  out[4 * n + j] = -1; out[4 * n + m + j] = -1
  if v[1] then
    local r = tonumber(v[4] or '0'); local t = tonumber(v[5] or '0')
    if tonumber(ARGV[o + 2]) > tonumber(v[1]) then
      local dr = tonumber(ARGV[o + 3]) - tonumber(v[2]); local dt = tonumber(ARGV[o + 4]) - tonumber(v[3])
      if dr ~= 0 then r = redis.call('HINCRBY', key, 'r', dr) end
      if dt ~= 0 then t = redis.call('HINCRBY', key, 't', dt) end
      redis.call('HSET', key, 'ws:' .. slice, ARGV[o + 2], 'wr:' .. slice, ARGV[o + 3],
                 'wt:' .. slice, ARGV[o + 4])
    end
    out[4 * n + j] = r; out[4 * n + m + j] = t
  end
end
return out
"""
)

# Lapse the slices of budget KEYS[1] not reported in time: what they hold counts as spent
# (their process may have admitted and settled calls it never reported), and the budget is
# marked for a rebuild from the ledger (metering.control.counters) once the calls those slices
# may still have in flight are over: `safe_at`, `grace` ms from now. Clears old
# tombstones. Needs `now` and `grace`; sets `lapsed` (what was counted as spent).
LAPSE_SLICES_LUA = """
local lapsed = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 3) == 'lt:' and tonumber(fields[i + 1]) < now then
    local slice = string.sub(name, 4)
    local lo = tonumber(redis.call('HGET', KEYS[1], 'lo:' .. slice) or '0')
    if lo > 0 then
      redis.call('HINCRBY', KEYS[1], 'held', 0 - lo)
      redis.call('HINCRBY', KEYS[1], 'leased', 0 - lo)
      redis.call('HINCRBY', KEYS[1], 'spent', lo)
      lapsed = lapsed + lo
    end
    redis.call('HDEL', KEYS[1], 'lo:' .. slice, 'lu:' .. slice, 'lc:' .. slice, name)
  end
end
if lapsed > 0 then
  local safe_at = tonumber(redis.call('HGET', KEYS[1], 'safe_at') or '0')
  redis.call('HSET', KEYS[1], 'stale', 1, 'safe_at', math.max(safe_at, now + grace))
end
"""

RECALL_LUA = (
    NOW_LUA
    + """
-- A call near the limit of budget KEYS[1] waits for slices: lapse those not reported in
-- time, ask the others back for ARGV[1] ms, and return what is still out.
-- ARGV[2]: the longest a call may still run (ms), the grace before a rebuild.
local grace = tonumber(ARGV[2])
"""
    + LAPSE_SLICES_LUA
    + """
local leased = tonumber(redis.call('HGET', KEYS[1], 'leased') or '0')
if leased > 0 then redis.call('HSET', KEYS[1], 'recall', now + tonumber(ARGV[1])) end
return leased
"""
)

LEASE, FLUSH, RECALL = Script(LEASE_LUA), Script(FLUSH_LUA), Script(RECALL_LUA)

ADMIT_LUA = """
-- KEYS: n budget hashes (spent, held, gen), m rate-window hashes (r: requests, t: tokens),
--   then n hold registers (sorted sets, metering.control.store.holds_key)
-- ARGV: n, m, out_min, out_max, share, est_tokens, ttl, hold_id, hold_ttl_ms,
--   (limit, a, b) x n, (rpm, tpm) x m
-- Returns {1, granted, requests, tokens, hold_id x n} (requests and tokens of the first
-- window after counting), or a refusal: {-1, i, 0} budget i is not loaded, {-2, j, 0}
-- requests or {-3, j, 0} tokens per minute of window j, {-4, i, left, leased} budget i
-- (leased: what processes' slices hold of it, metering.control.leases).
-- Every hold is registered as "<hold_id>:<amount>", scored by when it expires (Redis's
-- clock): settlement removes it, and one never settled is reaped (REAP_LUA).
-- Few redis.call()s on purpose: each one costs more than the work it does.
local n = tonumber(ARGV[1]); local m = tonumber(ARGV[2])
local out_min = tonumber(ARGV[3]); local out = tonumber(ARGV[4]); local share = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6]); local ttl = tonumber(ARGV[7])
local gens = {}; local room = -1; local worst = 0; local worst_left = 0; local worst_leased = 0
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'held', 'gen', 'leased')
  if not v[3] then return {-1, i, 0} end
  gens[i] = tonumber(v[3])
  local left = tonumber(ARGV[7 + 3 * i]) - tonumber(v[1] or '0') - tonumber(v[2] or '0')
  local a = tonumber(ARGV[8 + 3 * i]); local b = tonumber(ARGV[9 + 3 * i])
  local cap = out
  if b > 0 then cap = math.floor((left - a) / b) elseif left < a then cap = -1 end
  if worst == 0 or cap < room then
    room = cap; worst = i; worst_left = left; worst_leased = tonumber(v[4] or '0')
  end
end
local base = 9 + 3 * n
for j = 1, m do
  local rpm = tonumber(ARGV[base + 2 * j - 1]); local tpm = tonumber(ARGV[base + 2 * j])
  local v = redis.call('HMGET', KEYS[n + j], 'r', 't')
  if rpm > 0 and tonumber(v[1] or '0') + 1 > rpm then return {-2, j, 0} end
  if tpm > 0 and tonumber(v[2] or '0') + tokens > tpm then return {-3, j, 0} end
end
local res = {1, out, 0, 0}
if n > 0 then
  if room < out_min then return {-4, worst, worst_left, worst_leased} end
  local grant = math.max(out_min, math.floor(room / share))
  if grant < out then out = grant end
  res[2] = out
  local clock = redis.call('TIME')
  local expires = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    + tonumber(ARGV[9])
  for i = 1, n do
    local hold = tonumber(ARGV[8 + 3 * i]) + tonumber(ARGV[9 + 3 * i]) * out
    redis.call('HINCRBY', KEYS[i], 'held', hold)
    redis.call('ZADD', KEYS[n + m + i], expires, ARGV[8] .. ':' .. string.format('%.0f', hold))
    res[4 + i] = tonumber(ARGV[8])
  end
end
for j = 1, m do
  local r = redis.call('HINCRBY', KEYS[n + j], 'r', 1)
  local t = redis.call('HINCRBY', KEYS[n + j], 't', tokens)
  if r == 1 then redis.call('EXPIRE', KEYS[n + j], ttl) end
  if j == 1 then res[3] = r; res[4] = t end
end
return res
"""

SETTLE_LUA = """
-- KEYS: n budget hashes, m rate-window hashes, n hold registers; ARGV: n, m, token_delta,
-- ttl, (hold, actual, hold_id) x n. Returns each budget's spent after settling (-1: the
-- budget is gone from Redis).
-- A hold is released only if its budget still registers it: a budget reloaded from the
-- ledger since (Redis restart, expiry) never held it, and a hold reaped meanwhile was
-- counted as spent in full; releasing it there would free other calls' holds. The actual
-- use is always added.
local n = tonumber(ARGV[1]); local m = tonumber(ARGV[2]); local delta = tonumber(ARGV[3])
local out = {}
for i = 1, n do
  out[i] = -1
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local hold = tonumber(ARGV[3 * i + 2])
    if redis.call('ZREM', KEYS[n + m + i], ARGV[3 * i + 4] .. ':' .. ARGV[3 * i + 2]) == 1 then
      -- 0 - x, not -x: for x = 0 that is -0, which Redis refuses as an integer
      if redis.call('HINCRBY', KEYS[i], 'held', 0 - hold) < 0 then
        redis.call('HSET', KEYS[i], 'held', 0)
      end
    end
    out[i] = redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[3 * i + 3]))
  end
end
if delta ~= 0 then
  for j = 1, m do
    -- a window that expired meanwhile comes back only as long as a fresh one would live
    if redis.call('HINCRBY', KEYS[n + j], 't', delta) == delta then
      redis.call('EXPIRE', KEYS[n + j], ARGV[4])
    end
  end
end
return out
"""

LOAD_LUA = """
-- A budget is loaded when it has no generation (new, expired, or Redis restarted).
-- KEYS: the budget hash, its hold register, the generation counter of its tenant
-- (metering.control.scopes.generation_key: a script names every key it touches, and on a
-- cluster they share the budget's slot); ARGV: spent, ttl_s (0: none).
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then
  local gen = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'held', 0, 'gen', gen)
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  -- holds registered on an earlier generation were never held by this one
  redis.call('DEL', KEYS[2])
end
return 1
"""


CANCEL_LUA = """
-- An admission whose reply was lost: release its holds if Redis took them.
-- KEYS: n budget hashes, n hold registers; ARGV: n, hold_id. Returns how many it released.
local n = tonumber(ARGV[1]); local prefix = ARGV[2] .. ':'; local released = 0
for i = 1, n do
  for _, member in ipairs(redis.call('ZRANGE', KEYS[n + i], 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then
      redis.call('ZREM', KEYS[n + i], member)
      local hold = tonumber(string.sub(member, #prefix + 1))
      if redis.call('HINCRBY', KEYS[i], 'held', 0 - hold) < 0 then
        redis.call('HSET', KEYS[i], 'held', 0)
      end
      released = released + 1
    end
  end
end
return released
"""

ADMIT, SETTLE, LOAD = Script(ADMIT_LUA), Script(SETTLE_LUA), Script(LOAD_LUA)
CANCEL = Script(CANCEL_LUA)

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

LEGACY_DROP_LUA = """
-- A budget of the names before the tenant hash tag (`rk:spend:…`), which only processes
-- of the earlier version use (a rolling deploy): deleted once idle, never under a
-- call. Deleting it then is what its own expiry would do: the next caller of that
-- version loads it from the ledger, which has every settled call.
-- KEYS: the budget hash, its hold register; ARGV[1]: the idle seconds required (the
-- hold TTL). Returns 1 (deleted), 0 (kept: touched within that time, or a hold or a
-- slice out), -1 (kept: an LFU maxmemory-policy keeps no idle time).
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- a register left behind by a budget gone: LOAD deletes it before any use anyway
  return redis.call('DEL', KEYS[2])
end
-- OBJECT does not touch the key, so the rebuild's own visits never keep it young
local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', KEYS[1])
if not ok then return -1 end
if idle < tonumber(ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local v = redis.call('HMGET', KEYS[1], 'held', 'leased')
if tonumber(v[1] or '0') ~= 0 or tonumber(v[2] or '0') ~= 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
