"""Prepaid credit balances: top-ups, grants that expire, consumption by invoices.

The balance ledger (BalanceEntry) is append-only. A credit's remaining amount is its
amount plus its draws (consumption and expiry are negative, a reversal gives a voided
invoice's consumption back). Credits pay invoices when a period closes: the credits
usable during the period, those expiring first drawn first, cover as much of the invoice
as they can (whole minor units), shown as one negative "credit" line. Between closes the
proxy holds calls against what is available now minus the period's usage at list price
(`balance_state`), so a prepaid tenant can never run up more usage than its credits.
"""

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, router, transaction
from django.db.models import Count, Max, Model, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import BalanceAccount, BalanceEntry, Invoice, InvoiceLine
from billing.pricing.currency import from_minor, is_known_currency, quantize, to_minor
from billing.pricing.periods import Period
from config.compiled_sql import INT_SLOT, UUID_SLOT, CompiledQuery
from config.errors import ApplicationError, Conflict, NotFound
from metering.control.terms import BalanceTerms
from metering.models import Tenant
from metering.selectors import spend_since

Kind = BalanceEntry.Kind
ZERO = Decimal(0)
# A grant that expired this long ago can no longer be drawn by any invoice still to come
# (a period is at most 31 days, closed after its grace period), so its rest expires.
EXPIRY_SETTLE_AFTER = timedelta(days=40)


class BalanceInvalid(ApplicationError):
    code = "balance_invalid"


@dataclass(frozen=True)
class Credit:
    entry_id: int
    kind: str
    amount: Decimal
    remaining: Decimal
    effective_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class BalanceState:
    """What a prepaid tenant can still spend now."""

    currency: str
    hard_stop: bool
    # Credits usable now, net of what invoices already consumed.
    available: Decimal
    # Usage since the last invoiced period, at list price (not yet drawn from credits).
    uninvoiced_spend: Decimal
    # The end of the last invoiced period (None: no invoice yet); usage after it is uninvoiced.
    watermark: datetime | None

    @property
    def remaining(self) -> Decimal:
        return self.available - self.uninvoiced_spend


# --- writes ----------------------------------------------------------------------------


@transaction.atomic
def balance_account_open(
    *, tenant_id: uuid.UUID, currency: str = "USD", hard_stop: bool = True
) -> BalanceAccount:
    if not is_known_currency(currency):
        raise BalanceInvalid(f"Unknown currency {currency!r}.")
    account, created = BalanceAccount.objects.get_or_create(
        tenant_id=tenant_id, defaults={"currency": currency.upper(), "hard_stop": hard_stop}
    )
    if not created and account.currency != currency.upper():
        raise Conflict(f"The tenant's balance is in {account.currency}, not {currency.upper()}.")
    return account


