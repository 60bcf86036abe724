"""The importer's settings are checked at start-up, like the other settings (each case
starts `manage.py check` in a fresh process: settings are read once)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RECKON_PROVIDER_REPORT_SETTLE_DAYS", "-1", "must be 0 or more"),
        ("RECKON_PROVIDER_MAX_PAGE_BYTES", "0", "must be at least 1"),
    ],
)
def test_a_bad_value_stops_start_up_with_its_name(name: str, value: str, message: str) -> None:
    refused = check(**{name: value})
    assert refused.returncode != 0
    assert f"{name} {message}" in refused.stderr


def test_the_smallest_good_values_start() -> None:
    started = check(RECKON_PROVIDER_REPORT_SETTLE_DAYS="0", RECKON_PROVIDER_MAX_PAGE_BYTES="1")
    assert started.returncode == 0, started.stderr
