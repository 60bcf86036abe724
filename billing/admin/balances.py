"""Prepaid balances: accounts (credit, hard stop) and their entries."""

from decimal import Decimal

from django.contrib import admin
from django.utils import timezone

from billing import permissions as perm
from billing.balances import BalanceState, available_at, balance_state, credits_of
from billing.models import (
    BalanceAccount,
    BalanceEntry,
)

# --- prepaid balances ------------------------------------------------------------------

BALANCE_ENTRY_FIELDS = (
    "kind",
    "amount",
    "effective_at",
    "expires_at",
    "credit",
    "invoice",
    "description",
    "idempotency_key",
    "created_at",
)


class BalanceEntryInline(admin.TabularInline):
    model = BalanceEntry
    fk_name = "account"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = BALANCE_ENTRY_FIELDS

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).select_related("account", "credit__account", "invoice")

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # the ledger is append-only and written by services

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


def _state(account: BalanceAccount) -> BalanceState | None:
    """The account's position, read once per page (three fields show parts of it)."""
    if "_balance_state" not in account.__dict__:
        account.__dict__["_balance_state"] = balance_state(account.tenant_id)
    return account.__dict__["_balance_state"]


@admin.register(BalanceAccount)
class BalanceAccountAdmin(admin.ModelAdmin):
    """A tenant's prepaid balance and its ledger, read-only except `hard_stop` (and that
    only with `billing.change_hard_stop`).

    Credits are never added here: a top-up or grant goes through
    `POST /api/v1/tenants/<tenant id>/credits` (or `billing.balances.balance_credit`), which
    validates it, makes it idempotent and opens the balance on the first credit; `PATCH
    /api/v1/tenants/<tenant id>/balance` opens a balance without a credit."""

    list_display = ["tenant", "currency", "hard_stop", "available", "created_at"]
    list_filter = ["hard_stop", "currency"]
    search_fields = ["tenant__name"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "tenant",
        "currency",
        "created_at",
        "available",
        "uninvoiced_spend",
        "remaining",
        "watermark",
    ]
    inlines = [BalanceEntryInline]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.has_perm(perm.HARD_STOP_CHANGE):
            fields.append("hard_stop")  # it decides whether calls are refused
        return fields

    @admin.display(description="Available now")
    def available(self, obj: BalanceAccount) -> Decimal:
        # credits usable now, net of what invoices consumed (one query per row)
        return available_at(credits_of([obj.pk]), timezone.now())

    @admin.display(description="Uninvoiced spend (list price)")
    def uninvoiced_spend(self, obj: BalanceAccount) -> Decimal | None:
        state = _state(obj)
        return state.uninvoiced_spend if state else None

    @admin.display(description="Remaining (available - uninvoiced spend)")
    def remaining(self, obj: BalanceAccount) -> Decimal | None:
        state = _state(obj)
        return state.remaining if state else None

    @admin.display(description="Invoiced through")
    def watermark(self, obj: BalanceAccount) -> str:
        state = _state(obj)
        return str(state.watermark) if state and state.watermark else "no invoice yet"

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # opened by the API or balance_account_open, never by hand

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(BalanceEntry)
class BalanceEntryAdmin(admin.ModelAdmin):
    """The balance ledger, read-only: it is append-only, and every entry is written by a
    service (credits by `balance_credit`, draws by period closes, expiries, reversals)."""

    list_display = [
        "created_at",
        "tenant",
        "kind",
        "amount",
        "currency",
        "effective_at",
        "expires_at",
        "credit",
        "invoice",
        "idempotency_key",
    ]
    list_filter = ["kind"]
    search_fields = ["account__tenant__name", "idempotency_key"]
    list_select_related = ["account__tenant", "credit__account", "invoice"]
    readonly_fields = ["account", *BALANCE_ENTRY_FIELDS]

    @admin.display(description="Tenant", ordering="account__tenant__name")
    def tenant(self, obj: BalanceEntry) -> str:
        return str(obj.account.tenant)

    @admin.display(description="Currency")
    def currency(self, obj: BalanceEntry) -> str:
        return obj.account.currency

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
