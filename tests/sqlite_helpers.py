"""Running a test script against SQLite (the embedded default) in a process of its own:
Django is configured once per process, so a fresh SQLite database needs a fresh
interpreter, with the PostgreSQL and Redis settings of the test run left out."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MIGRATE = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.db import connections
connections.close_all()  # the last connection's close checkpoints the WAL into the file
"""
_migrated: list[Path] = []  # the session's migrated SQLite file, made on first use


def _migrated_file() -> Path:
    if not _migrated:
        cache = Path(tempfile.mkdtemp(prefix="reckon-sqlite-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        _run(MIGRATE, cache)
        assert not (cache / "reckon.sqlite3-wal").exists()  # all of it is in the one file
        _migrated.append(cache / "reckon.sqlite3")
    return _migrated[0]


def run_on_sqlite(script: str, tmp_path: Path, *, migrated: bool = False) -> str:
    """Run `script` with `python -c` on a fresh SQLite file under `tmp_path`; its
    standard output (it must exit 0). `migrated`: the file starts as a copy of one that
    `migrate` made once per session (what a script that migrates first gets anyway; its
    own `migrate` then has nothing to do), not empty."""
    if migrated:
        shutil.copyfile(_migrated_file(), tmp_path / "reckon.sqlite3")
    return _run(script, tmp_path)


def _run(script: str, tmp_path: Path) -> str:
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
