"""Writes on tenants, API keys, routes and serving cost rates (the ledger's writes live in
metering.ledger).

Invariants: a raw API key is returned once, by `api_key_create`, and never stored (only
its digest and visible prefix); revoking is idempotent; a route (a target) is unique per
(alias, name) and its base URL is stored normalized (`metering.routes`); the targets of an
alias speak one wire family (OpenAI or Anthropic) and an alias keeps at least one active
target once it has one; an alias's `effort` rules name its active targets; a serving cost
rate is only ever added, never edited (billing publishes one per cost basis x deployment
change).
"""

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.errors import ApplicationError, Conflict, NotFound
from metering.control.governance import EFFORTS
from metering.keys import api_key_generate, api_key_hash, api_key_visible_prefix
from metering.ledger.record import Rates
from metering.models import (
    Alias,
    ApiKey,
    ReasoningPolicy,
    Route,
    ServingCostRate,
    SpendLimit,
    Tenant,
    TenantMember,
    UpstreamKeyPeriod,
)
from metering.providers.accounts import provider_account_get, routes_provider_check
from metering.routes import base_url_normalize, route_unreachable_warning
from metering.routing.rules import EffortRule, parse_rules, rules_as_json, rules_unknown_targets
from metering.usage import COST_RATE_FIELDS


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


