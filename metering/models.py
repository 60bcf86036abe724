"""Who uses what: tenants, their API keys, the routes they call, and the usage ledger.

Invariants:
- an API key is stored only as its SHA-256 digest plus a short visible prefix;
- a usage record is written once per proxied request (unique `request_id`) and never
  updated: corrections are new rows elsewhere (billing adjustments), never edits here.
"""

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    is_active = models.BooleanField(default=True)
    # Aliases this tenant may call; empty means none (an operator grants them).
    allowed_aliases: "models.ManyToManyField[Alias, Any]" = models.ManyToManyField(
        "Alias", blank=True, related_name="tenants"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TenantMember(models.Model):
    """A person who signs in to the console for one tenant, with one role.

    A user belongs to at most one tenant (the console scopes every read to it). Staff
    users act through their staff roles (api.permissions), not through membership."""

    class Role(models.TextChoices):
        # Everything in the tenant: usage, keys and their limits, invoices and balance.
        OWNER = "owner"
        # Usage and API keys (create, revoke); limits read-only; no invoices.
        DEVELOPER = "developer"
        # Usage, invoices, balance; keys read-only.
        BILLING = "billing"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tenant_member"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="members")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "user"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=["owner", "developer", "billing"]), name="member_role_known"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role} of {self.tenant})"


class ApiKey(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    # First characters of the key (e.g. "rk_3xY9aB"), shown so people can tell keys apart.
    prefix = models.CharField(max_length=16, db_index=True)
    # SHA-256 hex digest of the whole key; the key itself is never stored.
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Null until first use; updated at most about once a minute per server process.
    last_used_at = models.DateTimeField(null=True, blank=True)
    # The key stops working at this instant (UTC); null means no expiry.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Set once when revoked; a revoked key never works again.
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Scope: whether the key reads the tenant's money through the REST API (invoices, the
    # upcoming invoice, the prepaid balance and its entries, balance alerts). A key minted
    # in the console by a member whose role may not see invoices has it off; the proxy
    # ignores it.
    can_read_billing = models.BooleanField(default=True, db_default=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("revoke_apikey", "Can revoke API keys")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant})"


class Alias(models.Model):
    """The model name tenants put in their requests, served by one or more targets
    (`Route`) under a routing policy (`metering.routing`; decision 0117)."""

    class Policy(models.TextChoices):
        # By priority; the next target on a retryable failure before the first byte.
        FALLBACK = "fallback", "Fallback by priority"
        # Weighted random over the healthy targets (canaries, capacity shares).
        WEIGHTED = "weighted", "Weighted split"
        # Lowest expected serving cost for this request at each target's cost rate.
        CHEAPEST = "cheapest", "Cheapest expected cost"
        # Ordered rules on the request's reasoning effort and size, first match wins.
        EFFORT = "effort", "Rules by reasoning effort"

    # What tenants call (a route's `alias` column holds this text).
    name = models.CharField(max_length=200, unique=True)
    policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.FALLBACK)
    # `effort` rules, validated by `metering.routing.rules` (empty for other policies).
    rules = models.JSONField(default=list, blank=True)
    # Attempts one call may make across targets (1: no failover), at most 4.
    max_attempts = models.PositiveSmallIntegerField(default=2)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "aliases"
        constraints = [
            models.CheckConstraint(
                condition=Q(max_attempts__gte=1) & Q(max_attempts__lte=4),
                name="alias_max_attempts_1_to_4",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Route(models.Model):
    """One target (deployment) serving an alias: where calls go and what serving costs."""

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai-compatible", "OpenAI-compatible (vLLM, SGLang, DeepSeek, ...)"

    # The alias this target serves. The column keeps the alias's name as text (to_field),
    # so `route.alias_id` is the name and filtering by the name works as before.
    alias = models.ForeignKey(
        Alias,
        to_field="name",
        db_column="alias",
        on_delete=models.PROTECT,
        related_name="targets",
    )
    # The target's name within its alias ("default" for the first one).
    name = models.CharField(max_length=100, default="default")
    # Share of traffic under the `weighted` policy (relative to the alias's other targets).
    weight = models.PositiveIntegerField(default=100)
    # Lower goes first under `fallback`, and failover walks targets in this order.
    priority = models.SmallIntegerField(default=0)
    # Calls in flight at once across all server processes; null: no limit.
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    # No first byte (headers, or a stream's first event) within this many milliseconds
    # counts as a failure to fail over from; null: the proxy's idle read timeout.
    first_byte_timeout_ms = models.PositiveIntegerField(null=True, blank=True)
    provider = models.CharField(max_length=32, choices=Provider.choices)
    # Upstream base URL including the version segment, e.g. https://api.openai.com/v1
    base_url = models.URLField(max_length=500)
    upstream_model = models.CharField(max_length=200)
    # Name of the environment variable holding the upstream credential (never the value).
    api_key_env = models.CharField(max_length=200, blank=True)
    # Accelerator type serving this alias (a label matching billing's accelerator types).
    accelerator = models.CharField(max_length=100, blank=True)
    # The provider account the upstream key belongs to (reconciliation, actual cost);
    # null for routes served by our own accelerators or an account not tracked.
    provider_account = models.ForeignKey(
        "ProviderAccount",
        on_delete=models.PROTECT,
        related_name="routes",
        null=True,
        blank=True,
    )
    # The provider's id of the upstream key (as its usage report names it, e.g. OpenAI's
    # "key_..." or Anthropic's "apikey_..."): usage reported on a key no route declares is
    # missing from the ledger. Blank: compared per account and model only.
    upstream_key_id = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["alias", "priority", "name"]
        constraints = [
            models.UniqueConstraint(fields=["alias", "name"], name="route_target_unique"),
        ]

    def __str__(self) -> str:
        return self.alias_id if self.name == "default" else f"{self.alias_id}/{self.name}"


class UsageRecord(models.Model):
    """One proxied request, exactly once. Token classes are disjoint and additive."""

    class Endpoint(models.TextChoices):
        CHAT_COMPLETIONS = "chat.completions", "OpenAI chat completions"
        RESPONSES = "responses", "OpenAI responses"
        MESSAGES = "messages", "Anthropic messages"

    class Status(models.TextChoices):
        COMPLETED = "completed", "Completed"
        # The upstream stream ended without its final usage (cut, timeout): usage is what
        # was seen, and the record says so.
        INCOMPLETE = "incomplete", "Incomplete"
        UPSTREAM_ERROR = "upstream_error", "Upstream error"
        # The upstream could not be reached or did not answer in time.
        FAILED = "failed", "Failed"

    class ReasoningSource(models.TextChoices):
        REPORTED = "reported", "Reported by the provider"
        DERIVED = "derived", "Derived from provider totals"
        ESTIMATED = "estimated", "Estimated from text"
        NONE = "none", "No reasoning"

    id = models.BigAutoField(primary_key=True)
    # Our id for the request, returned to the caller in the x-reckon-request-id header.
    request_id = models.UUIDField(unique=True)
    # No database-level foreign keys on the ledger, on purpose: each one is a per-row
    # check that locks the parent row (FOR KEY SHARE) and cost the hot path's insert about
    # a fifth of its throughput (measured: 14.0k vs 17.1k rows/s). The ids come from rows
    # the proxy just loaded; tenants, keys and cost rates are never deleted (PROTECT still
    # holds in the ORM, and the admin and services only deactivate or revoke).
    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.PROTECT,
        related_name="usage_records",
        db_index=False,
        db_constraint=False,
    )
    api_key = models.ForeignKey(
        ApiKey,
        on_delete=models.PROTECT,
        related_name="usage_records",
        db_index=False,
        db_constraint=False,
    )
    # Route facts as they were when the request was served (routes change; records don't).
    alias = models.CharField(max_length=200)
    provider = models.CharField(max_length=32)
    upstream_model = models.CharField(max_length=200)
    accelerator = models.CharField(max_length=100, blank=True)
    # The provider account the route's upstream key belonged to when served (null: none,
    # e.g. our own accelerators): what reconciliation compares with that account's
    # reports. A stamp, like the ids above: no database foreign key, and DO_NOTHING, not
    # PROTECT, so deleting an account never loads its records (PROTECT would read every
    # one). Routes and reconciliation rows still protect an account in use; accounts are
    # deactivated, not deleted.
    provider_account = models.ForeignKey(
        "ProviderAccount",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    # The target (route) that served this attempt: a stamp, no foreign key (as above).
    # Null on records served before routing (migration 0022).
    route = models.ForeignKey(
        Route,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    # 1 for a call's first attempt, k for its k-th (failover); null before routing.
    attempt = models.PositiveSmallIntegerField(null=True, blank=True)
    # True on an attempt that failed before the client got a byte and was retried on
    # another target (its call is answered by a later attempt's record).
    failed_over = models.BooleanField(null=True, blank=True)
    # The alias's policy and why this target was chosen (e.g. "priority", "weight",
    # "cost", "rule:light", "failover"); null on single-target aliases.
    # NULL, not '': older spool lines and archive files carry none (noqa: DJ001 below).
    route_policy = models.CharField(max_length=16, null=True, blank=True)  # noqa: DJ001
    route_reason = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    # The reasoning effort the call asked for after governance ("" none; null before).
    reasoning_effort = models.CharField(max_length=16, null=True, blank=True)  # noqa: DJ001
    endpoint = models.CharField(max_length=32, choices=Endpoint.choices)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices)
    # HTTP status the upstream answered with (0 when it could not be reached).
    upstream_status = models.PositiveSmallIntegerField(default=0)
    # The upstream's own id for the response (chatcmpl-..., resp_..., msg_...).
    upstream_response_id = models.CharField(max_length=200, blank=True)
    # Uncached input tokens only.
    input_tokens = models.BigIntegerField(default=0)
    # Input tokens read from the provider's prompt cache.
    cached_input_tokens = models.BigIntegerField(default=0)
    # Input tokens written to the provider's prompt cache.
    cache_write_tokens = models.BigIntegerField(default=0)
    # Visible output tokens (reasoning excluded).
    output_tokens = models.BigIntegerField(default=0)
    # Hidden reasoning/thinking tokens: billed, never shown to the caller.
    reasoning_tokens = models.BigIntegerField(default=0)
    reasoning_source = models.CharField(
        max_length=16, choices=ReasoningSource.choices, default=ReasoningSource.NONE
    )
    # Provider invariants this usage broke (e.g. "reasoning_exceeds_output"); such a
    # record is kept for review and excluded from rating until resolved.
    flags = models.JSONField(default=list, blank=True)
    # The provider's usage object exactly as received, for audit and re-derivation.
    raw_usage = models.JSONField(null=True, blank=True)
    # The serving cost rate in force when the request was recorded (null: none configured).
    cost_rate = models.ForeignKey(
        "ServingCostRate",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_index=False,
        db_constraint=False,
        related_name="+",
    )
    # Exact USD it cost to serve (all classes at cost_rate); null when no rate applied.
    serving_cost_usd = models.DecimalField(max_digits=44, decimal_places=24, null=True, blank=True)
    # What the call spent at the tenant's list prices (spend limits count this).
    spend_usd = models.DecimalField(max_digits=44, decimal_places=24, null=True, blank=True)
    # The part of serving_cost_usd spent on hidden reasoning tokens.
    reasoning_cost_usd = models.DecimalField(
        max_digits=44, decimal_places=24, null=True, blank=True
    )
    # True when the caller went away mid-stream and the proxy drained the upstream alone.
    client_disconnected = models.BooleanField(default=False)
    # Microseconds from receiving the request to the first output byte/event; null if none.
    ttft_us = models.BigIntegerField(null=True, blank=True)
    # Microseconds from receiving the request to the end of the upstream response.
    latency_us = models.BigIntegerField(default=0)
    # When the request arrived (UTC). Usage is attributed to billing periods by this time.
    started_at = models.DateTimeField()
    # When the proxy finished with the upstream (UTC).
    finished_at = models.DateTimeField()
    # When the row was committed (UTC); the cut-off of rollups and invoices.
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        # Few indexes on purpose: every one costs on each insert of the hot path.
        # Aggregates come from rollups; lists narrow by tenant and time, then filter.
        indexes = [
            models.Index(fields=["tenant", "started_at", "id"], name="usage_tenant_time"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(input_tokens__gte=0)
                & Q(cached_input_tokens__gte=0)
                & Q(cache_write_tokens__gte=0)
                & Q(output_tokens__gte=0)
                & Q(reasoning_tokens__gte=0),
                name="usage_tokens_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.alias} {self.status}"


class UsageRollup(models.Model):
    """Usage per tenant, alias, accelerator, API key, provider account, upstream model and
    UTC hour, kept in the ledger's own transaction (the fold: `metering.ledger.rollups`).

    Invariants, summed over a row's shards: `requests` and the plain sums equal the usage
    records of its key that carry no flags (billing rates periods from these, never from
    raw records); `flagged_requests` and the `flagged_*` sums equal its flagged records
    (held back from rating, counted by usage analytics and limits). Plain + flagged
    equals a raw scan that ignores flags. `unanswered_requests` counts the key's records
    with status upstream_error or failed, flagged or not (reconciliation's requests are
    requests + flagged_requests - unanswered_requests). Readers that do not reconcile
    (rating, analytics, limits, archive checks) sum across the provider account and
    upstream model, which an alias changes only when its route does.

    Rows folded before migration 0018 keep provider account 0, upstream model '' and no
    unanswered requests (0018 is schema only: those records carry no account stamp, so
    they could never be reconciled).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_rollups")
    alias = models.CharField(max_length=200)
    # Accelerator type that served them (an alias may move between types over time).
    accelerator = models.CharField(max_length=100, blank=True)
    # The key the requests came with (every record has one). No database foreign key,
    # as on the ledger: keys are never deleted, and the check would cost every batch.
    api_key = models.ForeignKey(
        ApiKey,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    # The records' provider account stamp (`UsageRecord.provider_account`), 0 where they
    # carry none: a sentinel, not NULL, so the row key stays unique on SQLite too, where
    # NULLs are distinct in a unique index. No foreign key (a stamp, as on the ledger).
    provider_account_id = models.BigIntegerField(default=0, db_default=0)
    # The records' upstream model as served ('' only on rows folded before 0018).
    upstream_model = models.CharField(max_length=200, blank=True, default="", db_default="")
    # The records' target (`UsageRecord.route`), 0 where they carry none (served before
    # routing, or folded before migration 0023): a sentinel, as provider_account_id.
    route_id = models.BigIntegerField(default=0, db_default=0)
    # Start of the UTC hour the requests started in.
    hour = models.DateTimeField()
    # Writers fold into different shards so concurrent ledger batches never wait on each
    # other's row lock; every reader sums across shards. Closed hours fold into shard 0.
    shard = models.PositiveSmallIntegerField(default=0)
    requests = models.BigIntegerField(default=0)
    # Records in this hour held back from rating because they broke a provider invariant.
    flagged_requests = models.BigIntegerField(default=0)
    # Records (plain or flagged) the upstream did not answer: status upstream_error (a
    # non-2xx answer) or failed (not reached, timed out). Included in the two counts above.
    unanswered_requests = models.BigIntegerField(default=0, db_default=0)
    # Attempts that failed over to another target (`UsageRecord.failed_over`), flagged or
    # not; all are unanswered. Client calls = requests + flagged_requests - failed_over.
    failed_over_requests = models.BigIntegerField(default=0, db_default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    # Exact USD serving cost of these requests, and the part spent on reasoning.
    serving_cost_usd = models.DecimalField(max_digits=44, decimal_places=24, default=0)
    reasoning_cost_usd = models.DecimalField(max_digits=44, decimal_places=24, default=0)
    # Spend at list price (what spend limits count).
    spend_usd = models.DecimalField(max_digits=44, decimal_places=24, default=0)
    # The flagged records' tokens per class and spend at list price (not rated).
    flagged_input_tokens = models.BigIntegerField(default=0, db_default=0)
    flagged_cached_input_tokens = models.BigIntegerField(default=0, db_default=0)
    flagged_cache_write_tokens = models.BigIntegerField(default=0, db_default=0)
    flagged_output_tokens = models.BigIntegerField(default=0, db_default=0)
    flagged_reasoning_tokens = models.BigIntegerField(default=0, db_default=0)
    flagged_spend_usd = models.DecimalField(
        max_digits=44, decimal_places=24, default=0, db_default=0
    )
    # Highest usage record id folded in (kept on invoices for recomputation).
    last_record_id = models.BigIntegerField(default=0)
    # Commit-order stamp of the last change (see `metering.selectors.usage_watermark`):
    # PostgreSQL's 64-bit id of the transaction that last changed the row; on SQLite,
    # whose writers run one at a time, the highest record id folded in. Folding shards
    # keeps the highest stamp of the rows merged (it adds no usage).
    changed_xid = models.BigIntegerField(default=0, db_default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "alias",
                    "accelerator",
                    "api_key",
                    "provider_account_id",
                    "upstream_model",
                    "route_id",
                    "hour",
                    "shard",
                ],
                name="rollup_unique_hour",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "hour"], name="rollup_tenant_hour"),
            # What reconciliation reads: one account's hours (`metering.reconcile.ours`).
            models.Index(
                fields=["provider_account_id", "hour"],
                name="rollup_account_hour",
                condition=Q(provider_account_id__gt=0),
            ),
            # The rows the shard fold looks for: few, the open hours' write shards.
            models.Index(fields=["hour"], name="rollup_unfolded", condition=Q(shard__gt=0)),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.alias} {self.hour:%Y-%m-%d %H}:00"


class ServingCostRate(models.Model):
    """What serving one million tokens of each class costs on an alias, frozen.

    Written by billing (hardware cost basis x deployment throughput) and read by the proxy,
    which stamps every usage record with the rate in force and the exact cost it implies.
    A rate never changes: a new cost basis or deployment makes a new row, so history is
    never rewritten.
    """

    alias = models.CharField(max_length=200)
    # The target the rate is for; null on rates published before routing (migration 0022
    # sets it where the alias had one route). Rates are looked up per target.
    route = models.ForeignKey(
        Route, null=True, blank=True, on_delete=models.PROTECT, related_name="cost_rates"
    )
    accelerator = models.CharField(max_length=100)
    # In force from this instant (UTC) until a later rate for the target.
    effective_from = models.DateTimeField()
    # USD per 1M tokens of each class (exact).
    input_usd = models.DecimalField(max_digits=38, decimal_places=18)
    cache_read_usd = models.DecimalField(max_digits=38, decimal_places=18)
    cache_write_usd = models.DecimalField(max_digits=38, decimal_places=18)
    output_usd = models.DecimalField(max_digits=38, decimal_places=18)
    reasoning_usd = models.DecimalField(max_digits=38, decimal_places=18)
    # Where the figures come from (billing ids and inputs), for audit.
    source = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["alias", "-effective_from"]
        indexes = [
            models.Index(fields=["alias", "effective_from"], name="cost_rate_alias_time"),
            models.Index(fields=["route", "effective_from"], name="cost_rate_route_time"),
        ]

    def __str__(self) -> str:
        return f"{self.alias} on {self.accelerator} from {self.effective_from:%Y-%m-%d %H:%M}"


class SpendLimit(models.Model):
    """A cap on what a tenant (or one of its keys) may spend, at list price.

    Spend is counted at the tenant's plan prices per token class (the highest tier price,
    allowances not deducted), so a limit is never exceeded by the invoice it protects."""

    class Window(models.TextChoices):
        MONTH = "month", "Calendar month (UTC)"
        TOTAL = "total", "All time"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="spend_limits")
    # Null: the limit covers the whole tenant; otherwise only this key.
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="spend_limits"
    )
    window = models.CharField(max_length=10, choices=Window.choices)
    # The cap in USD (exact).
    amount_usd = models.DecimalField(max_digits=38, decimal_places=12)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # NULLS NOT DISTINCT: one tenant-wide limit per window too (a NULL api_key
            # is not "different" from another NULL api_key here).
            models.UniqueConstraint(
                fields=["tenant", "api_key", "window"],
                name="one_limit_per_scope_window",
                nulls_distinct=False,
            ),
            models.CheckConstraint(condition=Q(amount_usd__gte=0), name="spend_limit_non_negative"),
        ]

    def __str__(self) -> str:
        scope = self.api_key.prefix if self.api_key else "tenant"
        return f"{self.tenant} {scope} {self.window} {self.amount_usd}"


class RateLimit(models.Model):
    """Requests and tokens per minute for a tenant (or one of its keys), shared by every
    server process through Redis."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="rate_limits")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="rate_limits"
    )
    # Null: no limit of that kind.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "api_key"], name="one_rate_limit_per_scope", nulls_distinct=False
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.api_key or 'tenant'} rpm={self.requests_per_minute} tpm={self.tokens_per_minute}"


class ReasoningPolicy(models.Model):
    """Reasoning governance for one API key: which efforts it may ask for and how many
    output tokens (reasoning included) one call may spend."""

    class Mode(models.TextChoices):
        CLAMP = "clamp", "Clamp to the policy"
        REFUSE = "refuse", "Refuse with an error"

    api_key = models.OneToOneField(
        ApiKey, on_delete=models.CASCADE, related_name="reasoning_policy"
    )
    # Allowed reasoning efforts (e.g. ["minimal", "low"]); empty = any.
    allowed_efforts = models.JSONField(default=list, blank=True)
    # Used when a call sets no max_completion_tokens / max_output_tokens (null: none).
    default_max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # The most a call may ask for (visible + reasoning); null: no cap.
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.CLAMP)
    # Reasoning tokens this key may spend per calendar month (UTC); null: no budget.
    monthly_reasoning_tokens = models.PositiveBigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"reasoning policy of {self.api_key}"


