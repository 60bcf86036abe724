"""Spend control and rate limits on the hot path, shared by every server process.

Where things are: scopes (what a call is checked against) · budgets (THE list of budgets
a call counts against, for the proxy and for billing's alerts) · terms (what billing says
about a tenant's calls) · governance (reasoning rules on a request) · holds (admission and
settlement: the policy) · store (the Redis front, one pipelined connection per process) ·
scripts (its Lua) · leases (admission on per-process slices) · redis_pipe · counters (the
periodic rebuild from the ledger) · holdcaps (learning a call's plausible size).

State lives in Redis; every decision is one Lua script, so it is atomic across processes:
- Admission holds the call against every budget that applies (spend limits of the tenant
  and the key, the prepaid balance, monthly reasoning-token budgets) and counts it in the
  rate windows, or refuses, in one step. Concurrent calls can never together pass a
  budget (no check-then-increment race).
- A call's cost to a budget is linear in the output tokens it may spend
  (`BudgetCost`: input hold + price x output tokens, or just the tokens for a reasoning
  budget). A call that names its maximum is held for exactly that, or refused. A call
  that names none is granted the ceiling when the budgets cover it, otherwise a share of
  what is left down to the plausible size learned for the alias (`Grant`), and the proxy
  sends that grant upstream as the call's maximum: the hold always covers the worst
  case, yet a call is refused only when what is left cannot cover a plausible call.
- Settlement releases the hold and adds what the call actually used.
- Every exact hold is registered beside its budget (`holds_key`: a sorted set of
  "<hold id>:<amount>" by expiry, Redis's clock), added by admission and removed by
  settlement in the same scripts. An admission whose reply was lost is cancelled by its
  hold id once Redis answers; a hold never settled (crashed process, lost settlement)
  expires after the hold TTL and is reaped by the periodic rebuild (metering.control.counters):
  counted as spent in full, then the budget is rebuilt from the ledger. So a counter
  that counts too much comes back to the ledger's figure; it never counts too little.

Amounts are integers (nano-units of money, 1e-9, rounded up from the exact Decimal; or
tokens), so a counter never under-counts. The durable truth is the ledger (committed
before settlement): a budget missing from Redis (first use, expiry, Redis restart) is
loaded from it before anything is admitted against it. Lua numbers are doubles: budgets
are exact up to 2^53 units (9 million in money).

When Redis cannot be reached the proxy refuses calls that have controls
(RECKON_CONTROL_FAIL_OPEN=false, the default) or lets them through unchecked (true).
"""
