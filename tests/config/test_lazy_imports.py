"""Django starts without the heavy libraries only some paths use (decision 0123): fpdf2
(with fontTools) for invoice PDFs and the stripe library for Stripe calls. Every server,
worker and `manage.py` process pays for what a boot imports."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAZY = ("stripe", "fpdf", "fontTools")

BOOT = """
import json, sys
import django
django.setup()  # every app, its models and admin
from django.urls import get_resolver
get_resolver().url_patterns  # every view module the URLconf names
import config.asgi  # the server's application
{extra}
print(json.dumps(sorted(name for name in {lazy!r} if name in sys.modules)))
"""


def _imported_at_boot(extra: str = "") -> list[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(
        [sys.executable, "-c", BOOT.format(extra=extra, lazy=LAZY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_django_boots_without_fpdf_and_stripe() -> None:
    assert _imported_at_boot() == []


def test_the_check_sees_a_heavy_import() -> None:
    """The probe above would see them: rendering a PDF and calling Stripe import them."""
    imported = _imported_at_boot("import billing.invoicing.pdf")
    assert "fpdf" in imported and "fontTools" in imported
    assert _imported_at_boot("import stripe") == ["stripe"]