class HoldCap(models.Model):
    """The output tokens (reasoning included) a call plausibly spends on an alias when it
    names no maximum: the 99th percentile observed over recent calls, learned per tenant
    and alias (tenant null: all tenants) by a periodic task. Admission holds at least this
    much for such a call, never more than the configured ceiling."""

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="hold_caps"
    )
    alias = models.CharField(max_length=200)
    p99_output_tokens = models.PositiveIntegerField()
    samples = models.PositiveIntegerField()
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "alias"], name="hold_cap_per_tenant_alias"),
            models.UniqueConstraint(
                fields=["alias"], condition=Q(tenant__isnull=True), name="hold_cap_per_alias"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant or 'all tenants'} {self.alias}: p99 {self.p99_output_tokens}"


class LedgerArchive(models.Model):
    """One calendar month (UTC) of the usage ledger, all tenants, exported to the archive
    (`metering.ledger.archive`).

    States move exported -> verified -> dropped (-> restored -> verified -> dropped ...):
    a month's rows leave the database only after the archive read back from the store
    matched its manifest, the database and the hourly rollups; a restore brings them back
    with their ids. Rollups are never archived: invoices keep rating from them.
    """

    class State(models.TextChoices):
        EXPORTED = "exported", "Exported (not yet verified)"
        VERIFIED = "verified", "Verified against database and rollups"
        DROPPED = "dropped", "Dropped from the database (served from the archive)"
        RESTORED = "restored", "Restored into the database"

    # First instant (UTC) of the archived month.
    month = models.DateTimeField(unique=True)
    state = models.CharField(max_length=16, choices=State.choices)
    # The archive URL the files were written to (file:// or s3://; never credentials).
    location = models.CharField(max_length=500)
    # The manifest as stored beside the files: row count, id range, sums, file checksums.
    manifest = models.JSONField(default=dict)
    exported_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    dropped_at = models.DateTimeField(null=True, blank=True)
    restored_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.state}"