@transaction.atomic
def tenant_create(*, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise ApplicationError("Tenant name must not be empty.")
    if Tenant.objects.filter(name=name).exists():
        raise Conflict(f"A tenant named {name!r} already exists.")
    return Tenant.objects.create(name=name)


def tenant_get(*, ref: str) -> Tenant:
    """A tenant by id or by exact name."""
    try:
        return Tenant.objects.get(id=uuid.UUID(ref))
    except (ValueError, Tenant.DoesNotExist):
        pass
    try:
        return Tenant.objects.get(name=ref)
    except Tenant.DoesNotExist:
        raise NotFound(f"No tenant with id or name {ref!r}.") from None


@dataclass(frozen=True)
class MemberSet:
    member: TenantMember
    # A new sign-in password, shown once; None when the password was left as it was.
    password: str | None


@transaction.atomic
def tenant_member_set(
    *, tenant: Tenant, username: str, role: str, email: str = "", reset_password: bool = False
) -> MemberSet:
    """Make `username` a console member of `tenant` with `role` (created if new).

    A new user, or `reset_password`, gets a generated password, returned once. A user who
    belongs to another tenant, or who is staff, is refused: a console member reads exactly
    one tenant, and staff act through their roles. Idempotent for the same arguments."""
    username = username.strip()
    if not username:
        raise ApplicationError("Username must not be empty.")
    if role not in TenantMember.Role.values:
        raise ApplicationError(
            f"Unknown member role {role!r}.", {"roles": list(TenantMember.Role.values)}
        )
    user_model = get_user_model()
    user = user_model.objects.select_for_update().filter(username=username).first()
    password: str | None = None
    if user is None:
        user = user_model.objects.create_user(username=username, email=email)
        reset_password = True
    elif user.is_staff or user.is_superuser:
        raise Conflict(f"User {username!r} is staff; staff use the admin and their roles.")
    existing = TenantMember.objects.filter(user=user).first()
    if existing is not None and existing.tenant_id != tenant.pk:
        raise Conflict(f"User {username!r} is already a member of another tenant.")
    if reset_password:
        password = secrets.token_urlsafe(12)
        user.set_password(password)
    if email:
        user.email = email
    user.save()
    member, _ = TenantMember.objects.update_or_create(
        user=user, defaults={"tenant": tenant, "role": role}
    )
    return MemberSet(member=member, password=password)


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str = "",
    expires_at: datetime | None = None,
    can_read_billing: bool = True,
) -> CreatedApiKey:
    """A new key for the tenant; the raw key is returned here only. `can_read_billing`
    False: the key may not read invoices, the balance or balance alerts over REST."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("expires_at must be in the future.")
    raw_key = api_key_generate()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=api_key_visible_prefix(raw_key),
        key_hash=api_key_hash(raw_key),
        expires_at=expires_at,
        can_read_billing=can_read_billing,
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key. Idempotent: revoking twice keeps the first revocation time."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


# The most a per-key monthly spend limit may be (USD): NUMERIC(38,12) holds far more, but
# the control store counts spend in nano-dollars in a signed 64-bit Redis integer.
MAX_KEY_SPEND_LIMIT_USD = Decimal(1_000_000_000)
# PositiveIntegerField / PositiveBigIntegerField bounds of the reasoning policy's columns.
MAX_POLICY_TOKENS = 2**31 - 1
MAX_POLICY_MONTHLY_TOKENS = 2**63 - 1


@transaction.atomic
def api_key_spend_limit_set(*, api_key: ApiKey, amount_usd: Decimal | None) -> SpendLimit | None:
    """Set the key's monthly spend limit (USD at list price) to `amount_usd`, or remove it
    (None). The row is changed in place, so the limit keeps its id and what the month has
    spent keeps counting against it. Takes effect on every server process within
    RECKON_AUTH_CACHE_SECONDS, like a change in the admin."""
    existing = (
        SpendLimit.objects.select_for_update()
        .filter(api_key=api_key, window=SpendLimit.Window.MONTH)
        .first()
    )
    if amount_usd is None:
        if existing is not None:
            existing.delete()
        return None
    if not amount_usd.is_finite() or not Decimal(0) <= amount_usd <= MAX_KEY_SPEND_LIMIT_USD:
        raise ApplicationError(
            f"A spend limit is an amount from 0 to {MAX_KEY_SPEND_LIMIT_USD} USD.",
            {"amount_usd": str(amount_usd)},
        )
    if amount_usd != amount_usd.quantize(Decimal("1e-12")):
        raise ApplicationError("A spend limit has at most 12 decimal places.")
    if existing is None:
        return SpendLimit.objects.create(
            tenant_id=api_key.tenant_id,
            api_key=api_key,
            window=SpendLimit.Window.MONTH,
            amount_usd=amount_usd,
        )
    existing.amount_usd = amount_usd
    existing.save(update_fields=["amount_usd"])
    return existing


def _check_tokens(value: int | None, what: str, high: int) -> None:
    if value is not None and not 1 <= value <= high:
        raise ApplicationError(f"{what} must be from 1 to {high}, or empty for none.")


@transaction.atomic
def reasoning_policy_set(
    *,
    api_key: ApiKey,
    allowed_efforts: list[str],
    default_max_output_tokens: int | None,
    max_output_tokens: int | None,
    mode: str,
    monthly_reasoning_tokens: int | None,
) -> ReasoningPolicy:
    """Set the key's reasoning policy (created if it has none): the efforts it may ask for
    (empty: any), the output-token default and cap per call, clamp or refuse, and its
    monthly reasoning-token budget. Efforts are kept in the governance order."""
    unknown = sorted(set(allowed_efforts) - set(EFFORTS))
    if unknown:
        raise ApplicationError(
            f"Unknown reasoning effort(s): {', '.join(unknown)}.", {"efforts": list(EFFORTS)}
        )
    if mode not in ReasoningPolicy.Mode.values:
        raise ApplicationError(
            f"Unknown mode {mode!r}.", {"modes": list(ReasoningPolicy.Mode.values)}
        )
    _check_tokens(default_max_output_tokens, "The default output tokens", MAX_POLICY_TOKENS)
    _check_tokens(max_output_tokens, "The output-token cap", MAX_POLICY_TOKENS)
    _check_tokens(
        monthly_reasoning_tokens, "The monthly reasoning tokens", MAX_POLICY_MONTHLY_TOKENS
    )
    if (
        default_max_output_tokens is not None
        and max_output_tokens is not None
        and default_max_output_tokens > max_output_tokens
    ):
        raise ApplicationError("The default output tokens may not exceed the cap.")
    policy, _ = ReasoningPolicy.objects.update_or_create(
        api_key=api_key,
        defaults={
            "allowed_efforts": [e for e in EFFORTS if e in allowed_efforts],
            "default_max_output_tokens": default_max_output_tokens,
            "max_output_tokens": max_output_tokens,
            "mode": mode,
            "monthly_reasoning_tokens": monthly_reasoning_tokens,
        },
    )
    return policy


@transaction.atomic
def reasoning_policy_clear(*, api_key: ApiKey) -> None:
    """Remove the key's reasoning policy: any effort, no cap, no key budget. Idempotent."""
    ReasoningPolicy.objects.filter(api_key=api_key).delete()


