"""Base URLs as operators paste them: each provider's documented forms are accepted and
normalized to what the adapters append to; anything else is refused saying what to write."""

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.urls import reverse

from config.errors import ApplicationError
from metering.models import Alias, Route
from metering.routes import base_url_normalize
from metering.services import route_set, route_warnings, tenant_allow_routes, tenant_create

ANTHROPIC, OPENAI, COMPATIBLE = "anthropic", "openai", "openai-compatible"


@pytest.mark.parametrize(
    ("provider", "given", "stored", "warns"),
    [
        # Anthropic's documented base URL (its SDK adds /v1) and the /v1 form.
        (ANTHROPIC, "https://api.anthropic.com", "https://api.anthropic.com/v1", False),
        (ANTHROPIC, "https://api.anthropic.com/", "https://api.anthropic.com/v1", False),
        (ANTHROPIC, "https://api.anthropic.com/v1", "https://api.anthropic.com/v1", False),
        (ANTHROPIC, "https://api.anthropic.com/v1/", "https://api.anthropic.com/v1", False),
        (ANTHROPIC, " https://api.anthropic.com/v1 ", "https://api.anthropic.com/v1", False),
        (ANTHROPIC, "HTTPS://api.anthropic.com", "https://api.anthropic.com/v1", False),
        # A gateway prefix, as an Anthropic SDK client would be given it.
        (
            ANTHROPIC,
            "https://gw.example.com/anthropic",
            "https://gw.example.com/anthropic/v1",
            False,
        ),
        (ANTHROPIC, "http://127.0.0.1:8100", "http://127.0.0.1:8100/v1", False),
        # OpenAI's documented base URL, and the bare host.
        (OPENAI, "https://api.openai.com/v1", "https://api.openai.com/v1", False),
        (OPENAI, "https://api.openai.com/v1/", "https://api.openai.com/v1", False),
        (OPENAI, "https://api.openai.com", "https://api.openai.com/v1", False),
        (OPENAI, "https://api.openai.com/", "https://api.openai.com/v1", False),
        (OPENAI, "https://gw.example.com/openai", "https://gw.example.com/openai", True),
        # OpenAI-compatible servers: the path is theirs; kept, a warning when not /v1.
        (COMPATIBLE, "http://vllm:8000/v1", "http://vllm:8000/v1", False),
        (COMPATIBLE, "http://vllm:8000/v1/", "http://vllm:8000/v1", False),
        (COMPATIBLE, "https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1", False),
        (COMPATIBLE, "https://api.deepseek.com", "https://api.deepseek.com", True),
        (
            COMPATIBLE,
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            True,
        ),
    ],
)
def test_documented_base_urls_are_normalized(
    provider: str, given: str, stored: str, warns: bool
) -> None:
    result = base_url_normalize(provider=provider, base_url=given)
    assert result.url == stored
    assert bool(result.warnings) == warns
    # normalizing what is stored changes nothing (route_set twice is idempotent)
    assert base_url_normalize(provider=provider, base_url=stored).url == stored


def test_a_warning_says_what_will_be_called_and_how_to_check() -> None:
    (warning,) = base_url_normalize(
        provider=COMPATIBLE, base_url="https://api.deepseek.com"
    ).warnings
    assert "https://api.deepseek.com/chat/completions" in warning
    assert "/v1" in warning and "--check" in warning


