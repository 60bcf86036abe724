"""Admission and settlement of a controlled call: the spend-control policy of the proxy.

Before a call is forwarded, `Holds.take` sizes what it may spend and holds that against
every budget of its caller and counts it in every rate window (metering.control.store),
or says why it is refused. After its usage record is durable, `Holds.release` settles the
hold for what the call used. The HTTP layer (api.proxy) only frames the answer.

Hold sizing:
- input: a generous estimate from the body's size (`ceil_tokens`), plus a whole context
  when the input lives upstream (`previous_response_id`, `conversation`);
- output: a call that names its maximum is held for exactly that (or, in clamp mode, for
  what is left down to the plausible size); a call that names none is granted the
  ceiling, or a share of what is left down to the plausible size (`Grant`), and the
  grant becomes its maximum upstream, so the hold always covers the worst case;
- each of `n` choices may spend the whole output grant.
"""

import asyncio
import logging
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from django.conf import settings
from django.db import DatabaseError

from metering.control.governance import requested_max_output, set_max_output
from metering.control.leases import Lease
from metering.control.scopes import (
    NANO,
    BudgetCost,
    BudgetScope,
    Controls,
    Grant,
    RateScope,
    ceil_tokens,
    to_nano,
)
from metering.control.store import ControlStore, ControlUnavailable
from metering.ledger.record import Rates

logger = logging.getLogger(__name__)


class PricedRoute(Protocol):
    """What admission reads of a route (metering.proxy.callers.RouteInfo has it)."""

    alias: str
    # The tenant's list prices for the alias (None: no plan prices it).
    spend_rates: Rates | None
    # Output tokens a call on the alias plausibly spends (None: not learned).
    hold_cap: int | None
    # Nano-USD per million input tokens and per output token that holds charge.
    hold_prices: tuple[int, int] | None


class Refused(StrEnum):
    """Why a call is not admitted (the HTTP layer maps each to the caller's wire format)."""

    SPEND = "spend"  # a budget cannot cover the call
    REQUESTS = "requests"  # the requests-per-minute window is full
    TOKENS = "tokens"  # the tokens-per-minute window is full
    UNAVAILABLE = "unavailable"  # a budget could not be loaded from the database
    CONTROL_UNAVAILABLE = "control_unavailable"  # the control store is out of reach


class Refusal(NamedTuple):
    """A call not admitted: why, what to tell the caller, and the rate-limit headers."""

    kind: Refused
    message: str
    headers: list[tuple[bytes, bytes]]


class Hold:
    """A call's admission: its holds and the budgets and rate scopes it was placed on."""

    __slots__ = (
        "budgets",
        "rates",
        "holds",
        "est_tokens",
        "generations",
        "token_windows",
        "headers",
        "checked",
        "lease",
    )

    def __init__(
        self,
        budgets: tuple[BudgetScope, ...],
        rates: tuple[RateScope, ...],
        est_tokens: int,
    ) -> None:
        self.budgets = budgets
        self.rates = rates
        self.holds: list[int] = [0] * len(budgets)
        self.generations: list[int] = [0] * len(budgets)
        self.token_windows: list[str] | None = None
        self.est_tokens = est_tokens
        self.headers: list[tuple[bytes, bytes]] = []
        self.checked = True
        self.lease: Lease | None = None

    def unchecked(self) -> "Hold":
        self.checked = False
        return self