# The wire family of each provider: the targets of one alias all speak one, so a failover
# never changes the shape of the answer the client gets.
WIRE_FAMILY = {
    Route.Provider.OPENAI: "openai",
    Route.Provider.OPENAI_COMPATIBLE: "openai",
    Route.Provider.ANTHROPIC: "anthropic",
}
DEFAULT_TARGET = "default"
MAX_WEIGHT = 1_000_000
MAX_FIRST_BYTE_TIMEOUT_MS = 600_000  # the proxy's idle read timeout


def _alias_name(alias: str) -> str:
    name = alias.strip()
    if not name:
        raise ApplicationError("alias must not be empty.")
    if len(name) > 200:
        raise ApplicationError("alias is longer than 200 characters.")
    return name


def target_name_check(target: str) -> str:
    """A target name, stripped, or ApplicationError saying what a name may be."""
    return _target_name(target)


def _target_name(target: str) -> str:
    name = target.strip()
    if not name or len(name) > 100 or any(c.isspace() or c == "/" for c in name):
        raise ApplicationError(
            "A target name is 1 to 100 characters with no spaces or slashes (e.g. h100, mi300x)."
        )
    return name


def alias_target_get(*, alias: str, target: str | None = None) -> Route | None:
    """The target `route_set` without a name means: the named one (NotFound if absent), or
    the alias's only target (preferring its only active one), or None when it has none.
    Several active targets and no name is refused: the write would be ambiguous."""
    alias = _alias_name(alias)
    if target is not None:
        route = Route.objects.filter(alias_id=alias, name=_target_name(target)).first()
        if route is None:
            raise NotFound(f"Alias {alias!r} has no target {target.strip()!r}.")
        return route
    routes = list(Route.objects.filter(alias_id=alias).order_by("priority", "name"))
    active = [r for r in routes if r.is_active]
    if len(routes) == 1:
        return routes[0]
    if len(active) == 1:
        return active[0]
    if not routes:
        return None
    names = ", ".join(r.name for r in (active or routes))
    raise ApplicationError(
        f"Alias {alias!r} has several targets ({names}): name one with --target (target=)."
    )


def _check_number(value: int | None, what: str, low: int, high: int) -> None:
    if value is not None and (isinstance(value, bool) or not low <= value <= high):
        raise ApplicationError(f"{what} must be an integer from {low} to {high}.")


def route_wire_family_check(*, alias: str, provider: str, exclude_pk: int | None) -> None:
    """ApplicationError when an active target of `alias` other than `exclude_pk` speaks
    another wire family than `provider`."""
    _check_wire_family(alias=alias, provider=provider, exclude_pk=exclude_pk)


def wire_family(provider: str) -> str:
    return WIRE_FAMILY[Route.Provider(provider)]


def _check_wire_family(*, alias: str, provider: str, exclude_pk: int | None) -> None:
    others = Route.objects.filter(alias_id=alias, is_active=True)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    family = WIRE_FAMILY[Route.Provider(provider)]
    for other in others.only("name", "provider"):
        if WIRE_FAMILY[Route.Provider(other.provider)] != family:
            raise ApplicationError(
                f"Every target of an alias speaks one wire family: {alias!r}'s target "
                f"{other.name!r} is {other.provider}, which is not compatible with {provider}."
            )


