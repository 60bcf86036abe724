"""The alias admin (decision 0117): an alias with its targets inline, rules validated in
the form, the services' rules held on the route page too (one wire family, never the last
active target, never a target the rules name), and the roles that may use it."""

import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from metering.models import Alias, Route
from metering.routing.breaker import breaker_key
from metering.services import alias_set, route_set
from tests.staff import staff_user

pytestmark = pytest.mark.django_db
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def target(name: str, provider: str = "openai", **kwargs: Any) -> Route:
    base = "https://api.anthropic.com" if provider == "anthropic" else "http://127.0.0.1:8100/v1"
    return route_set(
        alias="think",
        target=name,
        provider=provider,
        base_url=base,
        upstream_model=f"sim-{name}",
        **kwargs,
    )


@pytest.fixture
def ops(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    return client


def alias_form(alias: Alias, routes: list[Route], **changes: Any) -> dict[str, Any]:
    """The change form as the browser posts it, with `changes` (field or `t<i>-field`)."""
    form: dict[str, Any] = {
        "policy": alias.policy,
        "rules": "[]",
        "max_attempts": str(alias.max_attempts),
        "is_active": "on",
        "targets-TOTAL_FORMS": str(len(routes)),
        "targets-INITIAL_FORMS": str(len(routes)),
        "targets-MIN_NUM_FORMS": "0",
        "targets-MAX_NUM_FORMS": "1000",
    }
    for i, route in enumerate(routes):
        form |= {
            f"targets-{i}-id": str(route.pk),
            f"targets-{i}-alias": alias.name,
            f"targets-{i}-name": route.name,
            f"targets-{i}-priority": str(route.priority),
            f"targets-{i}-weight": str(route.weight),
            f"targets-{i}-max_concurrent": "",
            f"targets-{i}-first_byte_timeout_ms": "",
            f"targets-{i}-is_active": "on",
        }
    for key, value in changes.items():
        if value is None:
            form.pop(key, None)
        else:
            form[key] = value
    return form


def test_alias_page_shows_targets_and_saves_rules_and_routing(ops: Client) -> None:
    default, mini = target("default"), target("mini", priority=1)
    alias = Alias.objects.get(name="think")
    url = reverse("admin:metering_alias_change", args=[alias.pk])
    page = ops.get(url).content.decode()
    assert "sim-default" in page and "sim-mini" in page  # each target's upstream, inline
    assert reverse("admin:metering_route_change", args=[mini.pk]) in page  # link to its page
    rules = '[{"name": "light", "efforts": ["low"], "target": "mini"}]'
    saved = ops.post(
        url,
        alias_form(
            alias, [default, mini], policy="effort", rules=rules, **{"targets-1-weight": "30"}
        ),
    )
    assert saved.status_code == 302, saved.content.decode()[:3000]
    alias.refresh_from_db()
    assert alias.policy == "effort"
    assert alias.rules == [{"name": "light", "efforts": ["low"], "target": "mini"}]
    assert Route.objects.get(pk=mini.pk).weight == 30
    changelist = ops.get(reverse("admin:metering_alias_changelist")).content.decode()
    assert "2 of 2" in changelist


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"policy": "effort", "rules": '[{"name": "x", "when": 1, "target": "mini"}]'},
            "unknown key(s)",
        ),
        (
            {"policy": "effort", "rules": '[{"name": "x", "efforts": ["huge"], "target": "mini"}]'},
            "unknown effort",
        ),
        (
            {"policy": "effort", "rules": '[{"name": "x", "target": "ghost"}]'},
            "not an active target",
        ),
        (
            {"policy": "weighted", "rules": '[{"name": "x", "target": "mini"}]'},
            "effort policy only",
        ),
        (
            {
                "policy": "effort",
                "rules": '[{"name": "x", "target": "mini"}]',
                "targets-1-is_active": None,
            },
            "not an active target",
        ),
        ({"targets-0-is_active": None, "targets-1-is_active": None}, "at least one target active"),
    ],
)
def test_alias_page_refuses_bad_rules_and_targets(
    ops: Client, changes: dict[str, Any], message: str
) -> None:
    default, mini = target("default"), target("mini", priority=1)
    alias = Alias.objects.get(name="think")
    url = reverse("admin:metering_alias_change", args=[alias.pk])
    refused = ops.post(url, alias_form(alias, [default, mini], **changes))
    assert refused.status_code == 200
    assert message in refused.content.decode()
    alias.refresh_from_db()
    assert (alias.policy, alias.rules) == ("fallback", [])
    assert Route.objects.filter(alias_id="think", is_active=True).count() == 2


def route_form(route: Route, **changes: Any) -> dict[str, Any]:
    form = {
        "alias": route.alias_id,
        "name": route.name,
        "priority": str(route.priority),
        "weight": str(route.weight),
        "max_concurrent": "",
        "first_byte_timeout_ms": "",
        "provider": route.provider,
        "base_url": route.base_url,
        "upstream_model": route.upstream_model,
        "api_key_env": "",
        "accelerator": "",
        "provider_account": "",
        "upstream_key_id": "",
        "is_active": "on",
    }
    for key, value in changes.items():
        if value is None:
            form.pop(key, None)
        else:
            form[key] = value
    return form


