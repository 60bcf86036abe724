"""Provider accounts: the organizations whose admin APIs report usage and cost.

Invariants:
- credentials are never stored or shown: an account names the environment variable that
  holds its admin key (`admin_key_env`), and nothing here reads that variable's value;
- `admin_base_url` is blank (the provider's own) or an http(s) URL without credentials,
  query or fragment, stored without a trailing slash; it includes the version segment;
- `provider_account_set` is idempotent on the name: the same arguments leave the same row.
- routes point only at an account of their own provider (`routes_provider_check`), whoever
  changes the route or the account (command, admin).
"""

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction

from config.errors import ApplicationError, Conflict, NotFound
from metering.models import ProviderAccount
from metering.providers import anthropic_reports, openai_reports

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_BASE_URLS = {
    ProviderAccount.Provider.OPENAI: openai_reports.DEFAULT_BASE_URL,
    ProviderAccount.Provider.ANTHROPIC: anthropic_reports.DEFAULT_BASE_URL,
}


def admin_key_env_validate(value: str) -> str:
    """The variable's name, or an error that does not repeat what was given (a value
    pasted by mistake may be the key itself)."""
    name = value.strip()
    if not ENV_NAME.match(name):
        raise ApplicationError(
            "The admin key must be given as the NAME of an environment variable (letters, "
            "digits and underscores, not starting with a digit), never as the key itself."
        )
    return name


def admin_base_url_validate(value: str) -> str:
    """'' (the provider's default) or a clean http(s) URL without a trailing slash."""
    url = value.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApplicationError(
            "The admin base URL must be an http(s) URL such as https://api.openai.com/v1."
        )
    if parts.username or parts.password:
        raise ApplicationError(
            "The admin base URL must not hold credentials; name the key's environment "
            "variable with --admin-key-env."
        )
    if parts.query or parts.fragment:
        raise ApplicationError("The admin base URL must not have a query or a fragment.")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ApplicationError("The admin base URL has an invalid port.") from None
    return url.rstrip("/")


def model_map_validate(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ApplicationError("The model map must map report model names to upstream models.")
    cleaned: dict[str, str] = {}
    for report_name, upstream in value.items():
        if not isinstance(report_name, str) or not isinstance(upstream, str):
            raise ApplicationError("The model map's names must be strings.")
        if not report_name.strip() or not upstream.strip():
            raise ApplicationError("The model map's names must not be empty.")
        cleaned[report_name.strip()] = upstream.strip()
    return cleaned


def routes_provider_check(
    *, account_name: str, account_provider: str, route_providers: Iterable[str]
) -> None:
    """Routes belong to an account of their own provider: refuse (Conflict) when any of
    `route_providers` is not `account_provider`. The one check behind `route_set` (a route
    joining an account), `provider_account_set` and the admin (an account changing its
    provider while routes point at it)."""
    others = sorted({p for p in route_providers if p != account_provider})
    if others:
        raise Conflict(
            f"Account {account_name!r} is {account_provider}; {', '.join(others)} routes "
            "cannot belong to it (an account's routes are of its own provider)."
        )


def account_provider_change_check(*, account: ProviderAccount, provider: str) -> None:
    """`account` (saved or not) may take `provider`: no route of another provider points
    at it (see `routes_provider_check`)."""
    if account.pk is None:
        return
    routes = account.routes.values_list("provider", flat=True).distinct()
    routes_provider_check(
        account_name=account.name, account_provider=provider, route_providers=routes
    )


def admin_base_url(account: ProviderAccount) -> str:
    """The URL the importer calls: the account's own or the provider's default."""
    return account.admin_base_url or DEFAULT_BASE_URLS[ProviderAccount.Provider(account.provider)]


@transaction.atomic
def provider_account_set(
    *,
    name: str,
    provider: str,
    admin_key_env: str,
    admin_base_url: str = "",
    model_map: dict[str, str] | None = None,
    is_active: bool = True,
) -> ProviderAccount:
    """Create or update the account called `name` (idempotent on the name)."""
    name = name.strip()
    if not ACCOUNT_NAME.match(name):
        raise ApplicationError(
            "An account name is 1-100 letters, digits, dots, dashes or underscores."
        )
    if provider not in ProviderAccount.Provider.values:
        raise ApplicationError(
            f"provider must be one of {', '.join(ProviderAccount.Provider.values)}; "
            f"got {provider!r}."
        )
    values = {
        "provider": provider,
        "admin_key_env": admin_key_env_validate(admin_key_env),
        "admin_base_url": admin_base_url_validate(admin_base_url),
        "model_map": model_map_validate(model_map or {}),
        "is_active": is_active,
    }
    existing = ProviderAccount.objects.select_for_update().filter(name=name).first()
    if existing is not None:
        account_provider_change_check(account=existing, provider=provider)
    try:
        account, _ = ProviderAccount.objects.update_or_create(name=name, defaults=values)
    except IntegrityError as exc:  # a concurrent create of the same name
        raise Conflict(f"Account {name!r} was changed concurrently; try again.") from exc
    return account


def provider_account_get(*, name: str) -> ProviderAccount:
    account = ProviderAccount.objects.filter(name=name.strip()).first()
    if account is None:
        raise NotFound(f"No provider account {name!r} (create it with provider_account_set).")
    return account