@pytest.mark.parametrize(
    ("provider", "given", "says"),
    [
        (OPENAI, "ftp://api.openai.com/v1", ["http(s)", "https://api.openai.com/v1"]),
        (OPENAI, "api.openai.com/v1", ["http(s)", "https://api.openai.com/v1"]),
        (ANTHROPIC, "https://", ["http(s)", "https://api.anthropic.com"]),
        (OPENAI, "https://api.openai.com:99999/v1", ["not a valid URL"]),
        (COMPATIBLE, "https://user:secret@vllm:8000/v1", ["--api-key-env", "user:password@"]),
        (COMPATIBLE, "https://:secret@vllm:8000/v1", ["--api-key-env"]),
        (COMPATIBLE, "http://vllm:8000/v1?key=secret", ["query string", "http://vllm:8000/v1."]),
        (COMPATIBLE, "http://vllm:8000/v1#x", ["fragment"]),
        (ANTHROPIC, "https://api.anthropic.com/v1/messages", ["https://api.anthropic.com/v1"]),
        (OPENAI, "https://api.openai.com/v1/chat/completions", ["https://api.openai.com/v1"]),
        (COMPATIBLE, "http://vllm:8000/v1/responses/", ["http://vllm:8000/v1"]),
        (COMPATIBLE, "http://vllm:8000/v1/models", ["http://vllm:8000/v1"]),
    ],
)
def test_refusals_say_what_to_write(provider: str, given: str, says: list[str]) -> None:
    with pytest.raises(ApplicationError) as caught:
        base_url_normalize(provider=provider, base_url=given)
    for part in says:
        assert part in caught.value.message
    assert "secret" not in caught.value.message  # a pasted credential is not echoed back


@pytest.mark.django_db
def test_route_set_stores_the_normalized_url_and_warns_until_a_tenant_may_use_it() -> None:
    route = route_set(
        alias="claude",
        provider=ANTHROPIC,
        base_url="https://api.anthropic.com",
        upstream_model="claude-sonnet-4-5",
    )
    assert route.base_url == "https://api.anthropic.com/v1"
    (warning,) = route_warnings(route=route)
    assert "404 model_not_found" in warning and "--allow-tenant" in warning
    assert "tenant_create NAME --allow claude" in warning
    tenant_allow_routes(tenant=tenant_create(name="acme"), aliases=["claude"])
    assert route_warnings(route=route) == []


@pytest.mark.django_db
def test_admin_route_form_normalizes_refuses_and_warns(client) -> None:  # type: ignore[no-untyped-def]
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    url = reverse("admin:metering_route_add")
    form = {
        "alias": "claude",
        "provider": ANTHROPIC,
        "base_url": "https://user:pw@api.anthropic.com",
        "upstream_model": "claude-sonnet-4-5",
        "api_key_env": "ANTHROPIC_API_KEY",
        "accelerator": "",
        "is_active": "on",
    }
    refused = client.post(url, form)
    assert refused.status_code == 200  # the form again, with the error
    assert "--api-key-env" in refused.content.decode()
    assert not Route.objects.exists()

    created = client.post(url, {**form, "base_url": "https://api.anthropic.com"}, follow=True)
    assert created.status_code == 200
    assert Route.objects.get(alias="claude").base_url == "https://api.anthropic.com/v1"
    shown = [str(m) for m in get_messages(created.wsgi_request)]
    assert any("404 model_not_found" in m and "--allow-tenant" in m for m in shown), shown

    # a compose service name is a valid host here, whatever Django's URL validator thinks
    other = client.post(
        url,
        {**form, "alias": "r1", "provider": COMPATIBLE, "base_url": "http://vllm:8000/v1/"},
        follow=True,
    )
    assert other.status_code == 200
    assert Route.objects.get(alias="r1").base_url == "http://vllm:8000/v1"


@pytest.mark.django_db
def test_a_route_saved_before_normalization_is_pointed_out() -> None:
    tenant = tenant_create(name="acme")
    old = Route.objects.create(
        alias=Alias.objects.get_or_create(name="claude")[0],
        provider=ANTHROPIC,
        base_url="https://api.anthropic.com",
        upstream_model="claude-sonnet-4-5",
    )
    broken = Route.objects.create(
        alias=Alias.objects.get_or_create(name="gpt")[0],
        provider=OPENAI,
        base_url="https://k:s@api.openai.com/v1",
        upstream_model="m",
    )
    tenant_allow_routes(tenant=tenant, aliases=["claude", "gpt"])
    (warning,) = route_warnings(route=old)
    assert "save the route again" in warning and "https://api.anthropic.com/v1" in warning
    (warning,) = route_warnings(route=broken)
    assert "cannot work" in warning and "--api-key-env" in warning
    assert "k:s@" not in warning