@transaction.atomic
def route_set(
    *,
    alias: str,
    provider: str,
    base_url: str,
    upstream_model: str,
    api_key_env: str = "",
    accelerator: str = "",
    provider_account: str | None = None,
    upstream_key_id: str | None = None,
    target: str | None = None,
    weight: int | None = None,
    priority: int | None = None,
    max_concurrent: int | None = None,
    first_byte_timeout_ms: int | None = None,
) -> Route:
    """Create or update one target of an alias (idempotent on (alias, target)), and the
    alias when new.

    Without `target`, the alias's only target ("default" when the alias is new); an alias
    with several active targets is refused (name one). The base URL is normalized for the
    provider (`metering.routes.base_url_normalize`) or refused with a message saying what
    to write; `route_warnings` says what is still doubtful about the saved route. All
    targets of an alias speak one wire family. `provider_account` (an account name, or ''
    for none), `upstream_key_id`, `weight` and `priority` are left as they are when None;
    `max_concurrent` and `first_byte_timeout_ms` too, and 0 clears them (no limit)."""
    if provider not in Route.Provider.values:
        raise ApplicationError(
            f"provider must be one of {', '.join(Route.Provider.values)}; got {provider!r}."
        )
    alias = _alias_name(alias)
    if not upstream_model.strip():
        raise ApplicationError("alias and upstream model must not be empty.")
    if api_key_env and not api_key_env.replace("_", "").isalnum():
        raise ApplicationError("api_key_env must be an environment variable name.")
    _check_number(weight, "weight", 0, MAX_WEIGHT)
    _check_number(priority, "priority", -32768, 32767)
    _check_number(max_concurrent, "max_concurrent", 0, 2**31 - 1)
    _check_number(first_byte_timeout_ms, "first_byte_timeout_ms", 0, MAX_FIRST_BYTE_TIMEOUT_MS)
    values: dict[str, Any] = {
        "provider": provider,
        "base_url": base_url_normalize(provider=provider, base_url=base_url).url,
        "upstream_model": upstream_model.strip(),
        "api_key_env": api_key_env,
        "accelerator": accelerator,
        "is_active": True,
        **_route_account_fields(
            provider=provider, provider_account=provider_account, upstream_key_id=upstream_key_id
        ),
        **{
            name: value
            for name, value in (("weight", weight), ("priority", priority))
            if value is not None
        },
        **{
            name: value or None
            for name, value in (
                ("max_concurrent", max_concurrent),
                ("first_byte_timeout_ms", first_byte_timeout_ms),
            )
            if value is not None
        },
    }
    if target is None:
        existing = alias_target_get(alias=alias)
        name = existing.name if existing is not None else DEFAULT_TARGET
    else:
        name = _target_name(target)
        existing = Route.objects.filter(alias_id=alias, name=name).first()
    _check_wire_family(alias=alias, provider=provider, exclude_pk=existing.pk if existing else None)
    if existing is not None:
        route_key_history_seed(route_id=existing.pk)
    try:
        with transaction.atomic():
            alias_row, _ = Alias.objects.get_or_create(name=alias)
            route, _ = Route.objects.update_or_create(alias=alias_row, name=name, defaults=values)
    except IntegrityError as exc:  # a concurrent create of the same target
        raise Conflict(f"Route {alias!r} was changed concurrently; try again.") from exc
    route_key_period_record(route=route)
    return route


@transaction.atomic
def route_target_tune(
    *,
    alias: str,
    target: str | None = None,
    weight: int | None = None,
    priority: int | None = None,
    max_concurrent: int | None = None,
    first_byte_timeout_ms: int | None = None,
) -> Route:
    """Change only an existing target's routing fields (None: as it is; 0 clears
    `max_concurrent` and `first_byte_timeout_ms`). Without `target`, the alias's only one."""
    _check_number(weight, "weight", 0, MAX_WEIGHT)
    _check_number(priority, "priority", -32768, 32767)
    _check_number(max_concurrent, "max_concurrent", 0, 2**31 - 1)
    _check_number(first_byte_timeout_ms, "first_byte_timeout_ms", 0, MAX_FIRST_BYTE_TIMEOUT_MS)
    found = alias_target_get(alias=alias, target=target)
    if found is None:
        raise NotFound(f"No route {alias!r}.")
    route = Route.objects.select_for_update().get(pk=found.pk)
    fields: dict[str, Any] = {
        name: value
        for name, value in (("weight", weight), ("priority", priority))
        if value is not None
    }
    fields.update(
        (name, value or None)
        for name, value in (
            ("max_concurrent", max_concurrent),
            ("first_byte_timeout_ms", first_byte_timeout_ms),
        )
        if value is not None
    )
    changed = {k: v for k, v in fields.items() if getattr(route, k) != v}
    for name, value in changed.items():
        setattr(route, name, value)
    if changed:
        route.save(update_fields=[*changed, "updated_at"])
    return route


