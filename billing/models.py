"""What it costs and what we charge: plans (versioned), their price components and tiers,
and subscriptions of tenants to plan versions.

Invariants:
- a published PlanVersion and its components and tiers never change (services refuse,
  the admin shows them read-only); a price change is a new version;
- a tenant has at most one subscription covering any instant: subscriptions are
  half-open intervals [starts_at, ends_at) that never overlap;
- money is Decimal with 12 decimal places, never float; prices are per pricing unit of
  `unit_tokens` tokens (one million unless stated).
"""

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import models
from django.db.models import Q

from metering.usage import TOKEN_CLASS_LABELS, TOKEN_CLASSES


def money(**options: Any) -> models.DecimalField:  # type: ignore[type-arg]
    """A Decimal money (or exact ratio) column: 38 digits, 12 decimals; never float."""
    return models.DecimalField(max_digits=38, decimal_places=12, **options)


class Plan(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class PlanVersion(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # ISO 4217 code; every amount of this version is in it.
    currency = models.CharField(max_length=3, default="USD")
    # Charged once per billing period (prorated over a partial period segment).
    base_fee = money(default=0)
    # Least a period's usage charges may total; a true-up line bills any shortfall.
    minimum_commitment = money(default=0)
    # Subscriptions may start on this version from this instant (UTC).
    effective_from = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # Reasoning governance for every key of a subscribed tenant (a key's own policy can
    # only narrow it). Allowed efforts, e.g. ["low", "medium"]; empty = any.
    allowed_efforts = models.JSONField(default=list, blank=True)
    # Output tokens (reasoning included) when a call names none; null: the hold ceiling.
    default_max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # The most one call may ask for; null: no cap.
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Reasoning tokens the whole tenant may spend per calendar month (UTC); null: no budget.
    monthly_reasoning_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    reasoning_mode = models.CharField(
        max_length=10,
        choices=[("clamp", "Clamp to the plan"), ("refuse", "Refuse with an error")],
        default="clamp",
    )

    class Meta:
        ordering = ["plan", "-version"]
        permissions = [("publish_planversion", "Can publish a plan version")]
        constraints = [
            models.UniqueConstraint(fields=["plan", "version"], name="plan_version_unique"),
            models.CheckConstraint(
                condition=Q(base_fee__gte=0) & Q(minimum_commitment__gte=0),
                name="plan_version_amounts_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan.code} v{self.version} ({self.status})"

    @property
    def is_published(self) -> bool:
        return self.status == self.Status.PUBLISHED


class PriceComponent(models.Model):
    class ChargeModel(models.TextChoices):
        PER_UNIT = "per_unit", "Per unit"
        GRADUATED = "graduated", "Graduated tiers"
        VOLUME = "volume", "Volume tiers"
        PACKAGE = "package", "Package"

    # The five token classes of metering.usage, one member each (INPUT = "input", ...).
    # django-stubs types only the class form of TextChoices, not this functional one.
    TokenClass = models.TextChoices(  # type: ignore[call-overload]
        "TokenClass",
        [(name.upper(), (name, TOKEN_CLASS_LABELS[name])) for name in TOKEN_CLASSES],
    )

    plan_version = models.ForeignKey(
        PlanVersion, on_delete=models.CASCADE, related_name="components"
    )
    position = models.PositiveIntegerField(default=0)
    token_class = models.CharField(max_length=16, choices=TokenClass.choices)
    # Aliases this component prices; empty = every alias no more specific component covers.
    aliases = models.JSONField(default=list, blank=True)
    charge_model = models.CharField(max_length=16, choices=ChargeModel.choices)
    # Tokens per pricing unit: prices below are per this many tokens.
    unit_tokens = models.PositiveBigIntegerField(default=1_000_000)
    # per_unit: price per pricing unit; package: price per package.
    unit_price = money(default=0)
    # package: pricing units per package (partial packages are billed whole).
    package_units = money(default=1)
    # Free tokens per period before this component charges (allowance).
    included_tokens = models.PositiveBigIntegerField(default=0)
    # How this component's line is rounded to the currency's minor unit.
    rounding = models.CharField(max_length=20, default=ROUND_HALF_UP)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["plan_version", "position", "id"]

    def __str__(self) -> str:
        scope = ",".join(self.aliases) if self.aliases else "all aliases"
        return f"{self.token_class} ({scope}) {self.charge_model}"


class PriceTier(models.Model):
    component = models.ForeignKey(PriceComponent, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveIntegerField()
    # Inclusive upper bound in pricing units; null on the open last tier.
    up_to = money(null=True, blank=True)
    # Price per pricing unit inside this tier.
    unit_price = money(default=0)
    # Charged once when the tier is reached.
    flat_fee = money(default=0)

    class Meta:
        ordering = ["component", "position"]
        constraints = [
            models.UniqueConstraint(fields=["component", "position"], name="tier_position_unique"),
        ]

    def __str__(self) -> str:
        return f"tier {self.position} up to {self.up_to if self.up_to is not None else '∞'}"


class Subscription(models.Model):
    tenant = models.ForeignKey(
        "metering.Tenant", on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, related_name="subscriptions"
    )
    # The subscription covers [starts_at, ends_at), on whole UTC hours.
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    # Day of month (1-28) on which billing periods start, at 00:00 UTC.
    anchor_day = models.PositiveSmallIntegerField(default=1)
    # The subscription this one replaced by a plan change (same billing periods).
    previous = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="next"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(anchor_day__gte=1) & Q(anchor_day__lte=28),
                name="subscription_anchor_day",
            ),
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gt=models.F("starts_at")),
                name="subscription_ends_after_start",
            ),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(ends_at__isnull=True), name="one_open_subscription"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} on {self.plan_version} from {self.starts_at:%Y-%m-%d %H:%M}"


class InvoiceSequence(models.Model):
    """Gapless invoice numbers: one row per (issuer prefix, year), locked while a number
    is taken inside the finalizing transaction, so a rolled-back finalization frees it."""

    prefix = models.CharField(max_length=16)
    year = models.PositiveIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prefix", "year"], name="invoice_sequence_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}-{self.year}: {self.last_number}"


