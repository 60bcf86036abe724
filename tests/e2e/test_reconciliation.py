"""Reconciliation end to end: the official SDKs call a real Reckon server on loopback, the
simulator serves them and logs what it served, the fake admin APIs report that log as
OpenAI's and Anthropic's usage reports, and the hourly sync (import, then reconcile) turns
it into rows. The day is pending while it settles; the runs four days later write it final.

Scenarios: everything matches to the token; a report that drops reasoning; usage billed on
a key no route declares (missing in ledger, billing told every run); a late bucket revision;
a cut stream and a client disconnect, counted in `explain`."""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import anthropic
import openai
import pytest

from billing.models import Alert
from billing.reconciliation_alerts import reconciliation_rows_changed
from metering.models import (
    ProviderAccount,
    ProviderBucketRevision,
    ReconciliationRow,
    Route,
    UsageRecord,
)
from metering.reconcile import hooks
from metering.reconcile.sync import provider_account_sync
from metering.services import route_set, tenant_allow_routes
from metering.tasks import provider_reports_sync
from tests.e2e.conftest import SIM_KEY_ENV, E2ETenant
from tests.e2e.test_proxy_failures import PROMPT, _read_then_disconnect, wait_for
from tests.fakes.provider_admin import FakeProviderAdmin, ServedEvent, events_from_simulator

pytestmark = pytest.mark.e2e

OA_ADMIN, AN_ADMIN = "sk-admin-e2e-openai", "sk-ant-admin-e2e"
OA_KEY, AN_KEY = "key_reckon_openai", "apikey_reckon_anthropic"
# What the simulator serves under each provider's report.
OPENAI_MODELS = {"sim-reasoner", "sim-cut-stream"}
ANTHROPIC_MODELS = {"sim-thinker"}
# Long enough for the simulator's prompt caches (1024 tokens at 4 characters a token).
LONG = "The history of the prime number theorem, told slowly. " * 100


@dataclass
class World:
    e2e: E2ETenant
    slow_url: str
    oa: ProviderAccount
    an: ProviderAccount
    oa_fake: FakeProviderAdmin
    an_fake: FakeProviderAdmin
    told: list[tuple[int, list[date]]]
    calls: int = 0

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.e2e.openai_base, api_key=self.e2e.raw_key, max_retries=0)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.e2e.reckon_url, api_key=self.e2e.raw_key, max_retries=0
        )

    def recorded(self) -> None:
        """Every call so far is in the ledger (the server commits in groups)."""
        wait_for(lambda: UsageRecord.objects.count() >= self.calls, timeout=30)

    def report(self) -> None:
        """The fakes report exactly what the simulators served."""

        def served(key_id: str, models: set[str]) -> list[ServedEvent]:
            return [
                event
                for url in (self.e2e.simulator_url, self.slow_url)
                for event in events_from_simulator(url, key_ids={"sim-test-key": key_id})
                if event.model in models
            ]

        self.oa_fake.events = served(OA_KEY, OPENAI_MODELS)
        self.an_fake.events = served(AN_KEY, ANTHROPIC_MODELS)

    def rows(self, account: ProviderAccount) -> dict[tuple[str, str, str], ReconciliationRow]:
        return {
            (r.upstream_model, r.api_key_id, r.token_class): r
            for r in ReconciliationRow.objects.filter(account=account, day=today())
        }


def today() -> date:
    return datetime.now(UTC).date()


def settled_moment() -> datetime:
    """A run four days on: today has left the settling window."""
    return datetime.now(UTC) + timedelta(days=4, hours=1)


@pytest.fixture
def world(e2e: E2ETenant, slow_simulator_url, monkeypatch, settings) -> Iterator[World]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("E2E_OA_ADMIN", OA_ADMIN)
    monkeypatch.setenv("E2E_AN_ADMIN", AN_ADMIN)
    settings.RECKON_PROVIDER_RETRY_BASE_SECONDS = 0.01
    told: list[tuple[int, list[date]]] = []
    monkeypatch.setattr(hooks, "_handlers", [lambda account, days: told.append((account, days))])
    with (
        FakeProviderAdmin("openai", admin_key=OA_ADMIN) as oa_fake,
        FakeProviderAdmin("anthropic", admin_key=AN_ADMIN) as an_fake,
    ):
        oa = ProviderAccount.objects.create(
            name="oa", provider="openai", admin_key_env="E2E_OA_ADMIN", admin_base_url=oa_fake.url
        )
        an = ProviderAccount.objects.create(
            name="an",
            provider="anthropic",
            admin_key_env="E2E_AN_ADMIN",
            admin_base_url=an_fake.url,
        )
        for alias, model in (("cutter", "sim-cut-stream"), ("slow-cutter", "sim-cut-stream")):
            base = slow_simulator_url if alias.startswith("slow") else e2e.simulator_url
            route_set(
                alias=alias,
                provider="openai",
                base_url=base + "/v1",
                upstream_model=model,
                api_key_env=SIM_KEY_ENV,
            )
        tenant_allow_routes(tenant=e2e.tenant, aliases=["cutter", "slow-cutter"])
        Route.objects.filter(
            alias__in=["reasoner", "slow-reasoner", "cutter", "slow-cutter"]
        ).update(provider_account=oa, upstream_key_id=OA_KEY)
        Route.objects.filter(alias__in=["thinker", "slow-thinker"]).update(
            provider_account=an, upstream_key_id=AN_KEY
        )
        time.sleep(1)  # past the server's route cache (RECKON_AUTH_CACHE_SECONDS 0.5)
        yield World(e2e, slow_simulator_url, oa, an, oa_fake, an_fake, told)


