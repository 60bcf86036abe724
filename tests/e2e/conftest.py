"""End-to-end fixtures: a real Reckon server process and a real simulator process on
loopback, sharing the test PostgreSQL database; the official SDKs are the clients."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

from metering.models import Route, Tenant
from metering.services import api_key_create, route_set, tenant_allow_routes, tenant_create
from tests.ports import free_port  # noqa: F401 - the e2e tests' servers take theirs here

ROOT = Path(__file__).resolve().parents[2]
SIM_KEY_ENV = "RECKON_SIMULATOR_API_KEY"


def http(
    method: str, url: str, body: object = None, headers: dict | None = None
) -> tuple[int, dict, object]:
    """A plain loopback HTTP call: (status, headers, parsed JSON body or raw text)."""
    data = (
        body
        if isinstance(body, bytes)
        else (json.dumps(body).encode() if body is not None else None)
    )
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            status, raw, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, hdrs = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode()


# Seconds a server process may take to answer: each imports Django, seconds of CPU, and
# several may start side by side on a loaded 2-core machine.
BOOT_TIMEOUT = 120


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a manage.py command without waiting for it; servers run in development mode
    (plain HTTP on loopback, the built-in secret) unless `env` says otherwise."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "RECKON_ENV": "development", **env},
    )


def start(args: list[str], env: dict[str, str], ready_url: str) -> subprocess.Popen:
    """Start a manage.py command and wait until `ready_url` answers."""
    process = spawn(args, env)
    try:
        wait_until_up(ready_url, process)
    except BaseException:
        stop(process)  # not left running after the test
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.fixture(scope="session")
def _simulators() -> Iterator[dict[str, tuple[subprocess.Popen, str]]]:
    """Both simulators, spawned together (and before the server, which asks for them
    first) and each waited for by its own fixture, so the session's three processes
    import Django side by side instead of one after another."""
    fast, slow = free_port(), free_port()
    processes = {
        "fast": (spawn(["run_simulator", "--port", str(fast)], {}), f"http://127.0.0.1:{fast}"),
        "slow": (
            # 5 ms per generated token, for mid-stream behaviour
            spawn(["run_simulator", "--port", str(slow), "--token-delay-ms", "5"], {}),
            f"http://127.0.0.1:{slow}",
        ),
    }
    yield processes
    for process, _ in processes.values():
        stop(process)


@pytest.fixture(scope="session")
def simulator_url(_simulators) -> str:  # type: ignore[no-untyped-def]
    """The simulator at zero delay."""
    process, url = _simulators["fast"]
    wait_until_up(url + "/_sim/health", process, timeout=BOOT_TIMEOUT)
    return url


@pytest.fixture(scope="session")
def slow_simulator_url(_simulators) -> str:  # type: ignore[no-untyped-def]
    """A simulator that spends 5 ms per generated token, for mid-stream behaviour."""
    process, url = _simulators["slow"]
    wait_until_up(url + "/_sim/health", process, timeout=BOOT_TIMEOUT)
    return url


@pytest.fixture(scope="session")
def reckon_url(django_db_setup, django_db_blocker, _simulators) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    with django_db_blocker.unblock():
        url = database_url()
    env = {
        "DATABASE_URL": url,
        "RECKON_AUTH_CACHE_SECONDS": "0.5",
        "RECKON_DRAIN_TIMEOUT_SECONDS": "20",
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        "RECKON_RATE_WINDOW_SECONDS": "3",
        SIM_KEY_ENV: "sim-test-key",
    }
    process = spawn(["serve", "--port", str(port)], env)
    wait_until_up(f"http://127.0.0.1:{port}/v1/models", process, timeout=BOOT_TIMEOUT)
    yield f"http://127.0.0.1:{port}"
    stop(process)


@dataclass
class E2ETenant:
    tenant: Tenant
    raw_key: str
    reckon_url: str
    simulator_url: str

    @property
    def openai_base(self) -> str:
        return self.reckon_url + "/v1"

    def sim_totals(self) -> dict:
        return http("GET", self.simulator_url + "/_sim/totals")[2]  # type: ignore[return-value]


# alias, provider, path under the simulator, upstream model, accelerator
ROUTES = [
    ("reasoner", "openai", "/v1", "sim-reasoner", "nvidia-h100-sxm"),
    ("thinker", "anthropic", "/v1", "sim-thinker", "nvidia-h200-sxm"),
    ("vllm-r1", "openai-compatible", "/quirks/vllm/v1", "sim-r1", "amd-mi300x"),
    ("deepseek-r1", "openai-compatible", "/quirks/deepseek/v1", "sim-r1", ""),
    ("llamacpp-r1", "openai-compatible", "/quirks/llamacpp/v1", "sim-r1", ""),
    ("nonempty-r1", "openai-compatible", "/quirks/nonempty-choices/v1", "sim-r1", ""),
]
SLOW_ROUTES = [
    ("slow-reasoner", "openai", "/v1", "sim-reasoner", ""),
    ("slow-thinker", "anthropic", "/v1", "sim-thinker", ""),
]


def make_routes(simulator_url: str, slow_url: str | None = None) -> list[Route]:
    table = [(simulator_url, r) for r in ROUTES] + [(slow_url, r) for r in SLOW_ROUTES if slow_url]
    return [
        route_set(
            alias=alias,
            provider=provider,
            base_url=base + path,
            upstream_model=model,
            api_key_env=SIM_KEY_ENV,
            accelerator=accelerator,
        )
        for base, (alias, provider, path, model, accelerator) in table
    ]


@pytest.fixture
def e2e(transactional_db, reckon_url, simulator_url, slow_simulator_url) -> E2ETenant:  # type: ignore[no-untyped-def]
    routes = make_routes(simulator_url, slow_simulator_url)
    tenant = tenant_create(name="acme")
    tenant_allow_routes(tenant=tenant, aliases=[r.alias_id for r in routes])
    created = api_key_create(tenant=tenant, name="e2e")
    http("POST", simulator_url + "/_sim/reset")
    http("POST", slow_simulator_url + "/_sim/reset")
    return E2ETenant(tenant, created.raw_key, reckon_url, simulator_url)