@transaction.atomic
def route_target_remove(*, alias: str, target: str) -> Route:
    """Deactivate one target of an alias (idempotent). Never the alias's last active
    target (deactivate the alias instead: `alias_set(is_active=False)`), nor one its
    `effort` rules send calls to."""
    alias = _alias_name(alias)
    Alias.objects.select_for_update().filter(name=alias).first()  # one remover at a time
    route = alias_target_get(alias=alias, target=target)
    if route is None:  # unreachable: a named target is found or NotFound is raised
        raise NotFound(f"Alias {alias!r} has no target {target!r}.")
    if not route.is_active:
        return route
    route_target_leave_check(route=route, deactivating=True)
    route.is_active = False
    route.save(update_fields=["is_active", "updated_at"])
    return route


def route_target_leave_check(*, route: Route, deactivating: bool) -> None:
    """ApplicationError when the saved, active `route` may not stop being an active target
    named `route.name` of its alias: when it is the last active one (`deactivating`, or
    moving to another alias), or when the alias's effort rules send calls to that name."""
    alias = Alias.objects.filter(name=route.alias_id).first()
    if alias is None or not route.is_active:
        return
    others = Route.objects.filter(alias_id=alias.name, is_active=True).exclude(pk=route.pk)
    if deactivating and not others.exists():
        raise ApplicationError(
            f"{route.name!r} is the last active target of {alias.name!r}: add another first, "
            f"or deactivate the alias (alias_set {alias.name} --inactive)."
        )
    if alias.policy == Alias.Policy.EFFORT:
        named = [r.name for r in _stored_rules(alias) if r.target == route.name]
        if named and not others.filter(name=route.name).exists():
            raise ApplicationError(
                f"Rule(s) {', '.join(map(repr, named))} of {alias.name!r} send calls to "
                f"{route.name!r}: change the rules first (alias_set --rules-file)."
            )


def _stored_rules(alias: Alias) -> tuple[EffortRule, ...]:
    try:
        return parse_rules(alias.rules)
    except ValueError:
        return ()


@transaction.atomic
def alias_set(
    *,
    name: str,
    policy: str | None = None,
    rules: Any = None,
    max_attempts: int | None = None,
    is_active: bool | None = None,
) -> Alias:
    """Create or update an alias's routing (idempotent; None leaves a field as it is).

    `rules` (a JSON list, `metering.routing.rules`) belong to the `effort` policy and must
    name active targets of the alias; `max_attempts` is 1 (no failover) to 4."""
    name = _alias_name(name)
    if policy is not None and policy not in Alias.Policy.values:
        raise ApplicationError(
            f"policy must be one of {', '.join(Alias.Policy.values)}; got {policy!r}."
        )
    _check_number(max_attempts, "max_attempts", 1, 4)
    parsed: tuple[EffortRule, ...] | None = None
    if rules is not None:
        try:
            parsed = parse_rules(rules)
        except ValueError as exc:
            raise ApplicationError(f"Invalid rules: {exc}") from exc
    try:
        with transaction.atomic():
            alias, _ = Alias.objects.get_or_create(name=name)
    except IntegrityError as exc:  # a concurrent create of the same alias
        raise Conflict(f"Alias {name!r} was changed concurrently; try again.") from exc
    alias = Alias.objects.select_for_update().get(pk=alias.pk)
    final_policy = policy if policy is not None else alias.policy
    final_rules = parsed if parsed is not None else _stored_rules(alias)
    if final_rules and final_policy != Alias.Policy.EFFORT:
        raise ApplicationError(
            f"Rules apply to the effort policy only; {name!r} routes by {final_policy} "
            "(pass --policy effort, or an empty rules list [] to clear them)."
        )
    if parsed is not None:
        targets = Route.objects.filter(alias_id=name, is_active=True).values_list("name", flat=True)
        unknown = rules_unknown_targets(parsed, targets)
        if unknown:
            raise ApplicationError(
                f"Rules name target(s) {', '.join(map(repr, unknown))} that {name!r} has no "
                "active target by (add them first with route_set --target)."
            )
    changed = {
        field: value
        for field, value in (
            ("policy", policy),
            ("rules", None if parsed is None else rules_as_json(parsed)),
            ("max_attempts", max_attempts),
            ("is_active", is_active),
        )
        if value is not None and getattr(alias, field) != value
    }
    for field, value in changed.items():
        setattr(alias, field, value)
    if changed:
        alias.save(update_fields=[*changed, "updated_at"])
    return alias