# --- Provider accounts and their own reports (reconciliation; decision 0116) -------------


class ProviderAccount(models.Model):
    """An organization at OpenAI or Anthropic whose admin API reports usage and cost.

    Credentials are never stored: `admin_key_env` names the environment variable holding
    the admin key, as routes do for upstream keys.
    """

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"

    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    admin_key_env = models.CharField(max_length=200)
    # Base URL of the admin API including the version segment; blank means the provider's
    # own (https://api.openai.com/v1, https://api.anthropic.com/v1).
    admin_base_url = models.URLField(max_length=500, blank=True)
    # The report's model name -> our `upstream_model` where they differ (dated snapshots);
    # names not in the map are taken as they are.
    model_map = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    last_import_at = models.DateTimeField(null=True, blank=True)
    # The last failed import's reason (never a secret); blank after a good run.
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"


class ProviderReport(models.TextChoices):
    USAGE = "usage", "Usage report"
    COST = "cost", "Cost report"


class ProviderReportFetch(models.Model):
    """One page of a provider report exactly as received: the audit log of imports.

    Written in its own transaction as each page arrives, even when the run later fails.
    The body is text, not JSON, so decimal amounts keep every digit.
    """

    account = models.ForeignKey(ProviderAccount, on_delete=models.PROTECT, related_name="fetches")
    report = models.CharField(max_length=8, choices=ProviderReport.choices)
    # The import run this page belongs to (one id per run and report).
    run_id = models.UUIDField(db_index=True)
    # Path and query as sent, without credentials.
    query = models.CharField(max_length=2000)
    http_status = models.PositiveSmallIntegerField()
    body = models.TextField()
    body_sha256 = models.CharField(max_length=64)
    fetched_at = models.DateTimeField()

    class Meta:
        ordering = ["-fetched_at", "-id"]

    def __str__(self) -> str:
        return (
            f"{self.account_id} {self.report} {self.fetched_at:%Y-%m-%d %H:%M} {self.http_status}"
        )