class Holds:
    """Takes and releases the holds of one server process's calls on its control store
    (None: no store configured)."""

    def __init__(
        self,
        store: ControlStore | None,
        *,
        load_in_thread: Callable[[Callable[[], int]], "asyncio.Future[int]"],
        ceiling: int,
        share: int,
        unseen_input: int,
    ) -> None:
        self.store = store
        # Runs a budget's ledger lookup off the event loop, bounded in time.
        self._load_in_thread = load_in_thread
        self._ceiling = ceiling  # the most output a call that names no maximum is granted
        self._share = share  # such a call takes at most 1/share of what is left
        self._unseen_input = unseen_input  # input held for a context that lives upstream

    async def take(
        self,
        controls: Controls,
        route: PricedRoute,
        endpoint: str,
        request: dict[str, Any],
        body_size: int,
    ) -> Hold | Refusal:
        """Hold the call against its budgets and count it in its rate windows, or say why
        not. Where the grant is below what the call would otherwise be allowed, the
        request's output maximum is set to the grant."""
        if controls.money_budgets and route.spend_rates is None:
            message = (
                f"Spend limits apply to this key but '{route.alias}' has no price on your plan."
            )
            return Refusal(Refused.SPEND, message, [])
        ceiling = self._ceiling
        plausible = min(route.hold_cap or ceiling, ceiling)
        asked = requested_max_output(endpoint, request)
        if asked is None:
            grant = Grant(plausible, ceiling, self._share)
        elif controls.clamp_to_budget:  # lowered to what is left, refused once nothing is
            grant = Grant(min(asked, route.hold_cap or 1), asked)
        else:
            grant = Grant(asked, asked)
        in_tokens = ceil_tokens(body_size)
        if "previous_response_id" in request or "conversation" in request:
            # the input lives upstream, not in this body: hold for a whole context
            in_tokens += self._unseen_input
        choices = request.get("n")
        per_choice = choices if type(choices) is int and choices > 1 else 1
        costs = budget_costs(controls.budgets, route.hold_prices, in_tokens, per_choice)
        hold = Hold(controls.budgets, controls.rates, in_tokens + grant.out_max)
        store = self.store
        if store is None:
            if settings.RECKON_CONTROL_FAIL_OPEN:
                return hold.unchecked()
            return Refusal(Refused.CONTROL_UNAVAILABLE, "Spend control is not configured.", [])
        try:
            admission = store.admit_leased(
                controls.budgets,
                costs,
                grant,
                controls.rates,
                hold.est_tokens,
                self._load_in_thread,
            ) or await store.admit(
                budgets=controls.budgets,
                costs=costs,
                grant=grant,
                rates=controls.rates,
                est_tokens=hold.est_tokens,
                load_in_thread=self._load_in_thread,
                leased_tried=True,
            )
        except (DatabaseError, TimeoutError) as exc:  # a budget could not be loaded
            logger.error("cannot load a budget from the database: %r", exc)
            return Refusal(Refused.UNAVAILABLE, "", [])
        except ControlUnavailable:
            logger.error(
                "spend control store unreachable; failing %s",
                "open" if settings.RECKON_CONTROL_FAIL_OPEN else "closed",
            )
            if settings.RECKON_CONTROL_FAIL_OPEN:
                return hold.unchecked()
            message = "Spend control is unavailable; try again shortly."
            return Refusal(Refused.CONTROL_UNAVAILABLE, message, [])
        if admission.allowed:
            hold.headers = admission.headers
            hold.token_windows = admission.token_windows
            hold.lease = admission.lease
            if controls.budgets:
                granted = admission.output_tokens
                hold.holds = admission.holds or [c.fixed + c.per_token * granted for c in costs]
                hold.generations = admission.generations
                if asked is None or granted < asked:
                    set_max_output(endpoint, request, granted)
            return hold
        if admission.reason == "budget" and admission.budget is not None:
            message = budget_refusal(admission.budget, admission.left, costs, controls, grant)
            return Refusal(Refused.SPEND, message, admission.headers)
        message = (
            f"Rate limit reached for {admission.reason} per minute. "
            f"Please try again in {admission.retry_after_s}s."
        )
        kind = Refused.REQUESTS if admission.reason == "requests" else Refused.TOKENS
        return Refusal(kind, message, admission.headers)

    def release(
        self,
        hold: Hold,
        *,
        spend: Decimal | None = None,
        reasoning_tokens: int = 0,
        actual_tokens: int | None = None,
    ) -> None:
        """Settle a hold for what the call used (nothing, when it never reached upstream)."""
        store = self.store
        if store is None or hold.checked is False:
            return
        spent = 0 if spend is None else to_nano(spend)
        actuals = [reasoning_tokens if b.kind == "reasoning" else spent for b in hold.budgets]
        delta = (actual_tokens if actual_tokens is not None else 0) - hold.est_tokens
        if hold.lease is not None:
            store.settle_leased(hold.lease, hold.holds, actuals, delta)
            return
        store.settle(
            budgets=hold.budgets,
            holds=hold.holds,
            actuals=actuals,
            rates=hold.rates,
            token_delta=delta,
            generations=hold.generations,
            token_windows=hold.token_windows,
            lease=hold.lease,
        )  # not awaited: the command is on its way, the response need not wait for it


def budget_costs(
    budgets: tuple[BudgetScope, ...],
    hold_prices: tuple[int, int] | None,
    in_tokens: int,
    choices: int = 1,
) -> list[BudgetCost]:
    """The call's cost to each budget per output token granted (each of `choices` choices
    may spend the whole grant), in the budget's unit, rounded up."""
    reasoning = BudgetCost(0, choices)  # reasoning tokens are at most the output tokens
    if hold_prices is None:  # only reasoning budgets: a money budget is refused before
        return [reasoning] * len(budgets)
    per_million_input, per_output_token = hold_prices
    money = BudgetCost(-(-in_tokens * per_million_input // 1_000_000), choices * per_output_token)
    return [reasoning if b.kind == "reasoning" else money for b in budgets]


def budget_refusal(
    budget: BudgetScope, left: int, costs: list[BudgetCost], controls: Controls, grant: Grant
) -> str:
    """What a caller is told when `budget` cannot cover the call."""
    cost = costs[list(controls.budgets).index(budget)]
    if budget.kind == "reasoning":
        return (
            f"The {budget.label} has {max(left, 0)} tokens left and this call may use up to "
            f"{grant.out_min}. Lower max_completion_tokens or wait for the next month."
        )
    need = Decimal(cost.fixed + cost.per_token * grant.out_min) / NANO
    left_money = max(Decimal(left) / NANO, Decimal(0))
    return (
        f"This call could cost up to {need:.6f} and only {left_money:.6f} of your "
        f"{budget.label} remains. Lower max_completion_tokens or raise the limit."
    )
