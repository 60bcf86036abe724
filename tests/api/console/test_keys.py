"""The API keys pages: a created key is shown once (never again, never cached) and works
with the REST API; revoking asks first and then stops the key; owners set a key's
monthly spend limit and reasoning policy through the metering services, others read
them; another tenant's key is a 404; every change is a POST with the CSRF token."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.signing import TimestampSigner
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from config.errors import ApplicationError
from metering.control.budgets import BudgetKind, budget_list
from metering.keys import api_key_hash
from metering.models import ApiKey, RateLimit, ReasoningPolicy, SpendLimit
from metering.services import (
    api_key_create,
    api_key_spend_limit_set,
    reasoning_policy_clear,
    reasoning_policy_set,
)
from tests.api.console.helpers import attr_values, csrf_client, key_client, member_client
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme():  # type: ignore[no-untyped-def]
    return TenantFactory(name="acme")


def _create(client, **fields: str):  # type: ignore[no-untyped-def]
    """Open the create form and send it (with its one-time token), as a browser does."""
    form = client.get("/console/keys/new").content.decode()
    (once,) = re.findall(r'name="once" value="([^"]+)"', form)
    return client.post("/console/keys/new", {"once": once, **fields})


def _secret(html: str) -> str:
    values = [
        line.split(">", 1)[1].split("<", 1)[0]
        for line in html.splitlines()
        if 'id="new-key-secret"' in line
    ]
    assert len(values) == 1, "the secret is shown exactly once on the page"
    return values[0]


def test_a_created_key_is_shown_once_and_authenticates_the_rest_api(acme) -> None:  # type: ignore[no-untyped-def]
    client = member_client(acme, "dev", "developer")
    form = client.get("/console/keys")
    assert form.status_code == 200 and b'action="/console/keys/new"' in form.content
    created = _create(client, name="batch jobs")
    assert created.status_code == 201
    assert "no-store" in created["Cache-Control"]
    html = created.content.decode()
    secret = _secret(html)
    key = ApiKey.objects.get(tenant=acme, name="batch jobs")
    assert key.key_hash == api_key_hash(secret) and secret.startswith(key.prefix)
    assert secret not in key.key_hash and not ApiKey.objects.filter(key_hash=secret).exists()

    usage = key_client(secret).get("/api/v1/usage/summary")
    assert usage.status_code == 200, usage.content

    # the secret is nowhere after the create response: not on a reload, not in the session
    for path in ("/console/keys", f"/console/keys/{key.pk}", "/console/keys/new"):
        again = client.get(path)
        assert again.status_code == 200
        assert secret.encode() not in again.content
        assert b'id="new-key-secret"' not in again.content
    assert secret not in str(dict(client.session))
    listed = client.get("/console/keys").content.decode()
    assert str(key.pk) in attr_values(listed, "data-key-id")


def test_a_reload_of_the_create_response_creates_nothing_and_shows_no_key(acme) -> None:  # type: ignore[no-untyped-def]
    client = member_client(acme, "dev", "developer")
    form = client.get("/console/keys").content.decode()
    (once,) = re.findall(r'name="once" value="([^"]+)"', form)
    first = client.post("/console/keys/new", {"once": once, "name": "ci"})
    assert first.status_code == 201
    secret = _secret(first.content.decode())
    again = client.post("/console/keys/new", {"once": once, "name": "ci"}, follow=True)
    assert again.redirect_chain == [("/console/keys", 302)]
    assert secret.encode() not in again.content and b'id="new-key-secret"' not in again.content
    assert b"already used" in again.content
    assert ApiKey.objects.filter(tenant=acme).count() == 1
    forged = client.post("/console/keys/new", {"once": "made-up", "name": "x"})
    missing = client.post("/console/keys/new", {"name": "x"})
    assert forged.status_code == missing.status_code == 302
    assert ApiKey.objects.filter(tenant=acme).count() == 1
    assert once in client.session["console_key_create_used"]


def test_an_expiry_in_the_past_is_refused_and_a_future_one_kept(acme) -> None:  # type: ignore[no-untyped-def]
    client = member_client(acme, "dev", "developer")
    refused = _create(client, name="old", expires_on="2020-01-01")
    assert refused.status_code == 400 and b"after today" in refused.content
    assert not ApiKey.objects.filter(name="old").exists()
    kept = _create(client, name="later", expires_on="2099-03-01")
    assert kept.status_code == 201
    expires = ApiKey.objects.get(name="later").expires_at
    assert expires is not None and expires.isoformat() == "2099-03-01T00:00:00+00:00"


def test_revoking_asks_first_then_the_key_stops_working(acme) -> None:  # type: ignore[no-untyped-def]
    created = api_key_create(tenant=acme, name="ci")
    client = member_client(acme, "dev", "developer")
    confirm = client.get(f"/console/keys/{created.api_key.pk}/revoke")
    assert confirm.status_code == 200 and b'id="confirm-revoke"' in confirm.content
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is None  # GET changes nothing
    assert key_client(created.raw_key).get("/api/v1/usage/summary").status_code == 200

    done = client.post(f"/console/keys/{created.api_key.pk}/revoke")
    assert done.status_code == 302 and done["Location"] == "/console/keys"
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is not None
    listed = client.get("/console/keys").content.decode()
    assert "revoked" in listed and f"/console/keys/{created.api_key.pk}/revoke" not in listed


def test_billing_reads_keys_but_may_not_create_or_revoke(acme) -> None:  # type: ignore[no-untyped-def]
    created = api_key_create(tenant=acme, name="ci")
    client = member_client(acme, "bill", "billing")
    listed = client.get("/console/keys")
    assert listed.status_code == 200
    assert b"ci" in listed.content
    assert b'action="/console/keys/new"' not in listed.content
    assert b"/revoke" not in listed.content
    assert client.get("/console/keys/new").status_code == 403
    assert client.post("/console/keys/new", {"name": "x"}).status_code == 403
    assert client.post(f"/console/keys/{created.api_key.pk}/revoke").status_code == 403
    assert ApiKey.objects.filter(tenant=acme).count() == 1
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is None


def test_another_tenants_key_is_not_found(acme) -> None:  # type: ignore[no-untyped-def]
    other = api_key_create(tenant=TenantFactory(name="globex"), name="theirs").api_key
    client = member_client(acme, "boss", "owner")
    for path in (f"/console/keys/{other.pk}", f"/console/keys/{other.pk}/revoke"):
        assert client.get(path).status_code == 404
        assert client.post(path, {"form": "limit", "amount_usd": "1"}).status_code == 404
    other.refresh_from_db()
    assert other.revoked_at is None and not SpendLimit.objects.filter(api_key=other).exists()
    assert b"theirs" not in client.get("/console/keys").content


def test_posts_need_the_csrf_token_and_anonymous_visitors_sign_in_first(acme) -> None:  # type: ignore[no-untyped-def]
    key = api_key_create(tenant=acme, name="ci").api_key
    strict = csrf_client(member_client(acme, "boss", "owner"))
    assert strict.post("/console/keys/new", {"name": "x"}).status_code == 403
    assert strict.post(f"/console/keys/{key.pk}/revoke").status_code == 403
    assert (
        strict.post(f"/console/keys/{key.pk}", {"form": "limit", "amount_usd": "5"}).status_code
        == 403
    )
    key.refresh_from_db()
    assert key.revoked_at is None and ApiKey.objects.filter(tenant=acme).count() == 1
    anonymous = csrf_client(member_client(acme, "x", "owner"))
    anonymous.logout()
    page = anonymous.get("/console/keys")
    assert page.status_code == 302 and page["Location"].startswith("/console/login")


def test_owner_sets_and_clears_a_keys_monthly_spend_limit(acme) -> None:  # type: ignore[no-untyped-def]
    key = api_key_create(tenant=acme, name="ci").api_key
    client = member_client(acme, "boss", "owner")
    page = client.get(f"/console/keys/{key.pk}")
    assert b'id="key-limit-form"' in page.content and b'id="key-policy-form"' in page.content

    saved = client.post(f"/console/keys/{key.pk}", {"form": "limit", "amount_usd": "25.125"})
    assert saved.status_code == 302
    limit = SpendLimit.objects.get(api_key=key)
    assert (limit.tenant_id, limit.window, limit.amount_usd) == (
        acme.pk,
        "month",
        Decimal("25.125"),
    )
    html = client.get(f"/console/keys/{key.pk}").content.decode()
    assert attr_values(html, "data-amount", "key-spend-limits") == ["25.125"]
    assert "$25.125 a month" in client.get("/console/keys").content.decode()
    specs = budget_list(
        tenant_id=acme.pk, api_key_id=key.pk, balance=False, plan_reasoning_tokens=None
    )
    assert [(s.kind, s.limit, s.api_key_id) for s in specs] == [
        (BudgetKind.SPEND, Decimal("25.125"), key.pk)
    ]

    changed = client.post(f"/console/keys/{key.pk}", {"form": "limit", "amount_usd": "40"})
    assert changed.status_code == 302
    assert SpendLimit.objects.get(api_key=key).pk == limit.pk  # changed in place
    assert SpendLimit.objects.get(api_key=key).amount_usd == Decimal(40)

    bad = client.post(f"/console/keys/{key.pk}", {"form": "limit", "amount_usd": "-1"})
    assert bad.status_code == 400 and SpendLimit.objects.get(api_key=key).amount_usd == 40

    cleared = client.post(f"/console/keys/{key.pk}", {"form": "limit", "amount_usd": ""})
    assert cleared.status_code == 302 and not SpendLimit.objects.filter(api_key=key).exists()


def test_owner_sets_and_removes_a_reasoning_policy(acme) -> None:  # type: ignore[no-untyped-def]
    key = api_key_create(tenant=acme, name="ci").api_key
    client = member_client(acme, "boss", "owner")
    saved = client.post(
        f"/console/keys/{key.pk}",
        {
            "form": "policy",
            "allowed_efforts": ["medium", "low"],
            "default_max_output_tokens": "1024",
            "max_output_tokens": "8192",
            "mode": "refuse",
            "monthly_reasoning_tokens": "5000000",
        },
    )
    assert saved.status_code == 302
    policy = ReasoningPolicy.objects.get(api_key=key)
    assert (
        policy.allowed_efforts,
        policy.default_max_output_tokens,
        policy.max_output_tokens,
        policy.mode,
        policy.monthly_reasoning_tokens,
    ) == (["low", "medium"], 1024, 8192, "refuse", 5_000_000)
    shown = client.get(f"/console/keys/{key.pk}").content.decode()
    assert "efforts: low, medium" in shown and "cap 8,192 output tokens per call" in shown

    refused = client.post(
        f"/console/keys/{key.pk}",
        {
            "form": "policy",
            "default_max_output_tokens": "9000",
            "max_output_tokens": "100",
            "mode": "clamp",
        },
    )
    assert refused.status_code == 400 and b"may not exceed the cap" in refused.content
    assert ReasoningPolicy.objects.get(api_key=key).max_output_tokens == 8192

    removed = client.post(
        f"/console/keys/{key.pk}", {"form": "policy", "remove": "on", "mode": "clamp"}
    )
    assert removed.status_code == 302 and not ReasoningPolicy.objects.filter(api_key=key).exists()


@pytest.mark.parametrize("role", ["developer", "billing"])
def test_only_owners_change_limits_others_read_them(acme, role: str) -> None:  # type: ignore[no-untyped-def]
    key = api_key_create(tenant=acme, name="ci").api_key
    api_key_spend_limit_set(api_key=key, amount_usd=Decimal("10"))
    RateLimit.objects.create(
        tenant=acme, api_key=key, requests_per_minute=60, tokens_per_minute=None
    )
    reasoning_policy_set(
        api_key=key,
        allowed_efforts=["low"],
        default_max_output_tokens=None,
        max_output_tokens=2048,
        mode="clamp",
        monthly_reasoning_tokens=None,
    )
    client = member_client(acme, "someone", role)
    page = client.get(f"/console/keys/{key.pk}").content.decode()
    assert 'id="key-limit-form"' not in page and 'id="key-policy-form"' not in page
    assert "Read-only" in page and "60 requests/min" in page and "efforts: low" in page
    assert attr_values(page, "data-amount", "key-spend-limits") == ["10"]
    denied = client.post(f"/console/keys/{key.pk}", {"form": "limit", "amount_usd": "99"})
    assert denied.status_code == 403
    assert SpendLimit.objects.get(api_key=key).amount_usd == Decimal(10)


def test_the_spend_limit_service_validates() -> None:
    key = api_key_create(tenant=TenantFactory(), name="k").api_key
    for bad in (Decimal(-1), Decimal("NaN"), Decimal("1e10"), Decimal("0.0000000000001")):
        with pytest.raises(ApplicationError):
            api_key_spend_limit_set(api_key=key, amount_usd=bad)
    assert api_key_spend_limit_set(api_key=key, amount_usd=None) is None
    assert api_key_spend_limit_set(api_key=key, amount_usd=Decimal(0)) is not None


def test_the_reasoning_policy_service_validates() -> None:
    key = api_key_create(tenant=TenantFactory(), name="k").api_key
    base = {
        "allowed_efforts": [],
        "default_max_output_tokens": None,
        "max_output_tokens": None,
        "mode": "clamp",
        "monthly_reasoning_tokens": None,
    }
    for bad in (
        {"allowed_efforts": ["extreme"]},
        {"mode": "ignore"},
        {"max_output_tokens": 0},
        {"default_max_output_tokens": 2**31},
        {"default_max_output_tokens": 10, "max_output_tokens": 5},
    ):
        with pytest.raises(ApplicationError):
            reasoning_policy_set(api_key=key, **{**base, **bad})
    assert not ReasoningPolicy.objects.filter(api_key=key).exists()
    reasoning_policy_set(api_key=key, **base)
    reasoning_policy_clear(api_key=key)
    reasoning_policy_clear(api_key=key)  # idempotent
    assert not ReasoningPolicy.objects.filter(api_key=key).exists()


def test_the_key_list_reads_a_fixed_number_of_queries(acme) -> None:  # type: ignore[no-untyped-def]
    """Limits, rate limits and policies are read with the keys, not once per key."""
    client = member_client(acme, "boss", "owner")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/console/keys").status_code == 200
        return len(captured)

    def add_keys(n: int) -> None:
        for i in range(n):
            key = api_key_create(tenant=acme, name=f"k{i}-{ApiKey.objects.count()}").api_key
            api_key_spend_limit_set(api_key=key, amount_usd=Decimal(i + 1))
            RateLimit.objects.create(tenant=acme, api_key=key, requests_per_minute=10)
            reasoning_policy_set(
                api_key=key,
                allowed_efforts=[],
                default_max_output_tokens=None,
                max_output_tokens=100,
                mode="clamp",
                monthly_reasoning_tokens=None,
            )

    add_keys(2)
    few = queries()
    add_keys(20)
    assert queries() == few


def test_the_key_list_pages_newest_first(acme) -> None:  # type: ignore[no-untyped-def]
    made = [api_key_create(tenant=acme, name=f"k{i}").api_key.pk for i in range(55)]
    client = member_client(acme, "dev", "developer")
    first = client.get("/console/keys").content.decode()
    shown = [int(i) for i in attr_values(first, "data-key-id")]
    assert shown == sorted(made, reverse=True)[:50]
    older = [h for h in attr_values(first, "href") if h.startswith("?before=")]
    assert older == [f"?before={shown[-1]}"]
    second = client.get(f"/console/keys{older[0]}").content.decode()
    assert [int(i) for i in attr_values(second, "data-key-id")] == sorted(made, reverse=True)[50:]
    assert client.get("/console/keys?before=-1").status_code == 404


def _once(html: str) -> str:
    (once,) = re.findall(r'name="once" value="([^"]+)"', html)
    return once


def test_a_refused_create_re_renders_with_a_fresh_token_that_works(acme, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """REVIEW #9: a create the service refuses has used its token; the re-rendered form
    carries a fresh one, so the corrected re-submit creates the key."""
    client = member_client(acme, "dev", "developer")
    once = _once(client.get("/console/keys/new").content.decode())

    def refuse(**kwargs: object) -> None:
        raise ApplicationError("The service refused this key.")

    monkeypatch.setattr("api.console.views.keys.api_key_create", refuse)
    refused = client.post("/console/keys/new", {"once": once, "name": "ci"})
    assert refused.status_code == 400 and b"The service refused this key." in refused.content
    fresh = _once(refused.content.decode())
    assert fresh != once
    monkeypatch.undo()
    again = client.post("/console/keys/new", {"once": fresh, "name": "ci"})
    assert again.status_code == 201, again.content.decode()[:500]
    assert ApiKey.objects.filter(tenant=acme, name="ci").count() == 1

    # an invalid form (no name) too: re-rendered with a fresh token, the fixed form works
    once = _once(client.get("/console/keys/new").content.decode())
    invalid = client.post("/console/keys/new", {"once": once, "name": ""})
    assert invalid.status_code == 400
    fresh = _once(invalid.content.decode())
    assert fresh != once
    assert client.post("/console/keys/new", {"once": fresh, "name": "cd"}).status_code == 201
    # and the used tokens stay used
    assert client.post("/console/keys/new", {"once": fresh, "name": "cd"}).status_code == 302
    assert ApiKey.objects.filter(tenant=acme).count() == 2


def test_viewing_the_keys_writes_nothing_to_the_session(acme, settings) -> None:  # type: ignore[no-untyped-def]
    """REVIEW #10: showing the create form (list or new page, reloads too) does not save
    the session; only a create records its used token."""
    client = member_client(acme, "dev", "developer")
    before = dict(client.session)
    tokens = set()
    for path in ("/console/keys", "/console/keys", "/console/keys/new", "/console/keys/new"):
        response = client.get(path)
        assert response.status_code == 200
        assert settings.SESSION_COOKIE_NAME not in response.cookies, path
        tokens.add(_once(response.content.decode()))
    assert dict(client.session) == before
    assert len(tokens) == 4  # every form its own token (several tabs do not collide)
    created = client.post("/console/keys/new", {"once": tokens.pop(), "name": "ci"})
    assert created.status_code == 201
    assert client.post("/console/keys/new", {"once": tokens.pop(), "name": "cd"}).status_code == 201


def test_a_create_token_must_be_ours_and_recent(acme) -> None:  # type: ignore[no-untyped-def]
    client = member_client(acme, "dev", "developer")
    once = _once(client.get("/console/keys/new").content.decode())
    forged = TimestampSigner(salt="another").sign(once.split(":", 1)[0])
    assert client.post("/console/keys/new", {"once": forged, "name": "x"}).status_code == 302
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        late = client.post("/console/keys/new", {"once": once, "name": "x"})
    assert late.status_code == 302
    assert not ApiKey.objects.filter(tenant=acme).exists()


def test_the_key_scope_follows_the_members_role(acme) -> None:  # type: ignore[no-untyped-def]
    """REVIEW #2: a developer's keys never read billing (no choice offered); an owner's do
    by default (the box is ticked) and the owner may untick it; list and detail show it."""
    dev = member_client(acme, "dev", "developer")
    for path in ("/console/keys", "/console/keys/new"):
        assert b'name="can_read_billing"' not in dev.get(path).content
    assert _create(dev, name="dev-key", can_read_billing="on").status_code == 201
    dev_key = ApiKey.objects.get(name="dev-key")
    assert dev_key.can_read_billing is False

    owner = member_client(acme, "own", "owner")
    for path in ("/console/keys", "/console/keys/new"):
        form = owner.get(path).content.decode()
        assert re.search(r'<input type="checkbox" name="can_read_billing"[^>]*checked', form)
    assert _create(owner, name="own-key", can_read_billing="on").status_code == 201
    assert _create(owner, name="narrow").status_code == 201
    own_key, narrow = ApiKey.objects.get(name="own-key"), ApiKey.objects.get(name="narrow")
    assert own_key.can_read_billing is True and narrow.can_read_billing is False

    listed = owner.get("/console/keys").content.decode()
    scopes = dict(
        re.findall(r'data-key-id="(\d+)".*?<td class="key-scope">(.*?)</td>', listed, re.S)
    )
    assert scopes[str(own_key.pk)] == "usage, billing"
    assert scopes[str(dev_key.pk)].startswith("usage <span")
    assert "no billing" in scopes[str(narrow.pk)]
    detail = owner.get(f"/console/keys/{dev_key.pk}").content.decode()
    assert re.search(r'id="key-scope">usage \(no billing', detail)
    assert (
        'id="key-scope">usage, billing<'
        in owner.get(f"/console/keys/{own_key.pk}").content.decode()
    )
