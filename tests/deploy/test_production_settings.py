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


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"RECKON_ENV", "SECRET_KEY"}}
    base.pop("ALLOWED_HOSTS", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env() -> dict[str, str]:
    return {
        "RECKON_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "api.example.com",
    }


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_flags_the_development_secret_in_production() -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", **{**production_env(), "SECRET_KEY": ""}
    )
    assert result.returncode != 0
    assert "security.W009" in result.stderr


@pytest.mark.parametrize(
    "env, reason",
    [
        ({}, "RECKON_ENV is not set"),
        ({"RECKON_ENV": "production", "ALLOWED_HOSTS": "api.example.com"}, "SECRET_KEY"),
        ({"RECKON_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(50)}, "ALLOWED_HOSTS"),
        (
            {"RECKON_ENV": "production", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "*"},
            "ALLOWED_HOSTS",
        ),
    ],
)
def test_serve_refuses_unsafe_settings(env: dict[str, str], reason: str) -> None:
    result = manage("serve", "--port", "1", **env)
    assert result.returncode == 1
    assert "serve refuses to start" in result.stderr and reason in result.stderr


def test_serve_refuses_a_production_deploy_warning() -> None:
    # a real key and hosts, but HSTS turned off: the deploy check stops the start
    result = manage("serve", "--port", "1", **production_env(), RECKON_HSTS_SECONDS="0")
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