class Invoice(models.Model):
    class Status(models.TextChoices):
        # A close issues every invoice finalized: there is no draft state.
        FINALIZED = "finalized", "Finalized"  # immutable from here on
        PAID = "paid", "Paid"
        VOID = "void", "Void"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"

    tenant = models.ForeignKey("metering.Tenant", on_delete=models.PROTECT, related_name="invoices")
    # The billing period [period_start, period_end) this invoice bills.
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FINALIZED)
    # Gapless per issuer and year, e.g. RK-2026-000042; set once, at finalization.
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    currency = models.CharField(max_length=3)
    # Sum of the lines' amount_minor (each line rounded once).
    subtotal_minor = models.BigIntegerField(default=0)
    # Taxes are modelled (lines of kind "tax" would add here) and zero for now.
    tax_minor = models.BigIntegerField(default=0)
    total_minor = models.BigIntegerField(default=0)
    issue_date = models.DateField(null=True, blank=True)
    due_date = models.DateField(null=True, blank=True)
    # Highest usage record id included in this invoice's own period lines.
    usage_cutoff_record_id = models.BigIntegerField(default=0)
    # Commit watermark of its rating: every rollup change stamped below it was included;
    # one stamped at or above it may not be (late usage). 0 before watermarks existed.
    usage_watermark = models.BigIntegerField(default=0, db_default=0)
    # The invoice this one re-issues after it was voided.
    replaces = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replaced_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    # Last failed payment attempt reported by Stripe (the invoice stays finalized).
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    # When the invoice was last pushed to Stripe completely (items, invoice, finalize).
    stripe_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        permissions = [
            ("void_invoice", "Can void invoices"),
            ("resend_invoice", "Can resend invoices to Stripe"),
            ("export_invoices", "Can export invoices of every tenant as CSV"),
        ]
        constraints = [
            # One live invoice per tenant and period: a voided one may be re-issued.
            models.UniqueConstraint(
                fields=["tenant", "period_start"],
                condition=~Q(status="void"),
                name="one_live_invoice_per_period",
            ),
            models.CheckConstraint(
                condition=Q(number__isnull=False),
                name="invoice_has_number",
            ),
        ]
        indexes = [models.Index(fields=["status", "period_start"], name="invoice_status_period")]

    def __str__(self) -> str:
        return self.number or f"invoice #{self.pk}"


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        BASE_FEE = "base_fee", "Base fee"
        USAGE = "usage", "Usage"
        MINIMUM_TRUE_UP = "minimum_true_up", "Minimum commitment true-up"
        ADJUSTMENT = "adjustment", "Late usage adjustment"
        CREDIT = "credit", "Prepaid credit applied"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=Kind.choices)
    description = models.CharField(max_length=300)
    plan_version = models.ForeignKey(PlanVersion, on_delete=models.PROTECT, related_name="+")
    # The plan segment of the billing period this line rates, [segment_start, segment_end).
    segment_start = models.DateTimeField()
    segment_end = models.DateTimeField()
    # Adjustment lines name the period whose late usage they bill.
    adjusts_period_start = models.DateTimeField(null=True, blank=True)
    component_key = models.CharField(max_length=64, blank=True)
    token_class = models.CharField(max_length=16, blank=True)
    aliases = models.JSONField(default=list, blank=True)
    tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    allowance_tokens = models.BigIntegerField(default=0)
    billable_tokens = models.BigIntegerField(default=0)
    # Billable pricing units (tokens / unit_tokens), exact.
    quantity = money(default=0)
    # The engine's tier breakdown: [{tier, quantity, unit_price, flat_fee, amount}], exact strings.
    tiers = models.JSONField(default=list, blank=True)
    # Exact amount before rounding, major units.
    amount_exact = money()
    # Rounded once (the component's rounding mode), minor units; what is charged.
    amount_minor = models.BigIntegerField()
    # Highest usage record id this line's usage includes.
    usage_cutoff_record_id = models.BigIntegerField(default=0)
    # Commit watermark of the rating this line came from (see Invoice.usage_watermark).
    usage_watermark = models.BigIntegerField(default=0, db_default=0)
    # Pushed to Stripe as this invoice item.
    stripe_invoice_item_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_position"),
        ]

    def __str__(self) -> str:
        return f"{self.invoice} #{self.position} {self.description}"


