"""The docker files cannot run here (no Docker engine), so check what can be checked:
the compose file parses, has every service, and only calls commands that exist."""

from pathlib import Path

import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())


def test_compose_has_every_service() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "web", "worker", "beat", "simulator", "migrate"} <= set(services)
    assert services["web"]["environment"]["DATABASE_URL"].startswith("postgres://")


def test_compose_commands_exist() -> None:
    commands = get_commands()
    for name, service in compose()["services"].items():
        command = service.get("command") or []
        if command[:2] == ["python", "manage.py"]:
            assert command[2] in commands, f"{name} runs unknown command {command[2]}"
        elif command[:1] == ["celery"]:
            assert command[1:3] == ["-A", "config"], name


def test_dockerfile_installs_from_the_lock_file() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "uv sync --frozen --no-dev" in dockerfile
    assert "COPY pyproject.toml uv.lock" in dockerfile


def test_compose_runs_production_with_a_required_secret() -> None:
    env = compose()["x-reckon"]["environment"]
    assert env["RECKON_ENV"] == "production"
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")  # no weak default to fall back on
    assert "*" not in env["ALLOWED_HOSTS"]
    assert "RECKON_ENV=production" in (ROOT / "docker" / "Dockerfile").read_text()
