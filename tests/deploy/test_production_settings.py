"""Production settings pass Django's deployment checks, and `serve` refuses to run on the
development defaults (each command in a fresh process: settings are read at start-up)."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from api.management.commands.serve import serve_refusal

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = "reckon-insecure-dev-key-change-me-in-production"


def spawn(*args: str, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"RECKON_ENV", "SECRET_KEY"}}
    base.pop("ALLOWED_HOSTS", None)
    return subprocess.Popen(  # noqa: S603 - this interpreter and manage.py
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def production_env() -> dict[str, str]:
    return {
        "RECKON_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "api.example.com",
    }


UNSAFE = [
    ({}, "RECKON_ENV is not set"),
    ({"RECKON_ENV": "production", "ALLOWED_HOSTS": "api.example.com"}, "SECRET_KEY"),
    ({"RECKON_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(50)}, "ALLOWED_HOSTS"),
    (
        {"RECKON_ENV": "production", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "*"},
        "ALLOWED_HOSTS",
    ),
]


@pytest.fixture(scope="module")
def ran() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every command of this module, each in a fresh process of its own, all started at
    once (a Django boot is seconds of one core; the machine has more than one)."""
    started = {
        "check": spawn("check", "--deploy", "--fail-level", "WARNING", **production_env()),
        "check-dev-secret": spawn(
            "check", "--deploy", "--fail-level", "WARNING", **{**production_env(), "SECRET_KEY": ""}
        ),
        # a real key and hosts, but HSTS turned off: the deploy check stops the start
        "serve-hsts-off": spawn(
            "serve", "--port", "1", **production_env(), RECKON_HSTS_SECONDS="0"
        ),
        **{
            f"serve-unsafe-{i}": spawn("serve", "--port", "1", **env)
            for i, (env, _) in enumerate(UNSAFE)
        },
    }
    done = {}
    try:
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(
                process.args, process.returncode, stdout, stderr
            )
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return done


def test_check_deploy_is_clean_with_production_settings(ran) -> None:  # type: ignore[no-untyped-def]
    result = ran["check"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_flags_the_development_secret_in_production(ran) -> None:  # type: ignore[no-untyped-def]
    result = ran["check-dev-secret"]
    assert result.returncode != 0
    assert "security.W009" in result.stderr


@pytest.mark.parametrize("case", range(len(UNSAFE)), ids=[reason for _, reason in UNSAFE])
def test_serve_refuses_unsafe_settings(ran, case: int) -> None:  # type: ignore[no-untyped-def]
    result, reason = ran[f"serve-unsafe-{case}"], UNSAFE[case][1]
    assert result.returncode == 1
    assert "serve refuses to start" in result.stderr and reason in result.stderr


def test_serve_refuses_a_production_deploy_warning(ran) -> None:  # type: ignore[no-untyped-def]
    result = ran["serve-hsts-off"]
    assert result.returncode == 1
    assert "security.W004" in result.stderr


@pytest.mark.parametrize(
    "kwargs, refused",
    [
        ({"reckon_env": "development", "secret_key": DEV_KEY, "allowed_hosts": []}, False),
        ({"reckon_env": "production", "secret_key": "k" * 60, "allowed_hosts": ["a.b"]}, False),
        ({"reckon_env": None, "secret_key": "k" * 60, "allowed_hosts": ["a.b"]}, True),
        ({"reckon_env": "production", "secret_key": DEV_KEY, "allowed_hosts": ["a.b"]}, True),
    ],
)
def test_serve_refusal(kwargs: dict, refused: bool) -> None:
    assert (serve_refusal(development_secret_key=DEV_KEY, **kwargs) is not None) is refused
