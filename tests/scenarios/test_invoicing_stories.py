"""Billing stories across time: the clock moves (time-machine), Celery tasks run eagerly,
and every invoice is asserted to the minor unit."""

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
import time_machine

from billing import tasks
from billing.faults import InjectedFault
from billing.invoicing.close import period_close
from billing.invoicing.lifecycle import credit_note_issue, invoice_transition
from billing.invoicing.recompute import invoice_recompute
from billing.models import Invoice, InvoiceLine
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_publish,
    subscription_change_plan,
    subscription_create,
)
from config.errors import ApplicationError, Conflict
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage as use

pytestmark = pytest.mark.django_db


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


SEP, OCT, NOV, DEC = at(2026, 9, 1), at(2026, 10, 1), at(2026, 11, 1), at(2026, 12, 1)


def version(code: str, *, base: str, output: str, minimum: str = "0"):  # type: ignore[no-untyped-def]
    plan = plan_create(code=code, name=code.title())
    draft = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=at(2026, 1, 1),
        base_fee=Decimal(base),
        minimum_commitment=Decimal(minimum),
        components=[
            {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.00")},
            {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal(output)},
            {"token_class": "reasoning", "charge_model": "per_unit", "unit_price": Decimal("2.00")},
        ],
    )
    return plan_version_publish(version=draft)


def amounts(invoice: Invoice) -> list[tuple[str, int]]:
    return [(line.kind, line.amount_minor) for line in invoice.lines.order_by("position")]


@pytest.fixture
def customer():  # type: ignore[no-untyped-def]
    key = ApiKeyFactory()
    standard = version("standard", base="10", output="4.00")
    subscription = subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
    return key, subscription


def close_month(as_of: datetime) -> list[Invoice]:
    with time_machine.travel(as_of, tick=False):
        tasks.close_due_periods.delay()
    return list(Invoice.objects.order_by("period_start"))


def test_month_close_late_usage_and_plan_change_at_a_boundary(customer) -> None:  # type: ignore[no-untyped-def]
    key, subscription = customer
    with time_machine.travel(at(2026, 9, 15), tick=False):
        use(
            key,
            at(2026, 9, 14),
            input_tokens=1_000_000,
            output_tokens=500_000,
            reasoning_tokens=2_000_000,
        )
    # late usage inside the grace period lands on September's invoice
    with time_machine.travel(at(2026, 10, 1, 12), tick=False):
        use(key, at(2026, 9, 30, 23, 30), reasoning_tokens=250_000)
        assert tasks.close_due_periods.delay().get() == 0  # still inside the 24 h grace
    (sep,) = close_month(at(2026, 10, 2, 1))
    assert sep.number == "RK-2026-000001" and sep.status == "finalized"
    assert amounts(sep) == [("base_fee", 1000), ("usage", 100), ("usage", 200), ("usage", 450)]
    assert sep.total_minor == 1750
    assert str(sep.issue_date) == "2026-10-02" and str(sep.due_date) == "2026-11-01"

    # usage recorded after finalization: September's invoice never changes ...
    with time_machine.travel(at(2026, 10, 5), tick=False):
        use(key, at(2026, 9, 30, 22), reasoning_tokens=1_000_000)
        use(key, at(2026, 10, 20), output_tokens=100_000)
    # ... and a plan change takes effect exactly at the next period boundary
    premium = version("premium", base="20", output="8.00")
    with time_machine.travel(at(2026, 10, 25), tick=False):
        subscription_change_plan(subscription=subscription, plan_version=premium, at=NOV)
    sep_again, oct_ = close_month(at(2026, 11, 2, 1))
    assert amounts(sep_again) == amounts(sep) and sep_again.total_minor == 1750
    assert oct_.number == "RK-2026-000002"
    assert amounts(oct_) == [
        ("base_fee", 1000),
        ("usage", 0),
        ("usage", 40),
        ("usage", 0),
        ("adjustment", 200),
    ]
    adjustment = oct_.lines.get(kind="adjustment")
    assert adjustment.adjusts_period_start == SEP
    assert "2026-09-01" in adjustment.description and sep.number in adjustment.description
    assert oct_.total_minor == 1240

    with time_machine.travel(at(2026, 11, 10), tick=False):
        use(key, at(2026, 11, 9), output_tokens=1_000_000)
    *_, nov = close_month(at(2026, 12, 2, 1))
    assert [line.plan_version_id for line in nov.lines.all()] == [premium.pk] * 4  # one segment
    assert amounts(nov) == [("base_fee", 2000), ("usage", 0), ("usage", 800), ("usage", 0)]
    assert nov.total_minor == 2800
    for invoice in Invoice.objects.all():  # every figure reproducible from the raw ledger
        assert invoice_recompute(invoice=invoice) == [], invoice