def alias_warnings(*, alias: Alias) -> list[str]:
    """What an operator should hear about an alias's routing (it is saved, not refused)."""
    warnings: list[str] = []
    active = list(Route.objects.filter(alias_id=alias.name, is_active=True))
    if not active:
        warnings.append(f"{alias.name!r} has no active target yet: add one with route_set.")
    if not alias.is_active:
        warnings.append(f"{alias.name!r} is inactive: every call to it gets model_not_found.")
    names = {r.name for r in active}
    if alias.policy == Alias.Policy.EFFORT and active and DEFAULT_TARGET not in names:
        warnings.append(
            f"{alias.name!r} routes by effort but has no target named {DEFAULT_TARGET!r}: "
            "calls no rule matches go to its first target by priority."
        )
    if alias.policy == Alias.Policy.WEIGHTED and active and not any(r.weight for r in active):
        warnings.append(f"Every target of {alias.name!r} has weight 0.")
    if len(active) > 1 and alias.max_attempts == 1:
        warnings.append(f"{alias.name!r} has several targets but max_attempts 1: no failover.")
    return warnings


def _route_account_fields(
    *, provider: str, provider_account: str | None, upstream_key_id: str | None
) -> dict[str, Any]:
    """The route's provider account (by name; '' clears it) and upstream key id, checked;
    only the ones given."""
    fields: dict[str, Any] = {}
    if provider_account is not None:
        if not provider_account.strip():
            fields["provider_account"] = None
        else:
            account = provider_account_get(name=provider_account)
            routes_provider_check(
                account_name=account.name,
                account_provider=account.provider,
                route_providers=[provider],
            )
            fields["provider_account"] = account
    if upstream_key_id is not None:
        key_id = upstream_key_id.strip()
        if len(key_id) > 200 or any(c.isspace() for c in key_id):
            raise ApplicationError(
                "upstream_key_id is the provider's id of the key (e.g. key_... or "
                "apikey_...), not the key itself: at most 200 characters, no spaces."
            )
        fields["upstream_key_id"] = key_id
    return fields


@transaction.atomic
def route_provider_account_set(
    *,
    alias: str,
    provider_account: str | None,
    upstream_key_id: str | None,
    target: str | None = None,
) -> Route:
    """Set (or clear, with '') an existing target's provider account and upstream key id;
    None leaves a field as it is. Without `target`, the alias's only target."""
    found = alias_target_get(alias=alias, target=target)
    route = None if found is None else Route.objects.select_for_update().get(pk=found.pk)
    if route is None:
        raise NotFound(f"No route {alias!r}.")
    fields = _route_account_fields(
        provider=route.provider, provider_account=provider_account, upstream_key_id=upstream_key_id
    )
    route_key_history_seed(route_id=route.pk)
    for name, value in fields.items():
        setattr(route, name, value)
    if fields:
        route.save(update_fields=[*fields, "updated_at"])
    route_key_period_record(route=route)
    return route


@transaction.atomic
def route_key_period_record(*, route: Route, now: datetime | None = None) -> None:
    """Record the provider account and upstream key id `route` declares (as saved) from
    `now` on (`UpstreamKeyPeriod`): with `route_key_history_seed`, the one writer of the
    history reconciliation reads. Call the seed before changing a saved route, this after.

    Idempotent: when the open period already says the same, nothing is written. Otherwise
    the open period ends at `now` and the next opens there; a route with neither account
    nor key gets no new period. A route with no history at all (a new route) opens its
    first period at the beginning of time (valid_from NULL): nothing was served on it
    under another key."""
    at = now or timezone.now()
    Route.objects.select_for_update().filter(pk=route.pk).first()
    current = UpstreamKeyPeriod.objects.filter(route=route, valid_until=None).first()
    wanted = (route.provider_account_id, route.upstream_key_id)
    if current is not None and (current.provider_account_id, current.upstream_key_id) == wanted:
        return
    has_history = current is not None or UpstreamKeyPeriod.objects.filter(route=route).exists()
    if current is not None:
        if current.valid_from is not None and current.valid_from >= at:
            current.delete()  # superseded at the instant it began: nothing was served on it
        else:
            current.valid_until = at
            current.save(update_fields=["valid_until"])
    if wanted == (None, ""):
        return
    UpstreamKeyPeriod.objects.create(
        route=route,
        provider_account_id=route.provider_account_id,
        upstream_key_id=route.upstream_key_id,
        valid_from=at if has_history else None,
    )


