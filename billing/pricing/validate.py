"""Plan validation: every error and warning for a ``PricePlan``. ``rate`` refuses a plan
with errors (``PlanInvalid``, the one "invalid plan" error, also raised by billing.plans
when a plan version or its reasoning governance is refused)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

from billing.pricing.charges import EXACT, is_number, plain, tier_problems, volume_cliffs
from billing.pricing.currency import ROUNDING_MODES, currency_exponent, is_known_currency
from billing.pricing.priced_plan import (
    CHARGE_MODELS,
    GRADUATED,
    PACKAGE,
    PER_UNIT,
    TOKEN_CLASSES,
    VOLUME,
    ComponentPrice,
    PricePlan,
)
from config.errors import ApplicationError

__all__ = ["PlanInvalid", "PlanIssue", "money_text", "validate_plan"]

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class PlanIssue:
    severity: str  # "error" | "warning"
    code: str  # stable machine-readable code, e.g. "overlapping_scope"
    message: str
    component_key: str | None = None  # None for plan-level issues


class PlanInvalid(ApplicationError):
    """A plan (or plan version) with errors: ``issues`` lists them."""

    code = "plan_invalid"

    def __init__(
        self,
        message: str,
        extra: dict[str, object] | None = None,
        *,
        issues: Sequence[PlanIssue] = (),
    ) -> None:
        self.issues = tuple(issues)
        super().__init__(message, extra)

    @classmethod
    def of(cls, issues: Sequence[PlanIssue], message: str = "") -> PlanInvalid:
        """The error for these issues; the default message names every one."""
        summary = "; ".join(f"{i.code}: {i.message}" for i in issues)
        payload = [
            {
                "severity": i.severity,
                "code": i.code,
                "message": i.message,
                "component": i.component_key,
            }
            for i in issues
        ]
        return cls(message or f"invalid plan: {summary}", {"issues": payload}, issues=issues)


def validate_plan(plan: PricePlan) -> list[PlanIssue]:
    """Every error and warning for ``plan``; ``rate`` refuses plans with errors.

    Error codes: unknown_currency, invalid_number, negative_price, negative_fee,
    negative_allowance, duplicate_component_key, unknown_token_class,
    unknown_charge_model, unknown_rounding, invalid_unit_tokens, invalid_package_units,
    missing_tiers, open_tier_not_last, last_tier_not_open, tiers_not_increasing,
    invalid_tier_bound, overlapping_scope.
    Warning codes: volume_cliff, empty_alias_scope, unused_field.
    """
    issues: list[PlanIssue] = []

    def error(code: str, message: str, key: str | None = None) -> None:
        issues.append(PlanIssue(ERROR, code, message, key))

    def warning(code: str, message: str, key: str | None = None) -> None:
        issues.append(PlanIssue(WARNING, code, message, key))

    def money(value: object, what: str, code: str, key: str | None) -> None:
        if not is_number(value):
            error("invalid_number", f"{what} must be a finite Decimal, got {value!r}", key)
        elif value < 0:
            error(code, f"{what} must not be negative, got {plain(Decimal(value))}", key)

    exponent = 2
    if is_known_currency(plan.currency):
        exponent = currency_exponent(plan.currency)
    else:
        error("unknown_currency", f"unknown currency {plan.currency!r}")
    money(plan.base_fee, "base_fee", "negative_fee", None)
    money(plan.minimum_commitment, "minimum_commitment", "negative_fee", None)

    seen_keys: set[str] = set()
    for component in plan.components:
        key = component.key
        if key in seen_keys:
            error("duplicate_component_key", f"component key {key!r} is used twice", key)
        seen_keys.add(key)
        if component.token_class not in TOKEN_CLASSES:
            error(
                "unknown_token_class",
                f"unknown token class {component.token_class!r} (expected one of {', '.join(TOKEN_CLASSES)})",
                key,
            )
        if component.rounding not in ROUNDING_MODES:
            error("unknown_rounding", f"unknown rounding mode {component.rounding!r}", key)
        if isinstance(component.unit_tokens, bool) or not isinstance(component.unit_tokens, int):
            error("invalid_unit_tokens", "unit_tokens must be an int", key)
        elif component.unit_tokens <= 0:
            error(
                "invalid_unit_tokens",
                f"unit_tokens must be positive, got {component.unit_tokens}",
                key,
            )
        if (
            isinstance(component.included_tokens, bool)
            or not isinstance(component.included_tokens, int)
            or component.included_tokens < 0
        ):
            error(
                "negative_allowance",
                f"included_tokens must be a non-negative int, got {component.included_tokens!r}",
                key,
            )
        if component.aliases is not None and not component.aliases:
            warning(
                "empty_alias_scope", "aliases is an empty set: the component covers nothing", key
            )

        model = component.charge_model
        if model not in CHARGE_MODELS:
            error(
                "unknown_charge_model",
                f"unknown charge model {model!r} (expected one of {', '.join(CHARGE_MODELS)})",
                key,
            )
            continue
        if model in (PER_UNIT, PACKAGE):
            money(component.unit_price, "unit_price", "negative_price", key)
            if component.tiers:
                warning("unused_field", f"tiers are ignored by the {model} charge model", key)
        if model == PACKAGE:
            if not is_number(component.package_units):
                error("invalid_package_units", "package_units must be a finite Decimal", key)
            elif component.package_units <= 0:
                error(
                    "invalid_package_units",
                    f"package_units must be positive, got {plain(component.package_units)}",
                    key,
                )
        if model in (GRADUATED, VOLUME):
            if is_number(component.unit_price) and component.unit_price != 0:
                warning("unused_field", f"unit_price is ignored by the {model} charge model", key)
            tiers_ok = True
            for index, tier in enumerate(component.tiers):
                money(tier.unit_price, f"tier {index} unit_price", "negative_price", key)
                money(tier.flat_fee, f"tier {index} flat_fee", "negative_fee", key)
                tiers_ok = tiers_ok and is_number(tier.unit_price) and is_number(tier.flat_fee)
            for code, message in tier_problems(component.tiers):
                error(code, message, key)
                tiers_ok = False
            if model == VOLUME and tiers_ok:
                for cliff in volume_cliffs(component):
                    warning(
                        "volume_cliff",
                        f"crossing {plain(cliff.boundary)} units lowers the total from "
                        f"{money_text(cliff.total_at_boundary, exponent)} to "
                        f"{money_text(cliff.total_just_above, exponent)} "
                        f"(by {money_text(cliff.drop, exponent)})",
                        key,
                    )

    issues.extend(_scope_overlaps(plan.components))
    return issues


def _scope_overlaps(components: Sequence[ComponentPrice]) -> Iterator[PlanIssue]:
    general: dict[str, str] = {}  # token_class -> key of its aliases=None component
    scoped: dict[tuple[str, str], str] = {}  # (token_class, alias) -> key
    for component in components:
        token_class, key = component.token_class, component.key
        if component.aliases is None:
            if token_class in general:
                yield PlanIssue(
                    ERROR,
                    "overlapping_scope",
                    f"components {general[token_class]!r} and {key!r} both price every "
                    f"alias's {token_class} tokens",
                    key,
                )
            else:
                general[token_class] = key
            continue
        for alias in sorted(component.aliases):
            other = scoped.get((token_class, alias))
            if other is not None:
                yield PlanIssue(
                    ERROR,
                    "overlapping_scope",
                    f"components {other!r} and {key!r} both price {token_class} tokens of {alias!r}",
                    key,
                )
            else:
                scoped[(token_class, alias)] = key


def money_text(value: Decimal, exponent: int) -> str:
    """At least the currency's digits, more only when the exact value needs them."""
    step = Decimal(1).scaleb(-exponent)
    rounded = value.quantize(step, context=EXACT)
    return format(rounded if rounded == value else value.normalize(EXACT), "f")
