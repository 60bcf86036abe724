"""What a call writes: its usage record, with its serving cost and its spend stamped.

The proxy observes a call (metering.proxy) and hands the ledger (metering.ledger) one row
built here: who called, which route, the token classes the adapter parsed, how the call
ended, and two prices of it computed now, at the rates in force when the caller's
context was loaded, so the ledger never looks a rate up:
- `serving_cost_usd` / `reasoning_cost_usd`: what serving it cost us (the route's serving
  cost rate, `cost_rate_id`);
- `spend_usd`: what it costs the tenant at its plan's list prices (what spend limits and
  the prepaid balance count).

Costs are pure and exact: rates are USD per million tokens with 18 decimals, so a cost
has at most 24 decimals and is computed and stored without rounding (a private
high-precision context).
"""

import array
import decimal
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from metering.usage import LEDGER_COLUMNS, TokenUsage, ledger_counts

_CONTEXT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.Overflow])
_mul, _add, _scaleb = _CONTEXT.multiply, _CONTEXT.add, _CONTEXT.scaleb

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# The random part of request ids, read from the OS 512 ids at a time: one `os.urandom` per
# call (a getrandom syscall, then SystemRandom's int building) was measurable on the hot
# path. Each 64-bit value is taken by one `next()` (a single C call, atomic under the GIL:
# threads never share one); a process forked from this one starts a pool of its own, so
# parent and child never draw the same bytes.
_POOL_IDS = 512
_RANDOM_62 = (1 << 62) - 1
_pool: Iterator[int] = iter(())


def _refill() -> Iterator[int]:
    global _pool
    _pool = iter(array.array("Q", os.urandom(array.array("Q").itemsize * _POOL_IDS)))
    return _pool


def _forget_pool() -> None:
    global _pool
    _pool = iter(())


os.register_at_fork(after_in_child=_forget_pool)


def _uuid_of(
    value: int,
    _new: Any = object.__new__,
    _set: Any = object.__setattr__,
    _unknown: uuid.SafeUUID = uuid.SafeUUID.unknown,
) -> uuid.UUID:
    """`uuid.UUID(int=value)` for a value known to fit in 128 bits: the two attributes
    UUID's constructor sets, without its argument checks (a third of its cost, once per
    call on the hot path; tests compare the two)."""
    made = _new(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _unknown)
    return made  # type: ignore[no-any-return]


def _random_62() -> int:
    """62 bits from the OS's CSPRNG."""
    try:
        return next(_pool) & _RANDOM_62
    except StopIteration:
        return next(_refill()) & _RANDOM_62


ATTEMPT_BITS = 4  # a call's attempt number lives in its request id's low 4 bits
MAX_ATTEMPT = (1 << ATTEMPT_BITS) - 1
_ATTEMPT_MASK = MAX_ATTEMPT


def request_id_for(started_at: datetime, attempt: int = 0) -> uuid.UUID:
    """A new request id that carries `started_at`: a UUIDv7 (RFC 9562) whose 48-bit Unix
    milliseconds and 12-bit `rand_a` (the microsecond within that millisecond, 0..999)
    encode `started_at` exactly, with 62 random bits in `rand_b`.

    Why: the ledger is partitioned by `started_at`, and a unique index there is unique
    per partition only. The database checks that a v7 id's `started_at` is the one it
    encodes (migration 0013, `metering_uuid7_started_at`), so equal ids always land in
    one partition, where the unique index catches the second: global idempotency.

    `attempt` k (1..15) sets the low 4 bits to k (58 random bits left): the first
    attempt of a routed call; its later attempts take `request_id_attempt`. 0: all 62
    bits random (a call that is never retried)."""
    micros = (started_at - _EPOCH) // _MICROSECOND
    millis, within = divmod(micros, 1000)
    if not 0 <= millis < 1 << 48:
        raise ValueError(f"{started_at} is outside what a UUIDv7 can carry")
    value = (millis << 80) | (0x7 << 76) | (within << 64) | (0b10 << 62) | _random_62()
    if attempt:  # request_id_attempt's bits, on the integer: one UUID per call, not two
        if not 1 <= attempt <= MAX_ATTEMPT:
            raise ValueError(f"attempt {attempt} is outside 1..{MAX_ATTEMPT}")
        value = (value & ~_ATTEMPT_MASK) | attempt
    return _uuid_of(value)


def request_id_attempt(base: uuid.UUID, attempt: int) -> uuid.UUID:
    """The id of attempt `attempt` (1..15) of the call whose id is `base`: the same upper
    124 bits (so the same `started_at`, partition and billing period, and one range of
    the unique index holds every attempt), the low 4 bits set to `attempt`."""
    if not 1 <= attempt <= MAX_ATTEMPT:
        raise ValueError(f"attempt {attempt} is outside 1..{MAX_ATTEMPT}")
    if base.version != 7:
        raise ValueError("only a version-7 request id carries attempts")
    return uuid.UUID(int=(base.int & ~_ATTEMPT_MASK) | attempt)


