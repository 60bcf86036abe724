"""Fixtures of the reconciliation tests."""

from datetime import date

import pytest

from metering.reconcile import hooks


@pytest.fixture
def told(monkeypatch) -> list[tuple[int, list[date]]]:  # type: ignore[no-untyped-def]
    """What billing is told: (account id, days) per `rows_changed` call, in order; no
    other handler runs."""
    calls: list[tuple[int, list[date]]] = []
    monkeypatch.setattr(hooks, "_handlers", [lambda account, days: calls.append((account, days))])
    return calls