def test_route_page_holds_the_services_rules(ops: Client) -> None:
    default = target("default")
    add = reverse("admin:metering_route_add")
    # a second target of another wire family is refused
    claude = route_form(
        default, name="claude", provider="anthropic", base_url="https://api.anthropic.com"
    )
    refused = ops.post(add, claude)
    assert refused.status_code == 200 and "one wire family" in refused.content.decode()
    # the same name twice is refused
    assert "already has a target named" in ops.post(add, route_form(default)).content.decode()
    # a second openai target is added; the first can then be deactivated, not both
    created = ops.post(add, route_form(default, name="mini", upstream_model="sim-mini"))
    assert created.status_code == 302
    mini = Route.objects.get(alias_id="think", name="mini")
    alias_set(name="think", policy="effort", rules=[{"name": "light", "target": "mini"}])
    mini_url = reverse("admin:metering_route_change", args=[mini.pk])
    refused = ops.post(mini_url, route_form(mini, is_active=None))
    assert "send calls to" in refused.content.decode()
    refused = ops.post(mini_url, route_form(mini, name="small"))
    assert "send calls to" in refused.content.decode()
    alias_set(name="think", policy="fallback", rules=[])
    assert ops.post(mini_url, route_form(mini, is_active=None)).status_code == 302
    default_url = reverse("admin:metering_route_change", args=[default.pk])
    refused = ops.post(default_url, route_form(default, is_active=None))
    assert "last active target" in refused.content.decode()
    assert Route.objects.get(pk=default.pk).is_active


def test_a_route_typed_with_a_new_alias_creates_it(ops: Client) -> None:
    form = route_form(target("default"), alias="fresh", name="")
    assert ops.post(reverse("admin:metering_route_add"), form).status_code == 302
    fresh = Route.objects.get(alias_id="fresh")
    assert (fresh.name, fresh.priority, fresh.weight) == ("default", 0, 100)
    assert Alias.objects.get(name="fresh").policy == "fallback"


def test_roles_on_aliases(client: Client) -> None:
    target("default")
    alias = Alias.objects.get(name="think")
    operator = staff_user("op", "operator")
    finance = staff_user("fin", "finance-read")
    assert operator.has_perms(
        ["metering.add_alias", "metering.change_alias", "metering.view_alias"]
    )
    assert not operator.has_perm("metering.delete_alias")
    assert finance.has_perm("metering.view_alias") and not finance.has_perm("metering.change_alias")
    client.force_login(finance)
    page = client.get(reverse("admin:metering_alias_change", args=[alias.pk]))
    # finance reads the alias's routing; the targets inline need the route permission
    assert page.status_code == 200 and "View alias" in page.content.decode()
    assert "sim-default" not in page.content.decode()
    client.force_login(operator)
    assert client.get(reverse("admin:metering_alias_add")).status_code == 200


def test_alias_page_shows_each_target_s_live_breaker(ops: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = REDIS_URL
    target("default")
    mini = target("mini", priority=1)
    alias = Alias.objects.get(name="think")
    client = redis.Redis.from_url(REDIS_URL)
    key = breaker_key(alias.pk)
    until_ms = int(time.time() * 1000) + 600_000
    client.hset(key, mapping={f"{mini.pk}:open": until_ms, f"{mini.pk}:cd": 30_000})
    try:
        page = ops.get(reverse("admin:metering_alias_change", args=[alias.pk])).content.decode()
    finally:
        client.delete(key)
        client.close()
    until = datetime.fromtimestamp(until_ms // 1000, tz=UTC)
    assert f"open until {until:%H:%M:%S}" in page
    # the default target's, once in the targets inline and once in the economics panel
    assert page.count(">closed<") == 2


def test_alias_page_says_unknown_when_redis_is_out_of_reach(ops: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens
    target("default")
    alias = Alias.objects.get(name="think")
    page = ops.get(reverse("admin:metering_alias_change", args=[alias.pk])).content.decode()
    # once in the targets inline and once in the economics panel; never "closed"
    assert page.count(">unknown<") == 2 and ">closed<" not in page


def test_route_page_never_deletes_the_last_active_target(ops: Client) -> None:
    default = target("default")
    delete = reverse("admin:metering_route_delete", args=[default.pk])
    assert ops.get(delete).status_code == 403
    assert ops.post(delete, {"post": "yes"}).status_code == 403
    spare = target("spare", priority=1)
    assert (
        ops.post(
            reverse("admin:metering_route_delete", args=[spare.pk]), {"post": "yes"}
        ).status_code
        == 302
    )
    assert list(Route.objects.values_list("name", flat=True)) == ["default"]