def request_id_call_range(request_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and highest ids the attempts of `request_id`'s call can have (inclusive):
    `request_id__range` finds them all on the unique index."""
    low = request_id.int & ~_ATTEMPT_MASK
    return uuid.UUID(int=low), uuid.UUID(int=low | _ATTEMPT_MASK)


def started_at_of(request_id: uuid.UUID) -> datetime | None:
    """The `started_at` a version-7 request id encodes (`request_id_for`); None for any
    other version (legacy uuid4 ids carry no time)."""
    if request_id.version != 7:
        return None
    value = request_id.int
    micros = (value >> 80) * 1000 + ((value >> 64) & 0xFFF)
    return _EPOCH + timedelta(microseconds=micros)


class Rates(NamedTuple):
    """USD per 1M tokens of each token class (fields: `metering.usage.TOKEN_CLASSES`)."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal


def serving_cost(
    rates: Rates, *, input: int, cache_read: int, cache_write: int, output: int, reasoning: int
) -> tuple[Decimal, Decimal]:
    """(total cost, the part spent on reasoning), exact."""
    return _cost(rates, (input, cache_read, cache_write, output, reasoning))


def usage_cost(rates: Rates, usage: TokenUsage) -> tuple[Decimal, Decimal]:
    """`serving_cost` of a call's token classes."""
    return _cost(rates, ledger_counts(usage))


def _cost(rates: Rates, counts: tuple[int, ...]) -> tuple[Decimal, Decimal]:
    """`serving_cost` of counts in `TOKEN_CLASSES` order, the order of `Rates`' fields."""
    input, cache_read, cache_write, output, reasoning = counts
    # The context's methods, bound once (below): each lookup on a Context object costs
    # more than the arithmetic; an int operand is converted exactly, as Decimal(int) is.
    reasoning_cost = _scaleb(_mul(reasoning, rates.reasoning), -6)
    rest = _scaleb(
        _add(
            _add(_mul(input, rates.input), _mul(cache_read, rates.cache_read)),
            _add(_mul(cache_write, rates.cache_write), _mul(output, rates.output)),
        ),
        -6,
    )
    return _add(rest, reasoning_cost), reasoning_cost


class RecordedRoute(Protocol):
    """What a record copies of the route a call took (metering.proxy.callers.RouteInfo)."""

    @property
    def alias(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def upstream_model(self) -> str: ...
    @property
    def accelerator(self) -> str: ...
    @property
    def provider_account_id(self) -> int | None: ...
    @property
    def cost_rate_id(self) -> int | None: ...
    @property
    def cost_rates(self) -> Rates | None: ...
    @property
    def spend_rates(self) -> Rates | None: ...


def usage_record_row(
    *,
    request_id: uuid.UUID,
    tenant_id: uuid.UUID,
    api_key_id: int,
    route: RecordedRoute,
    endpoint: str,
    stream: bool,
    status: str,
    upstream_status: int,
    response_id: str,
    usage: TokenUsage,
    flags: list[str],
    raw_usage: Any,
    client_disconnected: bool,
    ttft_us: int | None,
    latency_us: int,
    started_at: datetime,
    route_id: int | None = None,
    attempt: int | None = None,
    failed_over: bool | None = None,
    route_policy: str | None = None,
    route_reason: str | None = None,
    reasoning_effort: str | None = None,
) -> tuple[dict[str, Any], Decimal | None]:
    """The ledger row of one call (or one attempt of a routed call), and its spend at
    list prices (None: the tenant has no price for the alias). `flags`: the proxy's own,
    after the usage's.

    Routing stamps (decision 0117): `route_id` is the target that served the attempt
    (default: the route's own `route_id`, once the caller context carries it);
    `attempt` is 1 on a single-target alias (the proxy gives its id attempt bits 1 too),
    where `failed_over`, `route_policy` and `route_reason` are None. `reasoning_effort`: "" when the call named none (None: not
    known, as before routing)."""
    if route_id is None:
        route_id = getattr(route, "route_id", None)
    counts = ledger_counts(usage)
    prices = route.spend_rates
    spend = None if prices is None else _cost(prices, counts)[0]
    rates = route.cost_rates
    if rates is None:
        cost = reasoning_cost = None
    else:
        cost, reasoning_cost = _cost(rates, counts)
    row = {
        "request_id": request_id,
        "tenant_id": tenant_id,
        "api_key_id": api_key_id,
        "alias": route.alias,
        "provider": route.provider,
        "upstream_model": route.upstream_model,
        "accelerator": route.accelerator,
        "provider_account_id": route.provider_account_id,
        "route_id": route_id,
        "attempt": attempt,
        "failed_over": failed_over,
        # column widths (a client's effort is free text): cut, never refused
        "route_policy": None if route_policy is None else route_policy[:16],
        "route_reason": None if route_reason is None else route_reason[:64],
        "reasoning_effort": None if reasoning_effort is None else reasoning_effort[:16],
        "endpoint": endpoint,
        "stream": stream,
        "status": status,
        "upstream_status": upstream_status,
        "upstream_response_id": response_id[:200],
        "reasoning_source": usage.reasoning_source,
        "flags": [*usage.flags, *flags],
        "raw_usage": raw_usage,
        "cost_rate_id": route.cost_rate_id,
        "serving_cost_usd": cost,
        "reasoning_cost_usd": reasoning_cost,
        "spend_usd": spend,
        "client_disconnected": client_disconnected,
        "ttft_us": ttft_us,
        "latency_us": latency_us,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
    }
    row.update(zip(LEDGER_COLUMNS, counts, strict=True))  # input_tokens, cached_input_tokens, ...
    return row, spend
