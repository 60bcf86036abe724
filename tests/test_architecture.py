"""The dependency rule of docs/architecture.md, checked on every test run: the import-linter
contracts in pyproject.toml (`[tool.importlinter]`) hold for the code as it is.

- layers: entry points (config.asgi/urls/wsgi/admin_site) → api → billing → metering →
  config.errors/settings/celery; imports inside functions count like any other;
- billing reads metering only through its published surface, an allowlist (selectors,
  models, the token classes, calendar, the budget list, tenant terms and governance, the
  spool guard, the ledger's rates; one service: publishing a serving cost rate; calibration's
  use of the proxy client is the exception);
- no import cycles between modules at any depth.
"""

import shutil
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


def lint_imports(contract: str, tree: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", "--contract", contract],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lint_with_probe(tmp_path: Path, module: str, source: str, contract: str) -> str:
    """The contract's report with one extra module (`module`, a path inside the tree) in a
    copy of the tree's packages: the tree itself is never written to, so a test running
    alongside (another xdist worker) or a run killed mid-probe never sees the probe."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in config["tool"]["importlinter"]["root_packages"]:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "static", "templates"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(source)
    result = lint_imports(contract, tree=tmp_path)
    assert result.returncode != 0, result.stdout
    return result.stdout


@pytest.mark.parametrize("contract", contract_ids())
def test_import_contract_holds(contract: str) -> None:
    result = lint_imports(contract)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    """The check can fail: a metering module importing api breaks the layers contract."""
    report = lint_with_probe(
        tmp_path, "metering/_architecture_probe.py", "import api.errors  # noqa: F401\n", "layers"
    )
    assert "metering._architecture_probe -> api.errors" in report


def test_a_metering_module_off_the_allowlist_is_closed_to_billing(tmp_path: Path) -> None:
    """billing-reads-metering is an allowlist: any metering module it does not publish
    (here the write services, open to one billing module only) breaks it, without having
    to be named."""
    report = lint_with_probe(
        tmp_path,
        "billing/_architecture_probe.py",
        "import metering.selectors  # noqa: F401\nimport metering.services  # noqa: F401\n",
        "billing-reads-metering",
    )
    assert "billing._architecture_probe -> metering.services" in report
    assert "billing._architecture_probe -> metering.selectors" not in report