class ProviderUsageBucket(models.Model):
    """One result of a provider usage report: a time bucket x group (model, key, ...).

    Counts are the provider's, in its own terms (null when the report lacks the field).
    Re-importing a bucket replaces its values; the previous ones go to
    `ProviderBucketRevision` first.
    """

    account = models.ForeignKey(ProviderAccount, on_delete=models.PROTECT, related_name="+")
    bucket_start = models.DateTimeField()
    bucket_width = models.CharField(max_length=4)  # "1h" or "1d" (the report's own label)
    # Group key; '' where the report gave null.
    model = models.CharField(max_length=200, blank=True)
    api_key_id = models.CharField(max_length=200, blank=True)
    service_tier = models.CharField(max_length=50, blank=True)
    # OpenAI's project_id or Anthropic's workspace_id.
    workspace = models.CharField(max_length=200, blank=True)
    requests = models.BigIntegerField(null=True, blank=True)
    # In Reckon's disjoint classes, converted from the report's terms on import:
    # uncached input, cache read, cache write, output (visible + reasoning).
    input_uncached_tokens = models.BigIntegerField(null=True, blank=True)
    cache_read_tokens = models.BigIntegerField(null=True, blank=True)
    cache_write_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    # The result as the provider sent it (other fields: audio, server tools, ...).
    raw = models.JSONField(default=dict)
    fetch = models.ForeignKey(
        ProviderReportFetch, on_delete=models.PROTECT, related_name="usage_buckets"
    )
    revision = models.PositiveIntegerField(default=1)
    content_hash = models.CharField(max_length=64)
    changed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "account",
                    "bucket_start",
                    "bucket_width",
                    "model",
                    "api_key_id",
                    "service_tier",
                    "workspace",
                ],
                name="provider_usage_bucket_key",
            ),
        ]
        indexes = [models.Index(fields=["account", "bucket_start"], name="provider_usage_time")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.bucket_start:%Y-%m-%d %H}:00 {self.model}"


