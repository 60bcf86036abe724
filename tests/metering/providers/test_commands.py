"""provider_account_set, route_set --provider-account/--upstream-key-id and
provider_reports_import, as an operator runs them."""

import datetime as dt
from io import StringIO

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from metering.management.commands.provider_reports_import import Command as ImportCommand
from metering.models import ProviderAccount, ProviderUsageBucket, ReconciliationRow, Route
from metering.providers.locks import ACCOUNT_CLASS
from tests.metering.providers.conftest import OPENAI_ENV, OPENAI_KEY

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue().strip()


def test_provider_account_set_creates_then_updates_idempotently(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OAI_ADMIN", raising=False)
    out, err = run(
        "provider_account_set", "oai", "--provider", "openai", "--admin-key-env", "OAI_ADMIN",
        "--model-map", "gpt-r-2026-01-01=gpt-r", "o3-2025=o3",
    )  # fmt: skip
    assert out == (
        "oai: openai at https://api.openai.com/v1, admin key from $OAI_ADMIN, "
        "2 model name(s) mapped, active"
    )
    assert "$OAI_ADMIN is not set here" in err
    account = ProviderAccount.objects.get(name="oai")
    assert account.model_map == {"gpt-r-2026-01-01": "gpt-r", "o3-2025": "o3"}
    assert account.admin_base_url == ""

    monkeypatch.setenv("OAI_ADMIN", "sk-admin-x")
    for _ in range(2):
        out, err = run(
            "provider_account_set", "oai", "--provider", "openai", "--admin-key-env", "OAI_ADMIN",
            "--admin-base-url", "http://gateway:8080/openai/v1/", "--inactive",
        )  # fmt: skip
        assert err == ""
    assert ProviderAccount.objects.count() == 1
    account.refresh_from_db()
    assert account.admin_base_url == "http://gateway:8080/openai/v1"
    assert account.is_active is False and account.model_map == {}
    assert out.endswith("inactive")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admin-key-env", "sk-admin-abc123-secret"], "NAME of an environment variable"),
        (["--admin-key-env", "OK", "--admin-base-url", "ftp://x/v1"], "http(s) URL"),
        (
            ["--admin-key-env", "OK", "--admin-base-url", "https://u:sk-secret@host/v1"],
            "must not hold credentials",
        ),
        (["--admin-key-env", "OK", "--admin-base-url", "https://h/v1?key=1"], "query"),
        (["--admin-key-env", "OK", "--model-map", "nothing"], "REPORT_NAME=UPSTREAM_MODEL"),
    ],
)
def test_provider_account_set_refuses_bad_input_without_echoing_secrets(
    args: list[str], message: str
) -> None:
    with pytest.raises(CommandError) as caught:
        run("provider_account_set", "acct", "--provider", "openai", *args)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)
    assert not ProviderAccount.objects.exists()


def test_route_set_links_a_route_to_an_account_and_key_id(openai_account) -> None:  # type: ignore[no-untyped-def]
    out, _ = run(
        "route_set", "reasoner", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--upstream-model", "gpt-r", "--provider-account", "oai-main", "--upstream-key-id", "key_a",
    )  # fmt: skip
    assert "provider account oai-main, upstream key id key_a" in out
    route = Route.objects.get(alias="reasoner")
    assert route.provider_account == openai_account and route.upstream_key_id == "key_a"

    # a plain route_set leaves the link as it is
    run(
        "route_set", "reasoner", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--upstream-model", "gpt-r",
    )  # fmt: skip
    route.refresh_from_db()
    assert route.provider_account == openai_account

    # the link alone, and "none" to clear it
    out, _ = run("route_set", "reasoner", "--provider-account", "none", "--upstream-key-id", "")
    assert "provider account none, upstream key id (not declared)" in out
    route.refresh_from_db()
    assert route.provider_account is None and route.upstream_key_id == ""


def test_route_set_refuses_an_account_of_another_provider_or_unknown(anthropic_account) -> None:  # type: ignore[no-untyped-def]
    run(
        "route_set", "gpt", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--upstream-model", "gpt-r",
    )  # fmt: skip
    with pytest.raises(CommandError, match="is anthropic; openai routes cannot belong to it"):
        run("route_set", "gpt", "--provider-account", "ant-main")
    with pytest.raises(CommandError, match="No provider account 'nope'"):
        run("route_set", "gpt", "--provider-account", "nope")
    with pytest.raises(CommandError, match="not the key itself"):
        run("route_set", "gpt", "--upstream-key-id", "sk proj secret")


