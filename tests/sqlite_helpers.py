"""Running a test script against SQLite (the embedded default) in a process of its own:
Django is configured once per process, so a fresh SQLite database needs a fresh
interpreter, with the PostgreSQL and Redis settings of the test run left out."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_on_sqlite(script: str, tmp_path: Path) -> str:
    """Run `script` with `python -c` on a fresh SQLite file under `tmp_path`; its
    standard output (it must exit 0)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "RECKON_", "TEST_DATABASE"))
    }
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'reckon.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "RECKON_ENV": "development",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