class ProviderCostBucket(models.Model):
    """One result of a provider cost report (daily buckets): an exact amount in USD."""

    account = models.ForeignKey(ProviderAccount, on_delete=models.PROTECT, related_name="+")
    bucket_start = models.DateTimeField()
    bucket_width = models.CharField(max_length=4)
    # Group key; '' where the report gave null. OpenAI gives `line_item` ("<model>,
    # <token type>" by observation); Anthropic gives `description`, `model`, `cost_type`
    # and `token_type`. `model` and `token_type` are parsed from the line item for OpenAI
    # when they can be.
    line_item = models.CharField(max_length=300, blank=True)
    model = models.CharField(max_length=200, blank=True)
    cost_type = models.CharField(max_length=50, blank=True)
    token_type = models.CharField(max_length=50, blank=True)
    service_tier = models.CharField(max_length=50, blank=True)
    workspace = models.CharField(max_length=200, blank=True)
    # The amount exactly as the report wrote it (OpenAI: dollars as a JSON number;
    # Anthropic: cents as a decimal string), and that amount in USD, exact.
    amount_text = models.CharField(max_length=100)
    amount_usd = models.DecimalField(max_digits=44, decimal_places=24)
    currency = models.CharField(max_length=8, default="usd")
    raw = models.JSONField(default=dict)
    fetch = models.ForeignKey(
        ProviderReportFetch, on_delete=models.PROTECT, related_name="cost_buckets"
    )
    revision = models.PositiveIntegerField(default=1)
    content_hash = models.CharField(max_length=64)
    changed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "account",
                    "bucket_start",
                    "bucket_width",
                    "line_item",
                    "model",
                    "cost_type",
                    "token_type",
                    "service_tier",
                    "workspace",
                ],
                name="provider_cost_bucket_key",
            ),
        ]
        indexes = [models.Index(fields=["account", "bucket_start"], name="provider_cost_time")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.bucket_start:%Y-%m-%d} {self.line_item or self.model}"