class CreditNote(models.Model):
    """A correction of a finalized invoice: a new numbered document, never an edit."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    # Gapless, separate series, e.g. RKCN-2026-000007.
    number = models.CharField(max_length=32, unique=True)
    # Credited amount, minor units of the invoice's currency (> 0).
    amount_minor = models.BigIntegerField()
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("issue_creditnote", "Can issue credit notes")]
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="credit_note_positive"),
        ]

    def __str__(self) -> str:
        return self.number


class StripeCustomer(models.Model):
    tenant = models.OneToOneField(
        "metering.Tenant", on_delete=models.PROTECT, related_name="stripe_customer"
    )
    stripe_customer_id = models.CharField(max_length=64, unique=True)
    synced_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.stripe_customer_id


class StripeEvent(models.Model):
    """Webhook inbox: stored raw, verified, before any processing; processed idempotently."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"
        # Correctly signed but not a usable Stripe event (no id, a list body...): kept,
        # never applied, answered 200 so Stripe stops retrying it. `error` says why.
        REJECTED = "rejected", "Rejected"

    # Stripe's event id; for a rejected event without a usable one, "malformed-" and the
    # SHA-256 of the body, so a redelivery of the same body is a duplicate.
    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    # Stripe's `created` of the event (UTC); the receipt time for a rejected event without one.
    created = models.DateTimeField()
    # The body as parsed JSON; null when it is not JSON or cannot be stored as JSON.
    payload = models.JSONField(null=True)
    # The body exactly as signed (UTF-8 text; a NUL byte, never valid JSON, as U+FFFD).
    raw_payload = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


# --- hardware cost basis ---------------------------------------------------------------