def balance_credit(
    *,
    tenant_id: uuid.UUID,
    kind: str,
    amount: Decimal,
    idempotency_key: str,
    currency: str = "USD",
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    description: str = "",
) -> tuple[BalanceEntry, bool]:
    """Add a top-up or a grant; returns the entry and whether this call wrote it.
    Retrying with the same idempotency key (per tenant) returns the entry written the
    first time; the same key with different terms is a conflict."""
    if not is_known_currency(currency):
        raise BalanceInvalid(f"Unknown currency {currency!r}.")
    if not Tenant.objects.filter(pk=tenant_id).exists():
        raise NotFound(f"Unknown tenant {tenant_id}.")
    if kind not in BalanceEntry.CREDIT_KINDS:
        raise BalanceInvalid(f"kind must be one of {', '.join(BalanceEntry.CREDIT_KINDS)}.")
    if isinstance(amount, float) or not isinstance(amount, Decimal | int):
        raise BalanceInvalid("amount must be an exact decimal, not a float.")
    amount = Decimal(amount)
    if not amount.is_finite() or amount <= 0:
        raise BalanceInvalid("amount must be positive.")
    if quantize(amount, currency, "ROUND_DOWN") != amount:
        raise BalanceInvalid(f"amount has more decimals than {currency.upper()} has.")
    explicit_start = effective_at
    effective_at = effective_at or timezone.now()
    if expires_at is not None and kind != Kind.GRANT:
        raise BalanceInvalid("Only grants expire; a top-up is the tenant's money.")
    if expires_at is not None and expires_at <= effective_at:
        raise BalanceInvalid("expires_at must be after effective_at.")
    key = f"credit:{tenant_id}:{idempotency_key}"
    with transaction.atomic():
        account = balance_account_open(tenant_id=tenant_id, currency=currency)
        existing = BalanceEntry.objects.filter(idempotency_key=key).first()
        if existing is not None:
            same = (
                existing.account_id == account.pk
                and existing.kind == kind
                and existing.amount == amount
                and existing.expires_at == expires_at
                and (explicit_start is None or existing.effective_at == explicit_start)
            )
            if not same:
                raise Conflict("This idempotency key was used for a different credit.")
            return existing, False
        try:
            with transaction.atomic():
                entry = BalanceEntry.objects.create(
                    account=account,
                    kind=kind,
                    amount=amount,
                    effective_at=effective_at,
                    expires_at=expires_at,
                    idempotency_key=key,
                    description=description,
                )
                return entry, True
        except IntegrityError:  # a concurrent retry won the race: answer as it did
            return BalanceEntry.objects.get(idempotency_key=key), False


@transaction.atomic
def balance_hard_stop_set(
    *, tenant_id: uuid.UUID, hard_stop: bool, currency: str | None = None
) -> BalanceAccount:
    """Open the tenant's balance if it has none (in `currency`, USD by default), then set
    whether it stops calls. Naming another currency than the balance's is a conflict."""
    existing = BalanceAccount.objects.select_for_update().filter(tenant_id=tenant_id).first()
    if existing is not None and currency is None:
        currency = existing.currency
    account = balance_account_open(
        tenant_id=tenant_id, currency=currency or "USD", hard_stop=hard_stop
    )
    if account.hard_stop != hard_stop:
        account.hard_stop = hard_stop
        account.save(update_fields=["hard_stop"])
    return account


# --- reads -----------------------------------------------------------------------------


def _credit_rows(entries: "QuerySet[BalanceEntry]") -> "QuerySet[BalanceEntry, tuple]":
    """(pk, kind, amount, effective_at, expires_at, drawn) of these credit entries."""
    return entries.annotate(drawn=Coalesce(Sum("draws__amount"), ZERO)).values_list(
        "pk", "kind", "amount", "effective_at", "expires_at", "drawn"
    )


# One account's credits (what the proxy's terms read every few seconds), compiled once.
_account_credits = CompiledQuery(
    lambda account_id: _credit_rows(
        BalanceEntry.objects.filter(account_id=account_id, kind__in=BalanceEntry.CREDIT_KINDS)
    ),
    INT_SLOT,
)


def credits_of(account_ids: Iterable[int], *, for_update: bool = False) -> list[Credit]:
    """Every credit of these accounts with what remains of it, in drawing order (those
    expiring first, then the oldest)."""
    ids = list(account_ids)
    if len(ids) == 1 and not for_update:
        rows = _account_credits.rows(ids[0])
    else:
        entries = BalanceEntry.objects.filter(
            account_id__in=ids, kind__in=BalanceEntry.CREDIT_KINDS
        )
        if for_update:  # lock, then aggregate unlocked
            entries = BalanceEntry.objects.filter(
                pk__in=list(entries.select_for_update().values_list("pk", flat=True))
            )
        rows = list(_credit_rows(entries))
    credits = [
        Credit(
            entry_id=pk,
            kind=kind,
            amount=amount,
            remaining=amount + drawn,
            effective_at=effective_at,
            expires_at=expires_at,
        )
        for pk, kind, amount, effective_at, expires_at, drawn in rows
    ]
    # expiring credits first (soonest first), then those that never expire (oldest first)
    return sorted(
        credits, key=lambda c: (c.expires_at is None, c.expires_at or c.effective_at, c.entry_id)
    )


