"""reconciliation_summary: per provider account, its days of a window rolled up (rows per
status, settled and unsettled days, the largest drifts): what the staff page renders."""

from datetime import UTC, date, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering.models import ProviderAccount, ReconciliationRow
from metering.reconcile.selectors import reconciliation_days, reconciliation_summary

pytestmark = pytest.mark.django_db
AT = datetime(2026, 10, 21, tzinfo=UTC)


def _row(account: ProviderAccount, day: int, token_class: str, status: str, drift: int = 0) -> None:
    ReconciliationRow.objects.create(
        account=account,
        day=date(2026, 10, day),
        upstream_model="gpt-x",
        token_class=token_class,
        ours=1000,
        theirs=1000 + drift,
        drift=drift,
        status=status,
        computed_at=AT,
    )


def test_each_account_rolled_up_over_the_window() -> None:
    oa = ProviderAccount.objects.create(name="oa", provider="openai", admin_key_env="K")
    an = ProviderAccount.objects.create(name="an", provider="anthropic", admin_key_env="K")
    ProviderAccount.objects.create(name="idle", provider="anthropic", admin_key_env="K")
    _row(oa, 1, "requests", "matched")
    _row(oa, 2, "requests", "matched")
    _row(oa, 2, "output", "drift", -700)
    _row(oa, 3, "output", "drift", 40)
    _row(oa, 19, "requests", "pending")
    _row(an, 5, "input", "drift", 900)
    _row(an, 31, "input", "drift", 5000)  # outside [Oct 1, Oct 31)
    with CaptureQueriesContext(connection) as queries:
        summary = reconciliation_summary(start=date(2026, 10, 1), end=date(2026, 10, 31))
    assert len(queries) == 2  # the rows of every account, the accounts
    assert [s.account.name for s in summary] == ["an", "idle", "oa"]
    an_s, idle, oa_s = summary
    assert (len(oa_s.days), oa_s.settled, oa_s.unsettled) == (4, 3, 1)
    assert oa_s.by_status == [("drift", 2), ("matched", 2), ("pending", 1)]
    assert [r.drift for r in oa_s.worst] == [-700, 40]
    assert oa_s.days == reconciliation_days(
        account_id=oa.pk, start=date(2026, 10, 1), end=date(2026, 10, 31)
    )
    assert (len(an_s.days), an_s.by_status, [r.drift for r in an_s.worst]) == (
        1,
        [("drift", 1)],
        [900],
    )
    assert (idle.days, idle.settled, idle.unsettled, idle.by_status, idle.worst) == (
        [],
        0,
        0,
        [],
        [],
    )
    only = reconciliation_summary(start=date(2026, 10, 1), end=date(2026, 10, 31), account_id=an.pk)
    assert [s.account.name for s in only] == ["an"] and only[0].by_status == [("drift", 1)]