def test_minimum_commitment_true_up() -> None:
    key = ApiKeyFactory()
    committed = version("committed", base="0", output="4.00", minimum="50")
    subscription_create(tenant=key.tenant, plan_version=committed, starts_at=SEP)
    with time_machine.travel(at(2026, 9, 10), tick=False):
        use(key, at(2026, 9, 9), output_tokens=2_500_000)  # 10.00 of usage
    (sep,) = close_month(at(2026, 10, 3))
    assert amounts(sep) == [("usage", 0), ("usage", 1000), ("usage", 0), ("minimum_true_up", 4000)]
    assert sep.total_minor == 5000


def test_closing_twice_gives_one_invoice(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    use(key, at(2026, 9, 3), output_tokens=1_000_000)
    first = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    again = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 4))
    close_month(at(2026, 10, 5))
    assert first.pk == again.pk and Invoice.objects.count() == 1
    assert again.number == "RK-2026-000001" and again.total_minor == 1400


def test_period_is_not_closed_before_its_grace_period(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    with pytest.raises(ApplicationError, match="grace"):
        period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 1, 23))


@pytest.mark.parametrize("fault", ["after_lines", "after_finalize"])
def test_crash_mid_close_then_rerun_gives_one_invoice_same_number_same_totals(
    customer, settings, fault: str
) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    use(
        key, at(2026, 9, 3), input_tokens=123_456, output_tokens=654_321, reasoning_tokens=1_234_567
    )
    settings.RECKON_FAULT_POINTS = frozenset({fault})
    with pytest.raises(InjectedFault):
        period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert Invoice.objects.count() == 0 and InvoiceLine.objects.count() == 0
    settings.RECKON_FAULT_POINTS = frozenset()
    invoice = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert Invoice.objects.count() == 1
    assert invoice.number == "RK-2026-000001"
    # 10.00 + 0.123456 + 2.617284 + 2.469134 -> 1000 + 12 + 262 + 247
    assert amounts(invoice) == [("base_fee", 1000), ("usage", 12), ("usage", 262), ("usage", 247)]
    assert invoice.total_minor == 1521


def test_credit_notes_void_and_reissue(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    use(key, at(2026, 9, 3), output_tokens=1_000_000)
    invoice = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    partial = credit_note_issue(invoice=invoice, reason="goodwill", amount_minor=400)
    assert (partial.number, partial.amount_minor) == ("RKCN-2026-000001", 400)
    with pytest.raises(ApplicationError):
        credit_note_issue(invoice=invoice, reason="too much", amount_minor=1001)
    rest = credit_note_issue(invoice=invoice, reason="full refund")
    assert (rest.number, rest.amount_minor) == ("RKCN-2026-000002", 1000)

    void = invoice_transition(invoice=invoice, to="void")
    with pytest.raises(Conflict):
        invoice_transition(invoice=void, to="paid")  # terminal states stay terminal
    reissued = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 4))
    assert reissued.pk != invoice.pk and reissued.replaces_id == invoice.pk
    assert reissued.number == "RK-2026-000002" and reissued.total_minor == 1400
    assert Invoice.objects.filter(status="void").count() == 1


