from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from metering.keys import api_key_hash
from metering.models import ApiKey, Route, Tenant

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_tenant_apikey_and_route_commands() -> None:
    tenant_id = run("tenant_create", "acme")
    assert Tenant.objects.get(pk=tenant_id).name == "acme"
    raw = run("apikey_create", "acme")
    assert raw.startswith("rk_")
    stored = ApiKey.objects.get(tenant_id=tenant_id)
    assert stored.key_hash == api_key_hash(raw) and raw not in stored.key_hash
    assert raw.startswith(stored.prefix)
    run(
        "route_set",
        "reasoner",
        "--provider",
        "openai",
        "--base-url",
        "http://127.0.0.1:8100/v1/",
        "--upstream-model",
        "sim-reasoner",
        "--api-key-env",
        "SIM_KEY",
        "--accelerator",
        "nvidia-h100-sxm",
        "--allow-tenant",
        "acme",
    )
    route = Route.objects.get(alias="reasoner")
    assert (route.base_url, route.api_key_env, route.accelerator) == (
        "http://127.0.0.1:8100/v1",
        "SIM_KEY",
        "nvidia-h100-sxm",
    )
    assert list(Tenant.objects.get(pk=tenant_id).allowed_routes.all()) == [route]
    # idempotent on the alias: a second route_set updates in place
    run(
        "route_set",
        "reasoner",
        "--provider",
        "openai-compatible",
        "--base-url",
        "http://10.0.0.1:8000/v1",
        "--upstream-model",
        "r1",
    )
    assert Route.objects.get(alias="reasoner").provider == "openai-compatible"


def test_apikey_create_by_id_and_with_expiry() -> None:
    tenant_id = run("tenant_create", "globex")
    run("apikey_create", tenant_id, "--expires-at", "2030-01-01T00:00:00+00:00")
    assert ApiKey.objects.get(tenant_id=tenant_id).expires_at.year == 2030


@pytest.mark.parametrize(
    "args",
    [
        ("tenant_create", ""),
        ("apikey_create", "nobody"),
        ("apikey_create", "acme2", "--expires-at", "2030-01-01T00:00:00"),
        (
            "route_set",
            "x",
            "--provider",
            "openai",
            "--base-url",
            "ftp://x",
            "--upstream-model",
            "m",
        ),
        (
            "route_set",
            "x",
            "--provider",
            "openai",
            "--base-url",
            "http://x/v1",
            "--upstream-model",
            "m",
            "--api-key-env",
            "NOT A VAR",
        ),
    ],
)
def test_bad_arguments_fail_clearly(args: tuple[str, ...]) -> None:
    Tenant.objects.create(name="acme2")
    with pytest.raises(CommandError):
        run(*args)
