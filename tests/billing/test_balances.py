"""Prepaid balances: the pure drawing plan, idempotent credits, invoices paid from
credits (expiring first), voids giving credits back, expiry, and what the proxy holds
calls against."""

import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import time_machine
from django.db import connections

from billing import balances
from billing.balances import (
    BalanceInvalid,
    Credit,
    balance_credit,
    balance_state,
    balance_terms,
    credits_expire,
    plan_draws,
)
from billing.invoicing.close import period_close
from billing.invoicing.documents import invoice_lines_csv, invoice_pdf
from billing.invoicing.lifecycle import invoice_transition
from billing.invoicing.recompute import invoice_recompute
from billing.models import BalanceEntry, Invoice
from billing.plans import subscription_create
from billing.pricing.periods import Period
from config.errors import Conflict
from tests.factories import ApiKeyFactory
from tests.scenarios.test_invoicing_stories import OCT, SEP, at, use, version
from tests.sqlite_helpers import run_on_sqlite

pytestmark = pytest.mark.django_db


@pytest.fixture
def customer():  # type: ignore[no-untyped-def]
    """A tenant on a $10 base fee plus $4 per 1M output tokens since September."""
    key = ApiKeyFactory()
    standard = version("standard", base="10", output="4.00")
    return key, subscription_create(tenant=key.tenant, plan_version=standard, starts_at=SEP)


def credit(entry_id: int, remaining: str, *, expires: datetime | None = None) -> Credit:
    return Credit(
        entry_id=entry_id,
        kind="grant" if expires else "top_up",
        amount=Decimal(remaining),
        remaining=Decimal(remaining),
        effective_at=at(2026, 1, 1),
        expires_at=expires,
    )


SEPTEMBER = Period(SEP, OCT)


def test_draws_take_credits_expiring_first_in_whole_minor_units() -> None:
    credits = [
        credit(1, "5.005"),  # never expires: drawn last
        credit(2, "3.00", expires=at(2026, 12, 1)),
        credit(3, "2.00", expires=at(2026, 9, 20)),
        credit(4, "9.00", expires=at(2026, 8, 31)),  # expired before the period: unusable
    ]
    # a sorted view as credits_of returns it (expiring first)
    ordered = sorted(credits, key=lambda c: (c.expires_at is None, c.expires_at or c.effective_at))
    draws = plan_draws(ordered, due_minor=600, currency="USD", period=SEPTEMBER)
    assert [(d.credit_id, d.amount) for d in draws] == [
        (3, Decimal("2.00")),
        (2, Decimal("3.00")),
        (1, Decimal("1.00")),
    ]
    # never more than the credits hold, rounded DOWN to whole cents: 10.005 -> 10.00
    everything = plan_draws(ordered, due_minor=10_000, currency="USD", period=SEPTEMBER)
    assert sum(d.amount for d in everything) == Decimal("10.00")
    assert plan_draws(ordered, due_minor=0, currency="USD", period=SEPTEMBER) == []
    assert plan_draws(ordered, due_minor=-500, currency="USD", period=SEPTEMBER) == []