def _usable(credit: Credit, start: datetime, end: datetime) -> bool:
    """Usable at some instant of [start, end)."""
    return credit.effective_at < end and (credit.expires_at is None or credit.expires_at > start)


def available_at(credits: list[Credit], at: datetime) -> Decimal:
    return sum(
        (
            c.remaining
            for c in credits
            if c.remaining > 0 and _usable(c, at, at + timedelta(microseconds=1))
        ),
        ZERO,
    )


# An invoice that counts for the watermark: numbered, not void.
_INVOICED = Q(number__isnull=False) & ~Q(status=Invoice.Status.VOID)

_invoiced_through = CompiledQuery(
    lambda tenant_id: (
        Invoice.objects.filter(_INVOICED, tenant_id=tenant_id)
        .values("tenant_id")
        .annotate(end=Max("period_end"))
        .order_by()
        .values_list("end")
    ),
    UUID_SLOT,
)


def invoiced_through(tenant_id: uuid.UUID) -> datetime | None:
    """The end of the tenant's last invoiced period (void invoices do not count)."""
    row = _invoiced_through.first(tenant_id)
    return None if row is None else row[0]


def uninvoiced_spend(tenant_id: uuid.UUID, since: datetime | None) -> Decimal:
    """List-price spend since the watermark, flagged records included (the proxy holds
    them against the balance too): a hard stop never forgets usage it has seen."""
    return spend_since(tenant_id=tenant_id, since=since)


def balance_state(tenant_id: uuid.UUID, at: datetime | None = None) -> BalanceState | None:
    """The tenant's prepaid position now (None: no balance account).

    The watermark, the credits and the use since the watermark are read in one snapshot
    (`_one_snapshot`), so a close or a void committed meanwhile shows wholly or not at
    all. Inside a caller's READ COMMITTED transaction the reads keep this order on
    purpose: a close committed in between can then only pair the old watermark with the
    new (smaller) credits, which shows a little less for a moment, never more."""
    account = BalanceAccount.objects.filter(tenant_id=tenant_id).first()
    if account is None:
        return None
    at = at or timezone.now()
    with _one_snapshot(Invoice):
        watermark = invoiced_through(tenant_id)
        credits = credits_of([account.pk])
        spend = uninvoiced_spend(tenant_id, watermark)
    return BalanceState(
        currency=account.currency,
        hard_stop=account.hard_stop,
        available=available_at(credits, at),
        uninvoiced_spend=spend,
        watermark=watermark,
    )


_hard_stop_account = CompiledQuery(
    lambda tenant_id: (
        BalanceAccount.objects.filter(tenant_id=tenant_id, hard_stop=True)
        .order_by("pk")
        .values_list("pk")[:1]
    ),
    UUID_SLOT,
)


def balance_terms(tenant_id: uuid.UUID) -> BalanceTerms | None:
    """The balance as the proxy holds calls against it (None: no balance that stops calls).
    The use since the watermark loads lazily.

    The epoch names the pair (watermark, credits) the proxy's counter for the balance is
    built on. It changes whenever a close or a void moves either, and never comes back to
    an earlier value (ids and void counts only grow). The epoch, the watermark and the
    credits are read in one snapshot (`_one_snapshot`), so a counter is never built on a
    pair from before a close or void and an epoch from after it."""
    account = _hard_stop_account.first(tenant_id)  # most tenants: none, one read
    if account is None:
        return None
    with _one_snapshot(Invoice):
        last_invoice, voided, watermark = _invoices_seen.first(tenant_id) or (None, 0, None)
        last_draw = _last_draw.first(account[0])
        credits = credits_of([account[0]])
    epoch = f"{last_invoice or 0}.{voided}.{(last_draw and last_draw[0]) or 0}"
    return BalanceTerms(
        available=available_at(credits, timezone.now()),
        epoch=epoch,
        load_used=lambda: uninvoiced_spend(tenant_id, watermark),
    )


