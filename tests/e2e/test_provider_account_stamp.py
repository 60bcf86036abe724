"""Calls through a real server carry their route's provider account as served: a route on
an account stamps it, a route on none stamps nothing, and a route moved to another
account mid-day counts on each account for its own calls (two rollup keys), which is
what reconciliation's side of the ledger (`forwarded_usage`) reads back."""

from datetime import UTC, datetime, timedelta

import anthropic
import openai
import pytest
from django.db.models import Sum

from metering.models import ProviderAccount, Route, UsageRecord, UsageRollup
from metering.reconcile.ours import forwarded_usage
from metering.usage import LEDGER_COLUMNS
from tests.e2e.conftest import E2ETenant
from tests.e2e.test_proxy_failures import PROMPT, wait_for
from tests.usage_helpers import rollups_vs_raw_scan

pytestmark = pytest.mark.e2e


def account(name: str, provider: str = "openai") -> ProviderAccount:
    return ProviderAccount.objects.create(name=name, provider=provider, admin_key_env="ADMIN_KEY")


def test_records_carry_the_route_s_provider_account_as_served(e2e: E2ETenant) -> None:
    first, second = account("org-a"), account("org-b")
    Route.objects.filter(alias="reasoner").update(provider_account=first)
    client = openai.OpenAI(base_url=e2e.openai_base, api_key=e2e.raw_key, max_retries=0)
    usage = client.chat.completions.create(
        model="reasoner", messages=PROMPT, reasoning_effort="low"
    ).usage
    assert usage is not None
    with anthropic.Anthropic(base_url=e2e.reckon_url, api_key=e2e.raw_key, max_retries=0) as a:
        a.messages.create(model="thinker", max_tokens=200, messages=PROMPT)
    records = UsageRecord.objects.filter(tenant=e2e.tenant)
    wait_for(lambda: records.count() == 2)
    assert dict(records.values_list("alias", "provider_account_id")) == {
        "reasoner": first.pk,
        "thinker": None,
    }
    # the route moves to another account: the proxy takes it up within its cache time
    Route.objects.filter(alias="reasoner").update(provider_account=second)

    def moved() -> bool:
        client.chat.completions.create(model="reasoner", messages=PROMPT)
        return records.filter(provider_account_id=second.pk).exists()

    wait_for(moved)
    reasoner = records.filter(alias="reasoner")
    wait_for(lambda: reasoner.count() == records.count() - 1)  # every call recorded
    rollups_vs_raw_scan()
    rolled = UsageRollup.objects.filter(tenant=e2e.tenant)
    assert set(rolled.filter(alias="reasoner").values_list("provider_account_id", flat=True)) == {
        first.pk,
        second.pk,
    }
    assert set(rolled.filter(alias="thinker").values_list("provider_account_id", flat=True)) == {0}
    # reconciliation's side: per account, exactly that account's calls
    today = datetime.now(UTC).date()
    window = {"start": today - timedelta(days=1), "end": today + timedelta(days=1)}
    for acct in (first, second):
        forwarded = forwarded_usage(account_id=acct.pk, **window)
        assert {(r.tenant_id, r.alias, r.upstream_model) for r in forwarded} == {
            (e2e.tenant.pk, "reasoner", "sim-reasoner")
        }
        mine = reasoner.filter(provider_account_id=acct.pk)
        totals = mine.aggregate(**{name: Sum(name) for name in LEDGER_COLUMNS})
        assert sum(r.requests for r in forwarded) == mine.count()
        for name in LEDGER_COLUMNS:
            assert sum(getattr(r, name) for r in forwarded) == totals[name], name
    # the first call's record holds what its SDK saw
    stored = reasoner.order_by("started_at").first()
    assert stored is not None and stored.provider_account_id == first.pk
    details = usage.completion_tokens_details
    reasoning = details.reasoning_tokens if details and details.reasoning_tokens else 0
    cached = (
        usage.prompt_tokens_details.cached_tokens
        if usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens
        else 0
    )
    assert (stored.input_tokens, stored.cached_input_tokens) == (
        usage.prompt_tokens - cached,
        cached,
    )
    assert (stored.output_tokens, stored.reasoning_tokens) == (
        usage.completion_tokens - reasoning,
        reasoning,
    )
    assert reasoning > 0