def route_key_history_seed(*, route_id: int) -> None:
    """Before a saved route changes: a route with no key history (made before it existed,
    or written without these services) gets one open period from the beginning of time
    with what it declares now, so the change that follows closes it instead of erasing
    it. The rule migration 0020 applies."""
    if UpstreamKeyPeriod.objects.filter(route_id=route_id).exists():
        return
    row = Route.objects.filter(pk=route_id).values("provider_account_id", "upstream_key_id").first()
    if row is None or (row["provider_account_id"] is None and not row["upstream_key_id"]):
        return
    UpstreamKeyPeriod.objects.create(route_id=route_id, valid_from=None, **row)


def route_warnings(*, route: Route) -> list[str]:
    """What an operator should hear about a saved route: a doubtful base URL (or one saved
    before normalization existed), and no tenant allowed to use it (then every key gets
    404 model_not_found for its alias)."""
    warnings: list[str] = []
    try:
        normalized = base_url_normalize(provider=route.provider, base_url=route.base_url)
    except ApplicationError as exc:
        warnings.append(f"The saved base URL cannot work: {exc.message}")
    else:
        warnings += normalized.warnings
        if normalized.url != route.base_url:
            warnings.append(
                f"The saved base URL {route.base_url} was stored before base URLs were "
                f"normalized: save the route again (route_set or the admin) to store "
                f"{normalized.url}."
            )
    if not Tenant.objects.filter(allowed_aliases__name=route.alias_id, is_active=True).exists():
        warnings.append(route_unreachable_warning(route.alias_id))
    return warnings


@transaction.atomic
def tenant_allow_routes(*, tenant: Tenant, aliases: list[str]) -> None:
    """Grant `tenant` the aliases (every target of each; idempotent)."""
    aliases = [str(a) for a in aliases]  # an Alias row names itself
    found = list(Alias.objects.filter(name__in=aliases))
    missing = sorted(set(aliases) - {a.name for a in found})
    if missing:
        raise NotFound(f"Unknown route alias(es): {', '.join(missing)}.")
    tenant.allowed_aliases.add(*found)


@transaction.atomic
def tenant_revoke_routes(*, tenant: Tenant, aliases: list[str]) -> None:
    """Take the aliases back from `tenant` (idempotent; unknown names are refused)."""
    found = list(Alias.objects.filter(name__in=aliases))
    missing = sorted(set(aliases) - {a.name for a in found})
    if missing:
        raise NotFound(f"Unknown route alias(es): {', '.join(missing)}.")
    tenant.allowed_aliases.remove(*found)


@transaction.atomic
def serving_cost_rate_create(
    *,
    alias: str,
    accelerator: str,
    effective_from: datetime,
    rates: Rates,
    source: dict[str, Any],
    route_id: int | None = None,
) -> ServingCostRate:
    """Add the rate the proxy stamps on `alias`'s records from `effective_from` on: USD per
    1M tokens of each class (`rates`, stored exactly as given), with `source` (the billing
    ids and inputs it was computed from) kept for audit. `route_id`: the target it is for
    (None: alias-wide, as published before routing; it counts for a target of the alias
    only while that target has no rate of its own in force, and only on the same
    accelerator: see `selectors.current_cost_rates`)."""
    return ServingCostRate.objects.create(
        alias=alias,
        route_id=route_id,
        accelerator=accelerator,
        effective_from=effective_from,
        **{COST_RATE_FIELDS[token_class]: cost for token_class, cost in rates._asdict().items()},
        source=source,
    )