def test_credits_are_idempotent_and_validated(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    tenant = key.tenant_id
    first, wrote = balance_credit(
        tenant_id=tenant, kind="top_up", amount=Decimal("25"), idempotency_key="t1"
    )
    again, wrote_again = balance_credit(
        tenant_id=tenant, kind="top_up", amount=Decimal("25"), idempotency_key="t1"
    )
    assert wrote and not wrote_again and first.pk == again.pk and BalanceEntry.objects.count() == 1
    with pytest.raises(Conflict):
        balance_credit(tenant_id=tenant, kind="top_up", amount=Decimal("26"), idempotency_key="t1")
    for bad in (
        {"amount": 2.5},  # float: refused, money is exact
        {"amount": Decimal("-1")},
        {"amount": Decimal("0.001")},  # finer than a cent
        {"amount": Decimal("1"), "expires_at": at(2027, 1, 1)},  # a top-up never expires
        {"amount": Decimal("1"), "kind": "consumption"},
    ):
        with pytest.raises(BalanceInvalid):
            balance_credit(
                tenant_id=tenant,
                **{"kind": "top_up", "idempotency_key": str(bad), **bad},  # type: ignore[arg-type]
            )
    assert BalanceEntry.objects.count() == 1


def test_invoices_are_paid_from_credits_expiring_first_then_expiry_and_void(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer  # base fee $10, output $4 / 1M
    tenant = key.tenant_id
    balance_credit(
        tenant_id=tenant,
        kind="top_up",
        amount=Decimal("5.00"),
        idempotency_key="top",
        effective_at=at(2026, 9, 1),
    )
    grant, _ = balance_credit(
        tenant_id=tenant,
        kind="grant",
        amount=Decimal("20.00"),
        idempotency_key="promo",
        effective_at=at(2026, 9, 1),
        expires_at=at(2026, 10, 15),
    )
    use(key, at(2026, 9, 3), output_tokens=1_000_000, spend_usd=Decimal("4"))  # + $10 base
    with time_machine.travel(at(2026, 9, 20), tick=False):
        state = balance_state(tenant)
        assert state is not None and state.available == Decimal("25.00")
        assert state.watermark is None and state.uninvoiced_spend == Decimal("4")
        assert state.remaining == Decimal("21")
    september = period_close(tenant_id=tenant, period_start=SEP, as_of=at(2026, 10, 3))
    lines = [(line.kind, line.amount_minor) for line in september.lines.order_by("position")]
    assert lines[-1] == ("credit", -1400) and september.total_minor == 0
    assert invoice_recompute(invoice=september) == []
    assert invoice_pdf(september).startswith(b"%PDF")  # a negative line renders
    assert "-14.00" in invoice_lines_csv([september])
    # the expiring grant paid it all: 6.00 of it is left, the top-up untouched
    drawn = BalanceEntry.objects.filter(invoice=september, kind="consumption")
    assert [(e.credit_id, e.amount) for e in drawn] == [(grant.pk, Decimal("-14.00"))]

    with time_machine.travel(at(2026, 10, 20), tick=False):
        state = balance_state(tenant)  # the grant has expired: only the top-up is usable
        assert state is not None and state.available == Decimal("5.00")
        assert state.watermark == OCT
        terms = balance_terms(tenant)
        assert terms is not None
        september_epoch = terms.epoch
        # not yet: October's invoice may still draw on what the grant had left in October
        assert credits_expire() == 0

    use(key, at(2026, 10, 2), output_tokens=500_000)  # $2 + $10 = $12
    october = period_close(tenant_id=tenant, period_start=OCT, as_of=at(2026, 11, 3))
    # 6.00 left of the grant (usable in October) first, then 5.00 of the top-up: 11.00
    assert october.total_minor == 100
    assert invoice_recompute(invoice=october) == []
    assert credits_expire(as_of=at(2026, 11, 3)) == 0  # nothing left to expire

    # voiding September gives its 14.00 back to the grant, whose rest then expires
    invoice_transition(invoice=september, to="void")
    assert BalanceEntry.objects.filter(kind="reversal").count() == 1
    epochs = [september_epoch, balance_terms(tenant).epoch]  # type: ignore[union-attr]
    invoice_transition(invoice=september, to="void")  # idempotent
    assert BalanceEntry.objects.filter(kind="reversal").count() == 1
    assert credits_expire(as_of=at(2026, 11, 3)) == 1
    assert credits_expire(as_of=at(2026, 11, 3)) == 0
    expired = BalanceEntry.objects.get(kind="expiry")
    assert expired.amount == Decimal("-14.00") and expired.credit_id == grant.pk
    # every entry accounts for itself: credits 25, drawn 14 + 11, given back 14, expired 14
    total = sum(e.amount for e in BalanceEntry.objects.all())
    assert total == Decimal("25.00") - 14 - 11 + 14 - 14 == Decimal("0.00")
    assert Invoice.objects.get(pk=october.pk).total_minor == 100
    # every close and void names a new counter for the proxy; none comes back
    reissued = period_close(tenant_id=tenant, period_start=SEP, as_of=at(2026, 11, 4))
    epochs.append(balance_terms(tenant).epoch)  # type: ignore[union-attr]
    assert reissued.total_minor == 1400  # the credits are spent or expired by now
    assert len(set(epochs)) == 3


def test_a_grant_expires_unused_after_the_settling_delay(customer) -> None:  # type: ignore[no-untyped-def]
    key, _ = customer
    balance_credit(
        tenant_id=key.tenant_id,
        kind="grant",
        amount=Decimal("3.00"),
        idempotency_key="g",
        effective_at=at(2026, 1, 1),
        expires_at=at(2026, 2, 1),
    )
    assert credits_expire(as_of=at(2026, 2, 2)) == 0  # no invoice past the expiry yet
    assert credits_expire(as_of=at(2026, 3, 15)) == 1  # long enough: nothing can draw on it
    with time_machine.travel(at(2026, 3, 15), tick=False):
        state = balance_state(key.tenant_id)
    assert state is not None and state.available == 0


def _september_invoiced_from_a_top_up(customer):  # type: ignore[no-untyped-def]
    """A 20.00 top-up, September's use drawing 14.00 of it, September closed: (tenant, its invoice)."""
    key, _ = customer
    tenant = key.tenant_id
    balance_credit(
        tenant_id=tenant,
        kind="top_up",
        amount=Decimal("20.00"),
        idempotency_key="top",
        effective_at=at(2026, 9, 1),
    )
    use(key, at(2026, 9, 3), output_tokens=1_000_000)  # $4 + $10 base: draws 14.00
    return tenant, period_close(tenant_id=tenant, period_start=SEP, as_of=at(2026, 10, 3))


def _on_a_thread_of_its_own(read):  # type: ignore[no-untyped-def]
    """`read()` on another thread (its own database connection, closed after), as the
    proxy's lookups run; its result."""
    seen = []

    def run() -> None:
        try:
            seen.append(read())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def _void_on_another_connection(invoice: Invoice) -> None:
    """Void the invoice and commit, on a connection of another thread, before returning."""
    _on_a_thread_of_its_own(lambda: invoice_transition(invoice=invoice, to="void"))


@pytest.mark.django_db(transaction=True)
def test_terms_read_one_snapshot_when_a_void_commits_mid_read(customer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tenant, september = _september_invoiced_from_a_top_up(customer)
    with time_machine.travel(at(2026, 10, 20), tick=False):
        before = balance_terms(tenant)
        assert before is not None and before.available == Decimal("6.00")

        # The void commits on another connection between the epoch read and the draw read.
        read_draw = balances._last_draw.first

        def void_then_read(account_id: int):  # type: ignore[no-untyped-def]
            _void_on_another_connection(september)
            return read_draw(account_id)

        monkeypatch.setattr(balances._last_draw, "first", void_then_read)
        during = _on_a_thread_of_its_own(lambda: balance_terms(tenant))
        monkeypatch.undo()
        after = balance_terms(tenant)

    assert Invoice.objects.get(pk=september.pk).status == Invoice.Status.VOID
    # all before the void: the old epoch with the old credits (not the restored 20.00)
    assert during is not None and (during.epoch, during.available) == (
        before.epoch,
        before.available,
    )
    assert after is not None and after.epoch != before.epoch
    assert after.available == Decimal("20.00")


@pytest.mark.django_db(transaction=True)
def test_state_reads_one_snapshot_when_a_void_commits_mid_read(customer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The position the API, console and alerts show: a void committed between the
    watermark read and the credits read must not pair the old watermark (September
    invoiced, so its usage not counted) with the credits the void gave back."""
    tenant, september = _september_invoiced_from_a_top_up(customer)
    with time_machine.travel(at(2026, 10, 20), tick=False):
        before = balance_state(tenant)
        assert before is not None
        assert (before.available, before.uninvoiced_spend) == (Decimal("6.00"), 0)

        read_credits = balances.credits_of

        def void_then_read(account_ids, **kwargs):  # type: ignore[no-untyped-def]
            _void_on_another_connection(september)
            return read_credits(account_ids, **kwargs)

        monkeypatch.setattr(balances, "credits_of", void_then_read)
        during = _on_a_thread_of_its_own(lambda: balance_state(tenant))
        monkeypatch.undo()
        after = balance_state(tenant)

    assert Invoice.objects.get(pk=september.pk).status == Invoice.Status.VOID
    # all before the void (not the restored 20.00 beside September's uninvoiced use)
    assert during is not None
    assert (during.available, during.uninvoiced_spend, during.watermark) == (
        before.available,
        before.uninvoiced_spend,
        before.watermark,
    )
    assert after is not None and after.available == Decimal("20.00")
    assert before.watermark is not None and after.watermark is None


SQLITE_TERMS = """
import threading
from decimal import Decimal

import django

django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)
from django.db import connection, connections
from billing.balances import balance_credit, balance_terms
from metering.models import Tenant

tenant = Tenant.objects.create(name="t")
balance_credit(tenant_id=tenant.pk, kind="top_up", amount=Decimal("7"), idempotency_key="k")
seen = []


def lookup():
    try:
        seen.append(balance_terms(tenant.pk))
    finally:
        connections.close_all()


thread = threading.Thread(target=lookup)  # as the proxy's lookup thread reads it
thread.start()
thread.join()
terms = seen[0]
assert terms is not None and terms.available == Decimal("7"), terms
assert terms.load_used() == 0 and connection.get_autocommit()
print("ok", terms.epoch)
"""


def test_terms_read_on_sqlite_from_a_lookup_thread(tmp_path: Path) -> None:
    assert run_on_sqlite(SQLITE_TERMS, tmp_path, migrated=True) == "ok 0.0.0\n"