class ProviderBucketRevision(models.Model):
    """The values a usage or cost bucket held before a re-import changed or removed it."""

    account = models.ForeignKey(ProviderAccount, on_delete=models.PROTECT, related_name="+")
    report = models.CharField(max_length=8, choices=ProviderReport.choices)
    # The bucket's id in its table (buckets are updated in place, never deleted).
    bucket_id = models.BigIntegerField()
    bucket_start = models.DateTimeField()
    revision = models.PositiveIntegerField()
    # The bucket's fields as they were (counts or amount text), and the page they came from.
    values = models.JSONField()
    fetch = models.ForeignKey(ProviderReportFetch, on_delete=models.PROTECT, related_name="+")
    replaced_at = models.DateTimeField()
    # "changed" (new values) or "removed" (the bucket is gone from the re-read report).
    reason = models.CharField(max_length=16)

    class Meta:
        ordering = ["-replaced_at", "-id"]
        indexes = [
            models.Index(fields=["report", "bucket_id", "revision"], name="provider_revision_of"),
        ]

    def __str__(self) -> str:
        return f"{self.report} bucket {self.bucket_id} r{self.revision} {self.reason}"


class ReconciliationRow(models.Model):
    """Ledger against provider report for one account x UTC day x upstream model (x key)
    x token class (`metering.reconcile`). Recomputed in place; unique on its key."""

    class TokenClass(models.TextChoices):
        REQUESTS = "requests", "Requests"
        INPUT_UNCACHED = "input_uncached", "Uncached input"
        CACHE_READ = "cache_read", "Cache read"
        CACHE_WRITE = "cache_write", "Cache write"
        OUTPUT = "output", "Output (visible + reasoning)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending (report still settling)"
        MATCHED = "matched", "Matched"
        DRIFT = "drift", "Drift"
        MISSING_IN_LEDGER = "missing_in_ledger", "Missing in ledger"
        MISSING_IN_REPORT = "missing_in_report", "Missing in report"
        NOT_COMPARED = "not_compared", "Not compared (not reported)"

    account = models.ForeignKey(
        ProviderAccount, on_delete=models.PROTECT, related_name="reconciliation_rows"
    )
    day = models.DateField()
    upstream_model = models.CharField(max_length=200)
    # The provider's key id, or '' for the row summed over keys.
    api_key_id = models.CharField(max_length=200, blank=True)
    token_class = models.CharField(max_length=16, choices=TokenClass.choices)
    ours = models.BigIntegerField()
    theirs = models.BigIntegerField(null=True, blank=True)
    # theirs - ours (null when not reported), and drift / theirs (null when theirs is 0).
    drift = models.BigIntegerField(null=True, blank=True)
    relative_drift = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    # Our reasoning tokens of the row (output only): a provider dropping reasoning from
    # output shows as drift == -reasoning.
    reasoning = models.BigIntegerField(default=0)
    drift_equals_reasoning = models.BooleanField(default=False)
    # Why ours may differ: counts and tokens of incomplete, disconnected, failed and
    # upstream-error records (filled for rows that are not matched).
    explain = models.JSONField(default=dict, blank=True)
    # Highest revision among the report buckets this row was computed from.
    report_revision = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["account", "day", "upstream_model", "api_key_id", "token_class"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "day", "upstream_model", "api_key_id", "token_class"],
                name="reconciliation_row_key",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "day", "status"], name="reconciliation_status"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.account_id} {self.day} {self.upstream_model} {self.token_class} {self.status}"
        )