def test_recompute_reports_a_tampered_line(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    use(key, at(2026, 9, 3), output_tokens=1_000_000)
    invoice = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    assert invoice_recompute(invoice=invoice) == []
    InvoiceLine.objects.filter(invoice=invoice, position=2).update(amount_minor=399)
    differences = invoice_recompute(invoice=invoice)
    assert [(d.position, d.field, d.invoiced, d.recomputed) for d in differences][:1] == [
        (2, "amount_minor", 399, 400)
    ]


def test_batch_close_equals_closing_one_by_one() -> None:
    from billing.invoicing.close import periods_close

    standard = version("standard", base="10", output="4.00")
    keys = [ApiKeyFactory() for _ in range(6)]
    for n, key in enumerate(keys):
        subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)
        use(
            key,
            at(2026, 9, 2 + n),
            input_tokens=1_000 * n,
            output_tokens=333_333 * n,
            reasoning_tokens=70_001 * n,
        )
    alone = [
        period_close(tenant_id=k.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
        for k in keys[:3]
    ]
    batch = periods_close(
        tenant_ids=[k.tenant_id for k in keys], period_start=SEP, as_of=at(2026, 10, 3)
    )
    by_tenant = {i.tenant_id: i for i in batch}
    assert [by_tenant[k.tenant_id].pk for k in keys[:3]] == [
        i.pk for i in alone
    ]  # already closed: returned as-is
    for invoice in batch:
        key = next(k for k in keys if k.tenant_id == invoice.tenant_id)
        n = keys.index(key)
        cents = [
            Decimal(1_000 * n) / 10_000,
            Decimal(333_333 * n * 4) / 10_000,
            Decimal(70_001 * n * 2) / 10_000,
        ]
        expected = [1000] + [int(c.quantize(Decimal(1), rounding=ROUND_HALF_UP)) for c in cents]
        assert [a for _, a in amounts(invoice)] == expected, n
        assert invoice_recompute(invoice=invoice) == []
    numbers = sorted(i.number for i in batch)
    assert numbers == [f"RK-2026-{n:06d}" for n in range(1, 7)]


def test_one_broken_tenant_does_not_hold_back_the_batch(customer) -> None:  # type: ignore[no-untyped-def]
    from billing.invoicing.close import CloseFailed
    from metering.models import Tenant

    key, _ = customer
    orphan = Tenant.objects.create(name="no subscription")
    with time_machine.travel(at(2026, 10, 3), tick=False), pytest.raises(CloseFailed) as excinfo:
        tasks.close_periods.delay(SEP.isoformat(), [str(key.tenant_id), str(orphan.pk)]).get()
    assert list(excinfo.value.extra["failures"]) == [str(orphan.pk)]
    assert Invoice.objects.get().tenant_id == key.tenant_id


def test_a_period_with_later_adjustments_cannot_be_voided(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    use(key, at(2026, 9, 3), output_tokens=1_000_000)
    sep = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    use(key, at(2026, 9, 29), output_tokens=1_000_000)  # late
    october = period_close(tenant_id=key.tenant_id, period_start=OCT, as_of=at(2026, 11, 3))
    assert october.lines.filter(kind="adjustment").get().amount_minor == 400
    with pytest.raises(Conflict, match=october.number):
        invoice_transition(invoice=sep, to="void")  # re-issuing would bill the late usage twice


def test_plan_change_cannot_reach_into_an_invoiced_period(customer) -> None:  # type: ignore[no-untyped-def]
    key, subscription = customer
    period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    premium = version("premium", base="20", output="8.00")
    with pytest.raises(ApplicationError, match="already invoiced"):
        subscription_change_plan(
            subscription=subscription, plan_version=premium, at=at(2026, 9, 16)
        )
    assert (
        subscription_change_plan(subscription=subscription, plan_version=premium, at=OCT).starts_at
        == OCT
    )


def test_prorated_base_fee_keeps_its_remainder() -> None:
    key = ApiKeyFactory()
    first = subscription_create(
        tenant=key.tenant, plan_version=version("a", base="10", output="4.00"), starts_at=SEP
    )
    second = subscription_change_plan(
        subscription=first, plan_version=version("b", base="10", output="4.00"), at=at(2026, 9, 11)
    )
    subscription_change_plan(
        subscription=second, plan_version=version("c", base="10", output="4.00"), at=at(2026, 9, 21)
    )
    invoice = period_close(tenant_id=key.tenant_id, period_start=SEP, as_of=at(2026, 10, 3))
    fees = [
        line.amount_minor for line in invoice.lines.filter(kind="base_fee").order_by("position")
    ]
    assert fees == [333, 333, 334] and sum(fees) == 1000  # thirds of $10, remainder on the last
    assert invoice_recompute(invoice=invoice) == []