def test_provider_reports_import_prints_what_it_did(openai_account) -> None:  # type: ignore[no-untyped-def]
    out, _ = run(
        "provider_reports_import", "--account", "oai-main", "--since", "2026-11-02",
        "--until", "2026-11-03",
    )  # fmt: skip
    assert out.startswith("oai-main: usage+cost 2026-11-02 00:00..2026-11-04 00:00 UTC: ")
    assert "2 page(s) in 2 request(s)" in out
    assert "0 removed; days changed: 2026-11-02, 2026-11-03; run " in out
    assert out.rstrip().endswith("; 2 day(s) reconciled")
    assert ProviderUsageBucket.objects.filter(account=openai_account).exists()
    assert set(
        ReconciliationRow.objects.filter(account=openai_account).values_list("day", flat=True)
    ) == {dt.date(2026, 11, 2), dt.date(2026, 11, 3)}

    out, _ = run(
        "provider_reports_import", "--account", "oai-main", "--since", "2026-11-02",
        "--until", "2026-11-03", "--report", "usage",
    )  # fmt: skip
    assert "0 bucket(s) new or changed (0 new), 0 removed; days changed: none" in out
    assert "reconciled" not in out


def test_import_refuses_at_once_while_another_run_holds_the_account(openai_account) -> None:  # type: ignore[no-untyped-def]
    """The hourly sync (here: another PostgreSQL session holding the account's run lock)
    is busy with the account: the command fails saying so and changes nothing."""
    if connection.vendor != "postgresql":
        pytest.skip("the run lock is PostgreSQL's; SQLite runs one process")
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [ACCOUNT_CLASS, openai_account.pk])
        with pytest.raises(CommandError, match="being imported by another run"):
            run("provider_reports_import", "--account", "oai-main", "--since", "2026-11-02")
        assert not ProviderUsageBucket.objects.filter(account=openai_account).exists()
        # released here, not by the close: a closed session's backend lets go of its locks
        # a moment after the client has moved on (seen on a loaded machine)
        other.execute("SELECT pg_advisory_unlock(%s, %s)", [ACCOUNT_CLASS, openai_account.pk])
    out, _ = run("provider_reports_import", "--account", "oai-main", "--since", "2026-11-02")
    assert "days changed: 2026-11-02" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "nope", "--since", "2026-11-02"], "No provider account 'nope'"),
        (["--account", "oai-main", "--since", "02/11/2026"], "YYYY-MM-DD"),
        (
            ["--account", "oai-main", "--since", "2026-11-03", "--until", "2026-11-02"],
            "--until is before --since",
        ),
        (["--account", "oai-main", "--since", "2999-01-01"], "in the future"),
    ],
)
def test_provider_reports_import_bad_input(openai_account, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError, match=message):
        run("provider_reports_import", *args)


def test_a_failed_import_exits_1_with_a_message_and_no_traceback(
    openai_account, openai_fake, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(OPENAI_ENV, "sk-admin-revoked-key-000")
    with pytest.raises(SystemExit) as exited:
        ImportCommand().run_from_argv(
            [
                "manage.py",
                "provider_reports_import",
                "--account",
                "oai-main",
                "--since",
                "2026-11-02",
            ]
        )
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "CommandError: The usage report of 'oai-main' failed: the admin API answered 401" in err
    assert f"check the key in ${OPENAI_ENV}" in err
    assert "Traceback" not in err and "sk-admin-revoked" not in err and OPENAI_KEY not in err


def test_an_account_named_by_routes_cannot_change_provider(openai_account) -> None:  # type: ignore[no-untyped-def]
    run(
        "route_set", "gpt", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--upstream-model", "gpt-r", "--provider-account", "oai-main",
    )  # fmt: skip
    with pytest.raises(CommandError, match="is anthropic; openai routes cannot belong to it"):
        run("provider_account_set", "oai-main", "--provider", "anthropic", "--admin-key-env", "K")
    openai_account.refresh_from_db()
    assert openai_account.provider == "openai"