class AcceleratorType(models.Model):
    # Catalogue key, e.g. "nvidia-h100-sxm"; routes and deployments name it.
    key = models.SlugField(max_length=100, unique=True)
    vendor = models.CharField(max_length=50)
    memory_gb = models.PositiveIntegerField(null=True, blank=True)
    tdp_watts = models.PositiveIntegerField(null=True, blank=True)
    example_model = models.CharField(max_length=300, blank=True)
    # Where the catalogue figures come from (kept verbatim from the reference data).
    source = models.TextField(blank=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class CostBasisVersion(models.Model):
    """What one accelerator-hour costs, from an instant on. Never edited: a change is a
    new version, so recorded costs and past reports keep the basis they used."""

    class Mode(models.TextChoices):
        RENTED = "rented", "Rented ($ per accelerator-hour)"
        OWNED = "owned", "Owned (amortized purchase + power + opex)"

    accelerator = models.ForeignKey(
        AcceleratorType, on_delete=models.PROTECT, related_name="cost_bases"
    )
    version = models.PositiveIntegerField()
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.RENTED)
    # Rented: USD per accelerator-hour (null until an operator supplies it).
    hourly_usd = money(null=True, blank=True)
    # Owned: purchase price (USD), amortized over this many years.
    purchase_price_usd = money(null=True, blank=True)
    amortization_years = money(null=True, blank=True)
    # Owned: power price (USD per kWh), data-centre PUE, other operating cost per hour.
    power_usd_per_kwh = money(default=Decimal("0.08"))
    pue = money(default=Decimal("1.56"))
    other_opex_per_hour = money(default=0)
    # In force from this instant (UTC).
    effective_from = models.DateTimeField()
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["accelerator", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["accelerator", "version"], name="cost_basis_version_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.accelerator} v{self.version} ({self.mode})"


class Deployment(models.Model):
    """A model alias served on accelerators of one type, with the throughput it reaches
    there. Versioned like the cost basis: a change is a new row from an instant on."""

    alias = models.CharField(max_length=200)
    # The alias's target this deployment serves (its cost rates are published for that
    # target); null on deployments made before routing (migration 0012 sets it where the
    # alias had one route).
    route = models.ForeignKey(
        "metering.Route",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="deployments",
    )
    version = models.PositiveIntegerField()
    accelerator = models.ForeignKey(
        AcceleratorType, on_delete=models.PROTECT, related_name="deployments"
    )
    # Tokens per second per accelerator: decode (output and reasoning) and prefill (input).
    decode_tokens_per_s = money(null=True, blank=True)
    prefill_tokens_per_s = money(null=True, blank=True)
    # Fraction of the time the fleet is busy, in (0, 1].
    utilization = money(default=Decimal("0.6"))
    # A cache-read token costs this fraction of an uncached input token; a cache write this multiple.
    cache_read_factor = money(default=Decimal("0.1"))
    cache_write_factor = money(default=Decimal("1.25"))
    effective_from = models.DateTimeField()
    calibration = models.ForeignKey(
        "CalibrationRun",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="deployments",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["alias", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["alias", "version"], name="deployment_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.alias} v{self.version} on {self.accelerator}"


class MarginPolicy(models.Model):
    """Target and minimum gross margin for everything served on one accelerator type."""

    accelerator = models.ForeignKey(
        AcceleratorType, on_delete=models.PROTECT, related_name="margin_policies"
    )
    # Fractions in [0, 1): a cost c has floor price c / (1 - minimum) and guide price c / (1 - target).
    target_margin = money()
    minimum_margin = money()
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["accelerator", "-effective_from"]
        permissions = [("view_margins", "Can read margin reports and what-ifs")]
        constraints = [
            models.CheckConstraint(
                condition=Q(minimum_margin__gte=0)
                & Q(minimum_margin__lte=models.F("target_margin"))
                & Q(target_margin__lt=1),
                name="margin_policy_bounds",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.accelerator}: target {self.target_margin}, minimum {self.minimum_margin}"


class CalibrationRun(models.Model):
    """A measured throughput run against an OpenAI-compatible server."""

    base_url = models.URLField(max_length=500)
    model = models.CharField(max_length=200)
    concurrency = models.PositiveIntegerField()
    duration_s = money()
    requests = models.PositiveIntegerField()
    prompt_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    # Aggregate decode tokens per second the server sustained (all streams together).
    decode_tokens_per_s = money()
    # Aggregate prefill tokens per second (prompt tokens over time to first token).
    prefill_tokens_per_s = money(null=True, blank=True)
    # Median time to first token (milliseconds).
    ttft_p50_ms = money(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model} @ {self.base_url}: {self.decode_tokens_per_s} tok/s"


class BalanceAccount(models.Model):
    """A tenant's prepaid credit balance, in one currency (the plan's).

    The balance is the sum of its entries: credits (top-ups, grants) are positive,
    draws on them (consumption by an invoice, expiry) negative, and a voided invoice's
    consumption is given back by a reversal. Nothing is ever edited; every entry has an
    idempotency key, so every write can be retried."""

    tenant = models.OneToOneField(
        "metering.Tenant", on_delete=models.PROTECT, related_name="balance_account"
    )
    currency = models.CharField(max_length=3, default="USD")
    # Refuse calls whose hold the available balance does not cover (prepaid); when false
    # the balance only pays invoices and alerts, and calls are never refused for it.
    hard_stop = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        permissions = [
            ("grant_credit", "Can add top-ups and grants to a tenant's balance"),
            ("change_hard_stop", "Can change whether a balance stops calls"),
        ]

    def __str__(self) -> str:
        return f"balance of {self.tenant} ({self.currency})"


class BalanceEntry(models.Model):
    class Kind(models.TextChoices):
        TOP_UP = "top_up", "Top-up"
        GRANT = "grant", "Grant"
        CONSUMPTION = "consumption", "Consumed by an invoice"
        EXPIRY = "expiry", "Expired"
        REVERSAL = "reversal", "Consumption given back (invoice voided)"

    CREDIT_KINDS = (Kind.TOP_UP, Kind.GRANT)

    account = models.ForeignKey(BalanceAccount, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Signed, major units of the account's currency, exact: credits > 0, draws < 0.
    amount = money()
    # Credits: usable from `effective_at`; grants may expire (null: never).
    effective_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    # Draws and reversals: the credit they act on, and the invoice that caused them.
    credit = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="draws"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="balance_entries"
    )
    # Unique per write: a retried top-up, close or expiry run writes nothing new.
    idempotency_key = models.CharField(max_length=200, unique=True)
    description = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account", "created_at", "id"]
        verbose_name_plural = "balance entries"
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind__in=["top_up", "grant"], amount__gt=0, credit__isnull=True))
                | (Q(kind__in=["consumption", "expiry"], amount__lt=0, credit__isnull=False))
                | Q(kind="reversal", amount__gt=0, credit__isnull=False),
                name="balance_entry_sign_by_kind",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(kind="grant"),
                name="balance_entry_only_grants_expire",
            ),
        ]
        indexes = [models.Index(fields=["account", "kind"], name="balance_entry_kind")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.account.currency}"


