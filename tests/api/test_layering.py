"""`api` sits on top: metering and billing (their admin and migrations included) never
import it, so staff permission checks there use each app's own codenames
(`<app>/permissions.py`). Management commands may import anything."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["metering", "billing"])
def test_lower_packages_never_import_api(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in _imported_modules(path) if name == "api" or name.startswith("api.")
        )
        for path in (ROOT / package).rglob("*.py")
        if "commands" not in path.parts
    }
    assert {path: names for path, names in offenders.items() if names} == {}