def serve_matching_traffic(world: World) -> None:
    client = world.openai()
    client.chat.completions.create(model="reasoner", messages=PROMPT, reasoning_effort="high")
    client.chat.completions.create(
        model="reasoner",
        messages=[{"role": "system", "content": LONG}, *PROMPT],
        reasoning_effort="low",
    )
    list(
        client.chat.completions.create(
            model="reasoner",
            messages=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    client.responses.create(model="reasoner", input="Plan a trip.", reasoning={"effort": "medium"})
    with world.anthropic() as claude:
        claude.messages.create(
            model="thinker",
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=PROMPT,
        )
        for n in range(4):  # cached system prompts: some read, some written
            claude.messages.create(
                model="thinker",
                max_tokens=500,
                system=[
                    {
                        "type": "text",
                        "text": f"{n} {LONG}",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
                messages=PROMPT,
            )
    world.calls += 9
    world.recorded()


def sync(world: World, account: ProviderAccount, at: datetime | None = None):  # type: ignore[no-untyped-def]
    return provider_account_sync(account=account, now=at or datetime.now(UTC))


def test_everything_matches_to_the_token(world: World) -> None:
    serve_matching_traffic(world)
    world.report()
    for account in (world.oa, world.an):
        sync(world, account)
        assert {r.status for r in world.rows(account).values()} <= {"pending", "not_compared"}
    # the beat's task four days on writes the day final
    for account in (world.oa, world.an):
        provider_reports_sync.delay(account.pk, settled_moment().isoformat())
    oa_rows, an_rows = world.rows(world.oa), world.rows(world.an)
    assert {k: r.status for k, r in oa_rows.items()} == {
        ("sim-reasoner", OA_KEY, "requests"): "matched",
        ("sim-reasoner", OA_KEY, "input_uncached"): "matched",
        ("sim-reasoner", OA_KEY, "cache_read"): "matched",
        ("sim-reasoner", OA_KEY, "cache_write"): "not_compared",
        ("sim-reasoner", OA_KEY, "output"): "matched",
    }
    assert {k: r.status for k, r in an_rows.items()} == {
        ("sim-thinker", AN_KEY, "requests"): "not_compared",
        ("sim-thinker", AN_KEY, "input_uncached"): "matched",
        ("sim-thinker", AN_KEY, "cache_read"): "matched",
        ("sim-thinker", AN_KEY, "cache_write"): "matched",
        ("sim-thinker", AN_KEY, "output"): "matched",
    }
    # to the token: every compared row's drift is 0, and the figures are the ledger's
    records = UsageRecord.objects.filter(alias__in=["reasoner", "thinker"])
    for account, model in ((world.oa, "sim-reasoner"), (world.an, "sim-thinker")):
        mine = [r for r in records if r.upstream_model == model]
        rows = world.rows(account)
        output = rows[(model, OA_KEY if account == world.oa else AN_KEY, "output")]
        assert output.drift == 0 and output.theirs == sum(
            r.output_tokens + r.reasoning_tokens for r in mine
        )
        assert output.reasoning == sum(r.reasoning_tokens for r in mine) > 0
    assert oa_rows[("sim-reasoner", OA_KEY, "requests")].ours == 4
    assert oa_rows[("sim-reasoner", OA_KEY, "cache_read")].theirs > 0
    cache = an_rows[("sim-thinker", AN_KEY, "cache_read")].ours
    assert cache + an_rows[("sim-thinker", AN_KEY, "cache_write")].ours > 0


def test_a_report_that_drops_reasoning_drifts_by_exactly_the_reasoning(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # billing's alert handler hears the rows too (the world's recorder alone fires none)
    monkeypatch.setattr(hooks, "_handlers", [*hooks._handlers, reconciliation_rows_changed])
    serve_matching_traffic(world)
    world.report()
    world.oa_fake.drop_reasoning = True
    world.an_fake.drop_reasoning = True
    for account in (world.oa, world.an):
        sync(world, account)
        sync(world, account, settled_moment())
    for account, model, key in (
        (world.oa, "sim-reasoner", OA_KEY),
        (world.an, "sim-thinker", AN_KEY),
    ):
        rows = world.rows(account)
        output = rows[(model, key, "output")]
        assert output.status == "drift" and output.drift == -output.reasoning < 0
        assert output.drift_equals_reasoning
        assert rows[(model, key, "input_uncached")].status == "matched"
        # the settled drift (negative: the report is short of us) alerts the operator once
        [alert] = Alert.objects.filter(
            kind=Alert.Kind.RECONCILIATION, details__account=account.name
        )
        assert (alert.details["status"], alert.details["class"]) == ("drift", "output")
        assert alert.details["drift"] == output.drift and alert.tenant_id is None
        assert [c["drift_equals_reasoning"] for c in alert.details["classes"]] == [True]


def test_usage_on_a_key_no_route_declares_is_missing_in_ledger_and_told_every_run(
    world: World,
) -> None:
    serve_matching_traffic(world)
    world.report()
    leak = ServedEvent(
        at=datetime.now(UTC) - timedelta(minutes=1),
        model="sim-reasoner",
        api_key_id="key_leaked",
        uncached_input=5000,
        output=800,
        reasoning=1200,
    )
    world.oa_fake.events.append(leak)
    first = sync(world, world.oa)
    second = sync(world, world.oa)  # the next hourly run: nothing new
    rows = world.rows(world.oa)
    leaked = {k[2]: r for k, r in rows.items() if k[1] == "key_leaked"}
    assert {c: r.status for c, r in leaked.items()} == {
        "requests": "missing_in_ledger",
        "input_uncached": "missing_in_ledger",
        "cache_read": "pending",  # 0 against 0
        "cache_write": "not_compared",
        "output": "missing_in_ledger",
    }
    assert (leaked["output"].ours, leaked["output"].theirs) == (0, 2000)
    assert rows[("sim-reasoner", OA_KEY, "output")].status == "pending"  # ours still settles
    assert first.reconciled.changed_days == (today(),) and second.reconciled.changed_days == ()
    # billing hears of every reconciled day on every run (its alerts are idempotent, so a
    # lost one fires on the next run), today included both times
    told = [days for account, days in world.told if account == world.oa.pk]
    assert len(told) == 2 and all(today() in days for days in told)


def test_a_late_bucket_revision_changes_the_row_and_keeps_history(world: World) -> None:
    serve_matching_traffic(world)
    world.report()
    sync(world, world.oa)
    before = world.rows(world.oa)[("sim-reasoner", OA_KEY, "output")]
    assert before.report_revision == 1
    world.oa_fake.add_usage(
        ServedEvent(
            at=datetime.now(UTC).replace(minute=0, second=1, microsecond=0),
            model="sim-reasoner",
            api_key_id=OA_KEY,
            output=50,
        )
    )
    sync(world, world.oa)
    sync(world, world.oa, settled_moment())
    after = world.rows(world.oa)[("sim-reasoner", OA_KEY, "output")]
    assert after.pk == before.pk  # recomputed in place
    assert (after.theirs, after.drift, after.status) == (before.theirs + 50, 50, "drift")
    assert after.report_revision == 2
    history = ProviderBucketRevision.objects.filter(account=world.oa, report="usage")
    assert history.count() == 1 and history.get().reason == "changed"


def test_a_cut_stream_and_a_client_disconnect_are_counted_in_explain(world: World) -> None:
    """A cut stream counts what was seen; the provider bills the whole generation, so the
    row drifts and `explain` names the incomplete records. A client that leaves a stream
    that completes costs nothing: the proxy drains it and the row still matches."""
    client = world.openai()
    try:
        list(client.chat.completions.create(model="cutter", messages=PROMPT, stream=True))
    except openai.APIError:
        pass  # the SDK may or may not notice the missing [DONE]
    path, body = "/v1/chat/completions", {"messages": PROMPT, "stream": True}
    for alias in ("slow-cutter", "slow-reasoner"):
        first = asyncio.run(
            _read_then_disconnect(
                world.e2e.reckon_url, world.e2e.raw_key, path, {**body, "model": alias}, {}
            )
        )
        assert first
    world.calls += 3
    world.recorded()
    wait_for(lambda: UsageRecord.objects.filter(alias="slow-reasoner", status="completed").exists())
    world.report()
    sync(world, world.oa)
    sync(world, world.oa, settled_moment())
    rows = world.rows(world.oa)
    cut = rows[("sim-cut-stream", OA_KEY, "output")]
    assert cut.status == "drift" and cut.drift > 0  # the provider billed more than we saw
    explain = cut.explain
    assert explain["source"] == "ledger"
    assert explain["incomplete"]["records"] == 2
    assert explain["client_disconnected"]["records"] == 1
    incomplete = UsageRecord.objects.filter(upstream_model="sim-cut-stream")
    assert explain["incomplete"]["output_tokens"] == sum(r.output_tokens for r in incomplete)
    assert (explain["failed"]["records"], explain["upstream_error"]["records"]) == (0, 0)
    drained = rows[("sim-reasoner", OA_KEY, "output")]
    assert drained.status == "matched" and drained.explain == {}
    assert UsageRecord.objects.get(alias="slow-reasoner").client_disconnected