@contextmanager
def _one_snapshot(model: type[Model]) -> Iterator[None]:
    """The reads inside see one state of the database the router reads `model` from: a
    REPEATABLE READ READ ONLY transaction on PostgreSQL, a transaction on SQLite (whose
    reads inside one see one state). Inside a caller's transaction, that transaction's."""
    using = router.db_for_read(model) or DEFAULT_DB_ALIAS
    connection = connections[using]
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


# The tenant's last invoice, how many are void, and the watermark (`invoiced_through`).
_invoices_seen = CompiledQuery(
    lambda tenant_id: (
        Invoice.objects.filter(tenant_id=tenant_id)
        .values("tenant_id")
        .annotate(
            last=Max("pk"),
            voided=Count("pk", filter=Q(status=Invoice.Status.VOID)),
            end=Max("period_end", filter=_INVOICED),
        )
        .order_by()
        .values_list("last", "voided", "end")
    ),
    UUID_SLOT,
)
_last_draw = CompiledQuery(
    lambda account_id: (
        BalanceEntry.objects.filter(
            account_id=account_id, kind__in=[Kind.CONSUMPTION, Kind.REVERSAL]
        )
        .values("account_id")
        .annotate(last=Max("pk"))
        .order_by()
        .values_list("last")
    ),
    INT_SLOT,
)


# --- invoices draw on credits ------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    credit_id: int
    amount: Decimal  # positive: how much of the credit the invoice uses


def plan_draws(
    credits: list[Credit], *, due_minor: int, currency: str, period: Period
) -> list[Draw]:
    """How much of which credits pays an invoice of `due_minor`: whole minor units only,
    credits usable during the period, in drawing order. Pure."""
    usable = [c for c in credits if c.remaining > 0 and _usable(c, period.start, period.end)]
    total = sum((c.remaining for c in usable), ZERO)
    # never more than the credits hold: round the pot down to whole minor units
    pot_minor = to_minor(total, currency, ROUND_FLOOR)
    left = from_minor(min(max(due_minor, 0), pot_minor), currency)
    draws = []
    for credit in usable:
        if left <= 0:
            break
        take = min(credit.remaining, left)
        draws.append(Draw(credit.entry_id, take))
        left -= take
    return draws


@dataclass
class CreditApplication:
    account: BalanceAccount
    draws: list[Draw]


def credits_for_invoices(
    *, lines: dict[uuid.UUID, list[InvoiceLine]], currencies: dict[uuid.UUID, str], period: Period
) -> dict[uuid.UUID, CreditApplication]:
    """Inside a period close (tenants locked): decide which credits pay each tenant's
    invoice and append the negative credit line to its lines. The draws are written by
    `credits_consume` once the invoices exist."""
    accounts = {a.tenant_id: a for a in BalanceAccount.objects.filter(tenant_id__in=list(lines))}
    if not accounts:
        return {}
    by_account: dict[int, list[Credit]] = {}
    for credit, account_id in _credits_with_accounts(a.pk for a in accounts.values()):
        by_account.setdefault(account_id, []).append(credit)
    applied: dict[uuid.UUID, CreditApplication] = {}
    for tenant_id, account in accounts.items():
        currency = currencies[tenant_id]
        if account.currency != currency.upper() or not lines[tenant_id]:
            continue
        due = sum(line.amount_minor for line in lines[tenant_id])
        draws = plan_draws(
            by_account.get(account.pk, []), due_minor=due, currency=currency, period=period
        )
        if not draws:
            continue
        amount = sum((d.amount for d in draws), ZERO)
        lines[tenant_id].append(
            InvoiceLine(
                kind=InvoiceLine.Kind.CREDIT,
                description="Prepaid credit applied",
                plan_version_id=lines[tenant_id][0].plan_version_id,
                segment_start=period.start,
                segment_end=period.end,
                amount_exact=-amount,
                amount_minor=-to_minor(amount, currency),
            )
        )
        applied[tenant_id] = CreditApplication(account, draws)
    return applied