class UpstreamKeyPeriod(models.Model):
    """The provider account and upstream key id a route declared over a span of time:
    reconciliation attributes a day's usage to the key in force then, so rotating a key
    does not turn the old key's history into a leak (decision 0116, review B2).

    Written only by `metering.services.route_key_period_record` (route_set, the route
    admin): at most one open period (valid_until NULL) per route; a change of account or
    key closes it and opens the next at the same instant. valid_from NULL is the
    beginning of time (the periods seeded by migration 0020 for the routes that existed).
    """

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="key_periods")
    provider_account = models.ForeignKey(
        "ProviderAccount",
        on_delete=models.PROTECT,
        related_name="key_periods",
        null=True,
        blank=True,
    )
    upstream_key_id = models.CharField(max_length=200, blank=True)
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["route", "valid_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["route"],
                condition=models.Q(valid_until__isnull=True),
                name="upstream_key_period_one_open",
            ),
        ]
        indexes = [
            models.Index(
                fields=["provider_account", "valid_from"], name="upstream_key_period_acct"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.route_id} {self.upstream_key_id or '-'} [{self.valid_from}, {self.valid_until})"
        )


# --- Routing across targets (decision 0117) ---------------------------------------------


# Latency histograms: bucket i counts values below LATENCY_BUCKET_EDGES_US[i] (and at or
# above the previous edge); the last bucket counts everything above the last edge. Edges
# grow by x sqrt(2) from 50 ms (28 edges, up to about 819 s): one constant, read by the
# ledger's fold and by every reader of the histograms.
LATENCY_BUCKET_EDGES_US: tuple[int, ...] = tuple(round(50_000 * 2 ** (i / 2)) for i in range(28))


