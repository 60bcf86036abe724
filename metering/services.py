"""Writes on tenants, API keys, routes and serving cost rates (the ledger's writes live in
metering.ledger).

Invariants: a raw API key is returned once, by `api_key_create`, and never stored (only
its digest and visible prefix); revoking is idempotent; a route is unique per alias and
its base URL is stored normalized (`metering.routes`); a serving cost rate is only ever
added, never edited (billing publishes one per cost basis x deployment change).
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from config.errors import ApplicationError, Conflict, NotFound
from metering.keys import api_key_generate, api_key_hash, api_key_visible_prefix
from metering.ledger.record import Rates
from metering.models import Alias, ApiKey, Route, ServingCostRate, Tenant, UpstreamKeyPeriod
from metering.providers.accounts import provider_account_get, routes_provider_check
from metering.routes import base_url_normalize, route_unreachable_warning
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


@transaction.atomic
def api_key_create(
    *, tenant: Tenant, name: str = "", expires_at: datetime | None = None
) -> CreatedApiKey:
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("expires_at must be in the future.")
    raw_key = api_key_generate()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=api_key_visible_prefix(raw_key),
        key_hash=api_key_hash(raw_key),
        expires_at=expires_at,
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key. Idempotent: revoking twice keeps the first revocation time."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


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
) -> Route:
    """Create or update the route for an alias (idempotent on the alias).

    The base URL is normalized for the provider (`metering.routes.base_url_normalize`) or
    refused with a message saying what to write; `route_warnings` says what is still
    doubtful about the saved route. `provider_account` (an account name, or '' for none)
    and `upstream_key_id` are left as they are when None."""
    if provider not in Route.Provider.values:
        raise ApplicationError(
            f"provider must be one of {', '.join(Route.Provider.values)}; got {provider!r}."
        )
    if not alias.strip() or not upstream_model.strip():
        raise ApplicationError("alias and upstream model must not be empty.")
    if api_key_env and not api_key_env.replace("_", "").isalnum():
        raise ApplicationError("api_key_env must be an environment variable name.")
    values = {
        "provider": provider,
        "base_url": base_url_normalize(provider=provider, base_url=base_url).url,
        "upstream_model": upstream_model.strip(),
        "api_key_env": api_key_env,
        "accelerator": accelerator,
        "is_active": True,
        **_route_account_fields(
            provider=provider, provider_account=provider_account, upstream_key_id=upstream_key_id
        ),
    }
    existing = Route.objects.filter(alias_id=alias.strip()).values_list("pk", flat=True).first()
    if existing is not None:
        route_key_history_seed(route_id=existing)
    try:
        with transaction.atomic():
            alias_row, _ = Alias.objects.get_or_create(name=alias.strip())
            route, _ = Route.objects.update_or_create(alias=alias_row, defaults=values)
    except IntegrityError as exc:  # a concurrent create of the same alias
        raise Conflict(f"Route {alias!r} was changed concurrently; try again.") from exc
    route_key_period_record(route=route)
    return route


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
    *, alias: str, provider_account: str | None, upstream_key_id: str | None
) -> Route:
    """Set (or clear, with '') an existing route's provider account and upstream key id;
    None leaves a field as it is."""
    route = Route.objects.select_for_update().filter(alias_id=alias.strip()).first()
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
    found = list(Alias.objects.filter(name__in=aliases))
    missing = sorted(set(aliases) - {a.name for a in found})
    if missing:
        raise NotFound(f"Unknown route alias(es): {', '.join(missing)}.")
    tenant.allowed_aliases.add(*found)


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
    (None: every target of the alias that has no rate of its own)."""
    return ServingCostRate.objects.create(
        alias=alias,
        route_id=route_id,
        accelerator=accelerator,
        effective_from=effective_from,
        **{COST_RATE_FIELDS[token_class]: cost for token_class, cost in rates._asdict().items()},
        source=source,
    )
