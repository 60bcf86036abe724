"""An invoiced month archived, dropped and restored: its invoice recomputes to the cent
from the archive, then from the restored records (PostgreSQL: months are partitions)."""

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.invoicing.close import period_close
from billing.invoicing.recompute import invoice_recompute
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_create,
)
from metering.ledger.archive import ArchiveMismatch, ledger_month_archive, ledger_month_restore
from metering.ledger.partitions import partition_create
from metering.models import LedgerArchive, UsageRecord
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage as use

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        os.environ.get("DATABASE_URL", "").split(":")[0] not in ("postgres", "postgresql"),
        reason="a month is dropped as a PostgreSQL partition",
    ),
]


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


SEP, OCT = at(2026, 9, 1), at(2026, 10, 1)


def standard_plan():  # type: ignore[no-untyped-def]
    draft = plan_version_create(
        plan=plan_create(code="standard", name="Standard"),
        currency="USD",
        effective_from=at(2026, 1, 1),
        base_fee=Decimal("10"),
        minimum_commitment=Decimal("0"),
        components=[
            {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.00")},
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4.00")},
            {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal("2.00")},
        ],
    )
    return plan_version_publish(version=draft)


def september_ids() -> list[tuple[Any, ...]]:
    return list(
        UsageRecord.objects.filter(started_at__gte=SEP, started_at__lt=OCT)
        .order_by("id")
        .values_list(
            "id",
            "request_id",
            "tenant_id",
            "input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "flags",
        )
    )


def test_an_archived_month_re_invoices_to_the_cent(tmp_path: Path, settings: Any) -> None:
    settings.RECKON_LEDGER_ARCHIVE_URL = (tmp_path / "archive").as_uri()
    partition_create(SEP)
    partition_create(OCT)
    plan = standard_plan()
    keys = [ApiKeyFactory(), ApiKeyFactory()]
    for n, key in enumerate(keys, start=1):
        subscription_create(tenant=key.tenant, plan_version=plan, starts_at=SEP)
        use(key, at(2026, 9, 3), input_tokens=123_457 * n, output_tokens=333_333 * n)
        use(key, at(2026, 9, 17, 5), reasoning_tokens=70_001 * n, output_tokens=1)
        use(key, at(2026, 9, 30, 23, 59), input_tokens=9 * n, reasoning_tokens=1_111_111)
        use(key, at(2026, 10, 2), output_tokens=500_000)  # the next month stays live
    invoices = [
        period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
        for key in keys
    ]
    assert all(invoice.total_minor > 1000 for invoice in invoices)
    assert [invoice_recompute(invoice=i) for i in invoices] == [[], []]
    before = september_ids()
    assert len(before) == 6

    assert ledger_month_archive(month=SEP).state == "dropped"
    assert september_ids() == []
    assert [invoice_recompute(invoice=i) for i in invoices] == [[], []]  # from the archive

    # the check can fail: without the archive, the raw ledger lacks September entirely
    LedgerArchive.objects.filter(month=SEP).update(state="verified")
    assert all(invoice_recompute(invoice=i) for i in invoices)
    LedgerArchive.objects.filter(month=SEP).update(state="dropped")

    # a tampered archive is refused, never read as different usage
    part = tmp_path / "archive" / "2026-09" / "part-00000.parquet"
    good = part.read_bytes()
    part.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(ArchiveMismatch):
        invoice_recompute(invoice=invoices[0])
    part.write_bytes(good)

    assert ledger_month_restore(month=SEP).state == "restored"
    assert september_ids() == before  # the same ids, the same records
    assert [invoice_recompute(invoice=i) for i in invoices] == [[], []]  # from the database
