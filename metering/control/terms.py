"""What billing says about a tenant's calls: the contract between metering and billing.

Metering does not import billing. Billing registers a provider at start-up
(`register_tenant_terms_provider`, from billing's AppConfig.ready) that answers, for a
tenant and the aliases it may call, the list prices spend limits count, the plan's
reasoning rules and budget, the prepaid balance and the alert thresholds.

The other way, when a settlement takes a budget across one of those thresholds, metering
calls `alert_thresholds_crossed`: billing registers the handler at start-up
(`register_alert_thresholds_crossed_handler`) that evaluates the tenant's alerts; with
none registered nothing happens.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from metering.control.governance import ReasoningRules
from metering.ledger.record import Rates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BalanceTerms:
    """A prepaid balance that stops calls: what its credits hold now, and what usage since
    the last invoice has used of them (loaded from the ledger when Redis lacks it)."""

    available: Decimal
    epoch: str  # changes whenever an invoice draws on the credits
    load_used: Callable[[], Decimal]


@dataclass(frozen=True)
class TenantTerms:
    """What billing says about a tenant's calls: list prices per alias, the plan's
    reasoning rules and budget, the prepaid balance, alert thresholds."""

    spend_rates: dict[str, Rates]
    reasoning: ReasoningRules | None = None
    monthly_reasoning_tokens: int | None = None
    reasoning_refuse: bool = False  # the plan refuses rather than clamps
    balance: BalanceTerms | None = None
    alert_thresholds: tuple[int, ...] = (50, 80, 100)


def _no_terms(tenant_id: uuid.UUID, aliases: list[str]) -> TenantTerms:
    return TenantTerms(spend_rates={})


# (tenant id, aliases) -> TenantTerms; billing registers the real one.
tenant_terms_provider: Callable[[uuid.UUID, list[str]], TenantTerms] = _no_terms


def register_tenant_terms_provider(
    provider: Callable[[uuid.UUID, list[str]], TenantTerms],
) -> None:
    global tenant_terms_provider
    tenant_terms_provider = provider


def _no_alerts(tenant_id: uuid.UUID) -> None:
    return None


# tenant id -> None: the tenant's alert thresholds may have been crossed; billing
# registers the real one (it evaluates the tenant's alerts off the hot path).
alert_thresholds_crossed_handler: Callable[[uuid.UUID], None] = _no_alerts


def register_alert_thresholds_crossed_handler(handler: Callable[[uuid.UUID], None]) -> None:
    global alert_thresholds_crossed_handler
    alert_thresholds_crossed_handler = handler


def alert_thresholds_crossed(tenant_id: uuid.UUID) -> None:
    """A settlement took one of the tenant's budgets across an alert percentage: tell the
    registered handler. The periodic sweep evaluates every budget anyway, so this only
    makes a crossing known sooner: a failure is logged, never raised into the call."""
    try:
        alert_thresholds_crossed_handler(tenant_id)
    except Exception:  # noqa: BLE001 - the sweep catches up; never fail a call for this
        logger.exception("could not hand over the alert evaluation of tenant %s", tenant_id)
