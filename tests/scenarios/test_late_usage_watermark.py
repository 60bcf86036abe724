"""Late usage across writers: record ids are assigned at INSERT and commit out of order, so
a record with a LOWER id than the close's cut-off can commit after the close. Two ledger
writers on their own PostgreSQL connections run the real batch statement; writer A holds
its transaction open across the September close. Its record must be billed on the next
invoice as late usage, exactly once."""

import uuid
from datetime import datetime
from typing import Any

import psycopg
import pytest
from django.db import connection

from billing.invoicing.close import period_close
from billing.invoicing.recompute import invoice_recompute
from billing.models import InvoiceLine
from billing.plans import subscription_create
from metering.ledger.orm import usage_records_write
from metering.ledger.postgres import pg_conninfo, pg_insert_statement
from metering.models import UsageRecord, UsageRollup
from metering.selectors import usage_watermark
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import NOV, OCT, SEP, at, version
from tests.usage_helpers import record_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="concurrent PostgreSQL writers"),
]

# 1M input at 1.00 + 0.5M output at 4.00 + 0.25M reasoning at 2.00 per 1M tokens = 3.50 USD
TOKENS = {"input_tokens": 1_000_000, "output_tokens": 500_000, "reasoning_tokens": 250_000}
PRICE_MINOR = 350


def usage(key: Any, started_at: datetime) -> dict[str, Any]:
    record = record_for(key, started_at=started_at, finished_at=started_at, **TOKENS)
    record["request_id"] = str(record["request_id"])
    record["tenant_id"] = str(record["tenant_id"])
    return record


def writer() -> psycopg.Connection[Any]:
    return psycopg.connect(
        pg_conninfo(connection.settings_dict), autocommit=True, cursor_factory=psycopg.RawCursor
    )


def test_a_lower_id_committed_after_the_close_is_billed_next_time_exactly_once() -> None:
    key = ApiKeyFactory()
    standard = version("standard", base="10", output="4.00")
    subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
    late, early = usage(key, at(2026, 9, 20)), usage(key, at(2026, 9, 21))

    with writer() as a, writer() as b:
        a.execute("BEGIN")
        a.execute(*pg_insert_statement([late], [], shard=1))  # takes the lower id, uncommitted
        b.execute(*pg_insert_statement([early], [], shard=2))  # higher id, commits (autocommit)
        ids = dict(UsageRecord.objects.values_list("request_id", "id"))
        assert uuid.UUID(early["request_id"]) in ids and uuid.UUID(late["request_id"]) not in ids

        september = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
        a.execute("COMMIT")  # the lower id lands after the close saw a higher one

    late_id = UsageRecord.objects.get(request_id=late["request_id"]).pk
    assert late_id < september.usage_cutoff_record_id  # what the old id cut-off could not see
    assert september.total_minor == 1000 + PRICE_MINOR  # the base fee and the early record

    october = period_close(tenant_id=key.tenant_id, period_start=OCT, as_of=at(2026, 11, 3))
    adjustments = october.lines.filter(kind=InvoiceLine.Kind.ADJUSTMENT)
    assert [(a.adjusts_period_start, a.amount_minor) for a in adjustments] == [(SEP, PRICE_MINOR)]
    assert october.total_minor == 1000 + PRICE_MINOR

    november = period_close(tenant_id=key.tenant_id, period_start=NOV, as_of=at(2026, 12, 3))
    assert not november.lines.filter(kind=InvoiceLine.Kind.ADJUSTMENT).exists()  # not twice
    assert november.total_minor == 1000

    billed_for_september = sum(
        line.amount_minor
        for line in InvoiceLine.objects.filter(invoice__tenant=key.tenant)
        if line.invoice.period_start == SEP
        and line.kind != InvoiceLine.Kind.ADJUSTMENT
        or line.adjusts_period_start == SEP
    )
    assert billed_for_september == 1000 + 2 * PRICE_MINOR  # both records, once each
    assert invoice_recompute(invoice=october) == []  # the adjustment is reproducible


def test_every_writer_path_stamps_rollups_at_or_above_a_watermark_taken_before() -> None:
    """The batch statement and the ORM path (spool replay) both stamp the rollups they
    change with their transaction id: never below a watermark taken before they ran."""
    key = ApiKeyFactory()
    before = usage_watermark()
    with writer() as b:
        b.execute(*pg_insert_statement([usage(key, at(2026, 9, 20, 1))], [], shard=3))
    usage_records_write([record_for(key, started_at=at(2026, 9, 20, 2))])
    stamps = list(UsageRollup.objects.values_list("changed_xid", flat=True))
    assert len(stamps) == 2 and all(stamp >= before for stamp in stamps)
