"""The dependency rule of docs/architecture.md, checked on every test run: the import-linter
contracts in pyproject.toml (`[tool.importlinter]`) hold for the code as it is.

- layers: entry points (config.asgi/urls/wsgi/admin_site) → api → billing → metering →
  config.errors/settings/celery; imports inside functions count like any other;
- billing reads metering only through its published surface, an allowlist (selectors,
  models, one service (publishing a serving cost rate), the token classes, calendar, the budget list, tenant terms and governance, the
  spool guard, the ledger's rates; calibration's use of the proxy client is the exception);
- no import cycles between modules at any depth.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contract_ids() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [contract["id"] for contract in config["tool"]["importlinter"]["contracts"]]


@pytest.mark.parametrize("contract", contract_ids())
def test_import_contract_holds(contract: str) -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", "--contract", contract],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_caught() -> None:
    """The check can fail: a metering module importing api breaks the layers contract."""
    probe = ROOT / "metering" / "_architecture_probe.py"
    probe.write_text("import api.errors  # noqa: F401\n")
    try:
        result = subprocess.run(
            [str(LINT_IMPORTS), "--no-logo", "--no-cache", "--contract", "layers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "metering._architecture_probe -> api.errors" in result.stdout


def test_a_metering_module_off_the_allowlist_is_closed_to_billing() -> None:
    """billing-reads-metering is an allowlist: any metering module it does not publish
    (here the write services) breaks it, without having to be named."""
    probe = ROOT / "billing" / "_architecture_probe.py"
    probe.write_text(
        "import metering.selectors  # noqa: F401\nimport metering.services  # noqa: F401\n"
    )
    try:
        result = subprocess.run(
            [str(LINT_IMPORTS), "--no-logo", "--no-cache", "--contract", "billing-reads-metering"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "billing._architecture_probe -> metering.services" in result.stdout
    assert "billing._architecture_probe -> metering.selectors" not in result.stdout
