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

from decimal import ROUND_HALF_UP

from django.db import models
from django.db.models import Q

MONEY = {"max_digits": 38, "decimal_places": 12}

TOKEN_CLASSES = ("input", "cache_read", "cache_write", "output", "reasoning")


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
    base_fee = models.DecimalField(**MONEY, default=0)
    # Least a period's usage charges may total; a true-up line bills any shortfall.
    minimum_commitment = models.DecimalField(**MONEY, default=0)
    # Subscriptions may start on this version from this instant (UTC).
    effective_from = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "-version"]
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

    class TokenClass(models.TextChoices):
        INPUT = "input", "Uncached input"
        CACHE_READ = "cache_read", "Cache read"
        CACHE_WRITE = "cache_write", "Cache write"
        OUTPUT = "output", "Visible output"
        REASONING = "reasoning", "Reasoning"

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
    unit_price = models.DecimalField(**MONEY, default=0)
    # package: pricing units per package (partial packages are billed whole).
    package_units = models.DecimalField(**MONEY, default=1)
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
    up_to = models.DecimalField(**MONEY, null=True, blank=True)
    # Price per pricing unit inside this tier.
    unit_price = models.DecimalField(**MONEY, default=0)
    # Charged once when the tier is reached.
    flat_fee = models.DecimalField(**MONEY, default=0)

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