class RouteTargetHour(models.Model):
    """Attempts per target, UTC hour and reasoning effort, folded in the ledger's own
    batch statement (`metering.ledger.rollups`): exact, and tiny (no tenant or key).

    Invariants, summed over shards: every count and sum equals a scan of the usage
    records of its key (route_id > 0 only). `answered` counts completed and incomplete
    attempts; `failed_over` those retried on another target."""

    route_id = models.BigIntegerField()
    hour = models.DateTimeField()
    # The effort the calls asked for ("" none).
    reasoning_effort = models.CharField(max_length=16, default="", blank=True)
    shard = models.PositiveSmallIntegerField(default=0)
    attempts = models.BigIntegerField(default=0)
    answered = models.BigIntegerField(default=0)
    failed_over = models.BigIntegerField(default=0)
    status_5xx = models.BigIntegerField(default=0)
    status_429 = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    incomplete = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    serving_cost_usd = models.DecimalField(max_digits=44, decimal_places=24, default=0)
    spend_usd = models.DecimalField(max_digits=44, decimal_places=24, default=0)
    # Sum of latency_us over the attempts (mean latency = latency_us_sum / attempts).
    latency_us_sum = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["route_id", "hour", "reasoning_effort", "shard"],
                name="route_target_hour_unique",
            ),
        ]
        indexes = [models.Index(fields=["hour"], name="route_hour_time")]

    def __str__(self) -> str:
        return f"route {self.route_id} {self.hour:%Y-%m-%d %H}:00 {self.reasoning_effort}"


class RouteLatencyBucket(models.Model):
    """One bucket of a target's latency or time-to-first-token histogram per UTC hour and
    reasoning effort (edges: LATENCY_BUCKET_EDGES_US), folded with RouteTargetHour."""

    class Kind(models.TextChoices):
        LATENCY = "latency", "Latency (request to end of upstream response)"
        TTFT = "ttft", "Time to first token"

    route_id = models.BigIntegerField()
    hour = models.DateTimeField()
    reasoning_effort = models.CharField(max_length=16, default="", blank=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # Index into LATENCY_BUCKET_EDGES_US (len(edges): above the last edge).
    bucket = models.PositiveSmallIntegerField()
    shard = models.PositiveSmallIntegerField(default=0)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["route_id", "hour", "reasoning_effort", "kind", "bucket", "shard"],
                name="route_latency_bucket_unique",
            ),
        ]
        indexes = [models.Index(fields=["hour"], name="route_latency_hour")]

    def __str__(self) -> str:
        return f"route {self.route_id} {self.kind} bucket {self.bucket}: {self.count}"


class RouteExpectation(models.Model):
    """What a call to one target plausibly spends, per reasoning effort: learned hourly
    from RouteTargetHour by `metering.routing.learn` (the `cheapest` policy ranks by it)."""

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="expectations")
    reasoning_effort = models.CharField(max_length=16, default="", blank=True)
    # Means per answered attempt (cost is linear in tokens: the mean is the statistic).
    mean_input_tokens = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    mean_cached_input_tokens = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    mean_cache_write_tokens = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    mean_output_tokens = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    mean_reasoning_tokens = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    # Upper edge of the bucket holding the median latency (ms); null: no answered calls.
    p50_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    samples = models.PositiveBigIntegerField(default=0)
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["route", "reasoning_effort"], name="route_expectation_per_effort"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.route} {self.reasoning_effort or '(none)'}: {self.samples} samples"
