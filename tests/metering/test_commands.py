import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from metering.keys import api_key_hash
from metering.models import Alias, ApiKey, Route, Tenant
from tests.ports import free_port

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


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
    assert list(Tenant.objects.get(pk=tenant_id).allowed_aliases.all()) == [route.alias]
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


# --- route_set: careless operator input ----------------------------------------------


def run_both(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_route_set_accepts_anthropics_documented_base_url() -> None:
    run("route_set", "claude", "--provider", "anthropic", "--base-url",
        "https://api.anthropic.com", "--upstream-model", "claude-sonnet-4-5")  # fmt: skip
    assert Route.objects.get(alias="claude").base_url == "https://api.anthropic.com/v1"
    run("route_set", "gpt", "--provider", "openai", "--base-url",
        "https://api.openai.com/", "--upstream-model", "gpt-5")  # fmt: skip
    assert Route.objects.get(alias="gpt").base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("base_url", "says"),
    [
        ("https://sk-ant-secret:x@api.anthropic.com", "--api-key-env"),
        (
            "https://api.anthropic.com/v1/messages",
            "write the base URL, e.g. https://api.anthropic.com/v1",
        ),
        ("https://api.anthropic.com/?beta=1", "query string"),
    ],
)
def test_route_set_refuses_what_cannot_work_and_says_what_to_write(
    base_url: str, says: str
) -> None:
    with pytest.raises(CommandError) as caught:
        run("route_set", "claude", "--provider", "anthropic", "--base-url", base_url,
            "--upstream-model", "m")  # fmt: skip
    assert says in str(caught.value)
    assert "sk-ant-secret" not in str(caught.value)
    assert not Route.objects.exists()


def test_route_set_warns_when_no_tenant_may_use_the_route() -> None:
    args = ("route_set", "r1", "--provider", "openai-compatible", "--base-url",
            "http://vllm:8000/v1", "--upstream-model", "r1")  # fmt: skip
    _, err = run_both(*args)
    assert "No tenant may use 'r1'" in err and "404 model_not_found" in err
    assert "--allow-tenant" in err and "tenant_create NAME --allow r1" in err
    Tenant.objects.create(name="acme")
    _, err = run_both(*args, "--allow-tenant", "acme")
    assert err == ""


def test_route_set_warns_on_a_compatible_url_without_v1() -> None:
    Tenant.objects.create(name="acme")
    _, err = run_both("route_set", "ds", "--provider", "openai-compatible", "--base-url",
                      "https://api.deepseek.com", "--upstream-model", "deepseek-reasoner",
                      "--allow-tenant", "acme")  # fmt: skip
    assert "does not end in /v1" in err and "https://api.deepseek.com/chat/completions" in err


# --- route_set --check: one real upstream call -----------------------------------------


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_simulator", "--port", str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/_sim/health", timeout=1)  # noqa: S310 - loopback
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture
def rejecting_upstream() -> Iterator[str]:
    """A fake upstream that refuses every key with 401 and echoes it, as some do."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            key = self.headers.get("authorization", "")
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}})
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def check(alias: str, provider: str, base_url: str, *extra: str) -> tuple[str, str, bool]:
    """(stdout, stderr, passed) of `route_set ... --check`."""
    out, err = StringIO(), StringIO()
    try:
        call_command("route_set", alias, "--provider", provider, "--base-url", base_url,
                     "--upstream-model", "sim-reasoner" if provider != "anthropic" else "sim-thinker",
                     "--check", *extra, stdout=out, stderr=err)  # fmt: skip
    except CommandError as exc:
        return out.getvalue(), str(exc), False
    return out.getvalue(), err.getvalue(), True


def test_check_passes_against_the_simulator(simulator: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SIM_CHECK_KEY", "sim-secret-123")
    # Anthropic's documented form of the base URL: the simulator serves /v1/messages.
    out, err, passed = check("thinker", "anthropic", simulator, "--api-key-env", "SIM_CHECK_KEY")
    assert passed, (out, err)
    assert re.search(rf"POST {simulator}/v1/messages -> HTTP 200 in \d+ ms", out), out
    assert "check passed" in out
    out, err, passed = check(
        "reasoner", "openai", simulator + "/v1", "--api-key-env", "SIM_CHECK_KEY"
    )
    assert passed, (out, err)
    assert f"POST {simulator}/v1/chat/completions -> HTTP 200" in out
    assert "sim-secret-123" not in out + err
    # alone, --check checks the saved route
    out = run("route_set", "reasoner", "--check")
    assert "HTTP 200" in out and "check passed" in out


def test_check_diagnoses_a_wrong_path(simulator: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SIM_CHECK_KEY", "sim-secret-123")
    out, why, passed = check(
        "r1", "openai-compatible", simulator + "/api", "--api-key-env", "SIM_CHECK_KEY"
    )
    assert not passed
    assert f"POST {simulator}/api/chat/completions -> HTTP 404" in out
    assert "wrong base URL" in why and "/v1" in why


def test_check_diagnoses_a_missing_credential(simulator: str) -> None:
    _, why, passed = check("reasoner", "openai", simulator + "/v1")
    assert not passed
    assert "HTTP 401" in why and "--api-key-env" in why
    _, why, passed = check(
        "reasoner", "openai", simulator + "/v1", "--api-key-env", "UNSET_CHECK_VAR"
    )
    assert not passed and "UNSET_CHECK_VAR is not set" in why


def test_check_diagnoses_a_rejected_key_without_printing_it(
    rejecting_upstream: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("UP_KEY", "sk-live-very-secret")
    out, why, passed = check("gpt", "openai", rejecting_upstream + "/v1", "--api-key-env", "UP_KEY")
    assert not passed
    assert "-> HTTP 401" in out
    assert "credential in UP_KEY was rejected" in why
    assert "sk-live-very-secret" not in out + why
    assert "[credential]" in why  # the upstream's echo of it, masked


def test_check_diagnoses_refused_connections_and_tls(simulator: str) -> None:
    port = free_port()
    out, why, passed = check("gone", "openai", f"http://127.0.0.1:{port}/v1")
    assert not passed and "connection refused" in why and "no answer" in out
    # https to a plain-HTTP server
    _, why, passed = check("tls", "openai", simulator.replace("http://", "https://") + "/v1")
    assert not passed and "TLS" in why and "http://" in why


def test_check_diagnoses_a_timeout() -> None:
    silent = socket.socket()  # listens, never answers: the connect succeeds, no reply comes
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        port = silent.getsockname()[1]
        out, why, passed = check(
            "slow", "openai", f"http://127.0.0.1:{port}/v1", "--timeout", "0.5"
        )
    finally:
        silent.close()
    assert not passed and "no answer" in out
    assert "within 0.5 s (timeout)" in why


def test_check_of_a_saved_route_never_prints_credentials_in_its_url(simulator: str) -> None:
    Route.objects.create(
        alias=Alias.objects.get_or_create(name="legacy")[0],
        provider="openai",
        base_url=simulator.replace("http://", "http://user:sekrit@") + "/v1",
        upstream_model="sim-reasoner",
    )
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("route_set", "legacy", "--check", stdout=out, stderr=err)
    printed = out.getvalue() + err.getvalue() + str(caught.value)
    assert "HTTP 401" in printed and "cannot work" in printed
    assert "sekrit" not in printed
