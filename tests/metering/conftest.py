"""Shared by the provider-report and reconciliation tests: the `reasoner` route that
forwards to gpt-r on an OpenAI provider account, and usage served through it."""

from datetime import datetime
from typing import Any

from metering.models import Alias, ProviderAccount, Route
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage


def reasoner_route(account: ProviderAccount, *, upstream_key_id: str = "key_a") -> Route:
    """The `reasoner` alias forwarding to gpt-r on `account` with the upstream key
    `upstream_key_id` ('' = not known)."""
    return Route.objects.create(
        alias=Alias.objects.get_or_create(name="reasoner")[0],
        provider="openai",
        base_url="https://api.openai.com/v1",
        upstream_model="gpt-r",
        provider_account=account,
        upstream_key_id=upstream_key_id,
    )


def reasoner_served(account: ProviderAccount, at: datetime, **tokens: Any) -> None:
    """The `reasoner` route on `account`, and one record it served at `at` (a new tenant's
    key) with `tokens`."""
    reasoner_route(account)
    write_usage(
        ApiKeyFactory(),
        at,
        alias="reasoner",
        upstream_model="gpt-r",
        provider_account_id=account.pk,
        **tokens,
    )