def credits_consume(
    *, applied: dict[uuid.UUID, CreditApplication], invoices: dict[uuid.UUID, Invoice]
) -> None:
    """Write the draws decided by `credits_for_invoices`, one entry per credit used."""
    BalanceEntry.objects.bulk_create(
        [
            BalanceEntry(
                account=application.account,
                kind=Kind.CONSUMPTION,
                amount=-draw.amount,
                effective_at=invoices[tenant_id].finalized_at or timezone.now(),
                credit_id=draw.credit_id,
                invoice=invoices[tenant_id],
                idempotency_key=f"consume:{invoices[tenant_id].pk}:{draw.credit_id}",
                description=f"Invoice {invoices[tenant_id].number}",
            )
            for tenant_id, application in applied.items()
            for draw in application.draws
        ]
    )


def _credits_with_accounts(account_ids: Iterable[int]) -> list[tuple[Credit, int]]:
    ids = list(account_ids)
    owners = dict(
        BalanceEntry.objects.filter(
            account_id__in=ids, kind__in=BalanceEntry.CREDIT_KINDS
        ).values_list("pk", "account_id")
    )
    return [(c, owners[c.entry_id]) for c in credits_of(ids, for_update=True)]


def credits_restore(*, invoice: Invoice) -> int:
    """A voided invoice gives back the credits it consumed (idempotent). Returns how many
    reversals were written."""
    written = 0
    for entry in BalanceEntry.objects.filter(invoice=invoice, kind=Kind.CONSUMPTION):
        _, created = BalanceEntry.objects.get_or_create(
            idempotency_key=f"reverse:{entry.pk}",
            defaults={
                "account_id": entry.account_id,
                "kind": Kind.REVERSAL,
                "amount": -entry.amount,
                "effective_at": timezone.now(),
                "credit_id": entry.credit_id,
                "invoice": invoice,
                "description": f"Invoice {invoice.number} voided",
            },
        )
        written += created
    return written


def credits_expire(*, as_of: datetime | None = None) -> int:
    """Write an expiry entry for the unused rest of every grant that no invoice can draw on
    any more: expired, and either its tenant is invoiced past the expiry or it expired
    long enough ago. Safe to run twice (one expiry per grant). Returns entries written."""
    as_of = as_of or timezone.now()
    written = 0
    grants = BalanceEntry.objects.filter(kind=Kind.GRANT, expires_at__lte=as_of).exclude(
        draws__kind=Kind.EXPIRY
    )
    for account_id in sorted(set(grants.values_list("account_id", flat=True))):
        with transaction.atomic():
            account = BalanceAccount.objects.get(pk=account_id)
            # the same lock a period close takes: no close draws while this expires
            Tenant.objects.select_for_update().filter(pk=account.tenant_id).get()
            through = invoiced_through(account.tenant_id)
            for credit in credits_of([account.pk], for_update=True):
                if credit.kind != Kind.GRANT or credit.expires_at is None or credit.remaining <= 0:
                    continue
                if credit.expires_at > as_of:
                    continue
                settled = (through is not None and through >= credit.expires_at) or (
                    as_of - credit.expires_at >= EXPIRY_SETTLE_AFTER
                )
                if not settled:
                    continue
                _, created = BalanceEntry.objects.get_or_create(
                    idempotency_key=f"expire:{credit.entry_id}",
                    defaults={
                        "account": account,
                        "kind": Kind.EXPIRY,
                        "amount": -credit.remaining,
                        "effective_at": credit.expires_at,
                        "credit_id": credit.entry_id,
                        "description": "Grant expired unused",
                    },
                )
                written += created
    return written