class WebhookEndpoint(models.Model):
    """Where a tenant's alerts are delivered, signed with `secret` (HMAC-SHA256)."""

    tenant = models.OneToOneField(
        "metering.Tenant", on_delete=models.CASCADE, related_name="webhook_endpoint"
    )
    url = models.URLField(max_length=500)
    # Shared with the tenant once; kept to sign deliveries (it cannot be hashed).
    secret = models.CharField(max_length=100)
    # Percentages of a budget or balance at which an alert fires, once each per period.
    thresholds = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook of {self.tenant}: {self.url}"


class OperatorEndpoint(models.Model):
    """Where the operator's alerts (reconciliation) are delivered, signed with `secret`.

    Kept apart from tenants' `WebhookEndpoint`s on purpose: every tenant query filters
    that model by tenant, and an operator row there (tenant NULL) would be one
    `filter(tenant_id=None)` away from a tenant's path. At most one is active."""

    url = models.URLField(max_length=500)
    # Kept to sign deliveries (it cannot be hashed); shown masked in the admin.
    secret = models.CharField(max_length=100)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"],
                condition=Q(is_active=True),
                name="one_active_operator_endpoint",
            ),
        ]

    def __str__(self) -> str:
        return f"operator webhook: {self.url}"


class Alert(models.Model):
    """A budget or balance crossed a threshold (a tenant's alert: fired once per (budget,
    period, threshold)), or reconciliation found the ledger and a provider's report apart
    (an operator's alert, tenant NULL: fired once per event_id, a uuid5 of its key)."""

    class Kind(models.TextChoices):
        BUDGET = "budget", "Budget"
        RECONCILIATION = "reconciliation", "Reconciliation"

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries exhausted)"
        NO_ENDPOINT = "no_endpoint", "No webhook configured"

    event_id = models.UUIDField(unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.BUDGET)
    # The tenant of a budget alert; NULL for the operator's (reconciliation) alerts.
    tenant = models.ForeignKey(
        "metering.Tenant", on_delete=models.CASCADE, related_name="alerts", null=True, blank=True
    )
    # Which budget: "spend_limit:<id>", "balance", "reasoning_budget:plan", "reasoning_budget:key:<id>".
    budget = models.CharField(max_length=100)
    description = models.CharField(max_length=300)
    # The budget's period: "2026-11" for monthly ones, "total", or the balance's epoch.
    period = models.CharField(max_length=100)
    threshold = models.PositiveSmallIntegerField()
    unit = models.CharField(max_length=20)  # "USD" (or the balance's currency), "reasoning_tokens"
    used = money()
    limit = money()
    created_at = models.DateTimeField(auto_now_add=True)
    delivery = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    # A reconciliation alert's facts (account, day, model, key, status, classes with
    # ours/theirs/drift as exact text); empty for budget alerts.
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "budget", "period", "threshold"], name="alert_once_per_period"
            ),
            models.CheckConstraint(
                condition=Q(kind="budget", tenant__isnull=False)
                | Q(kind="reconciliation", tenant__isnull=True),
                name="alert_tenant_by_kind",
            ),
        ]

    def __str__(self) -> str:
        if self.kind == self.Kind.RECONCILIATION:
            return f"reconciliation {self.period} {self.description}"
        return f"{self.tenant} {self.budget} {self.period} {self.threshold}%"
