"""`manage.py reconcile --account NAME --period YYYY-MM`: recomputes the month's days so
far, prints one line per day (worst status, rows by status, largest drift), exits 0; bad
names and periods are clear command errors."""

from datetime import UTC, datetime

import pytest
import time_machine
from django.core.management import CommandError, call_command

from metering.models import ProviderAccount, ReconciliationRow
from tests.metering.conftest import reasoner_served
from tests.metering.reconcile.test_service import bucket

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 10, 7, 9, tzinfo=UTC)


@pytest.fixture
def account() -> ProviderAccount:
    account = ProviderAccount.objects.create(name="oa", provider="openai", admin_key_env="X")
    reasoner_served(account, T0, input_tokens=100, output_tokens=30, reasoning_tokens=70)
    bucket(
        account, "gpt-r", "key_a", at=T0, requests=1, input_uncached_tokens=100, output_tokens=30
    )
    return account


def test_prints_a_line_per_day_with_the_largest_drift(account, capsys) -> None:  # type: ignore[no-untyped-def]
    with time_machine.travel(datetime(2026, 11, 2, tzinfo=UTC), tick=False):
        call_command("reconcile", "--account", "oa", "--period", "2026-10")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "oa 2026-10: 31 day(s); rows 5 new, 0 changed, 0 removed, 0 unchanged"
    assert out[1] == (
        "2026-10-07  drift  (1 drift, 3 matched, 1 not_compared)"
        "  largest drift: gpt-r key key_a output -70 (-2.333333333333) = -reasoning"
    )
    assert len(out) == 2
    with time_machine.travel(datetime(2026, 11, 2, tzinfo=UTC), tick=False):
        call_command("reconcile", "--account", "oa", "--period", "2026-10")
    assert "rows 0 new, 0 changed, 0 removed, 5 unchanged" in capsys.readouterr().out


def test_the_current_month_counts_its_days_so_far_as_pending(account, capsys) -> None:  # type: ignore[no-untyped-def]
    with time_machine.travel(datetime(2026, 10, 8, 12, tzinfo=UTC), tick=False):
        call_command("reconcile", "--account", "oa", "--period", "2026-10")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("oa 2026-10: 8 day(s)")
    assert out[1].startswith("2026-10-07  pending  (")
    assert set(ReconciliationRow.objects.values_list("status", flat=True)) == {
        "pending",
        "not_compared",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "nobody", "--period", "2026-10"], "No provider account named 'nobody'."),
        (["--account", "oa", "--period", "2026-13"], "--period: Use YYYY-MM."),
        (["--account", "oa", "--period", "last month"], "--period: Use YYYY-MM."),
        (["--account", "oa", "--period", "2099-01"], "--period: 2099-01 has not started."),
    ],
)
def test_bad_input_is_a_clear_error(account, args, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError) as error:
        call_command("reconcile", *args)
    assert str(error.value) == message
