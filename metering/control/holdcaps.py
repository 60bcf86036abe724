"""Learning how much a call plausibly spends: the 99th percentile of output tokens
(visible + reasoning) per tenant and alias, and per alias across tenants, over the last
RECKON_HOLD_CAP_DAYS days of completed calls. Admission grants a call that names no
maximum at least this much (never more than the ceiling), so a tenant near the end of a
budget is refused only when what is left cannot cover a plausible call.

Run periodically (metering.tasks.learn_hold_caps); each run replaces the table's view
of the window, so running it twice changes nothing.
"""

import math
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from config.compiled_sql import UUID_SLOT, CompiledQuery
from metering.models import HoldCap, UsageRecord

PERCENTILE = 0.99
_LOCK_ID = 0x726B_686F_6C64  # "rkhold": this module's advisory lock

_PG_SQL = """
SELECT tenant_id, alias,
       percentile_disc(%s) WITHIN GROUP (ORDER BY output_tokens + reasoning_tokens),
       count(*)
FROM metering_usagerecord
WHERE started_at >= %s AND started_at < %s AND status = 'completed'
GROUP BY GROUPING SETS ((tenant_id, alias), (alias))
HAVING count(*) >= %s
"""


def percentile(values: list[int], q: float = PERCENTILE) -> int:  # float-ok: a rank, not money
    """The smallest observed value at or above the q-th fraction of the values (as
    PostgreSQL's percentile_disc)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def _learned_in_python(
    since: datetime, until: datetime, min_samples: int
) -> list[tuple[uuid.UUID | None, str, int, int]]:
    groups: dict[tuple[uuid.UUID | None, str], list[int]] = defaultdict(list)
    rows = UsageRecord.objects.filter(
        started_at__gte=since, started_at__lt=until, status=UsageRecord.Status.COMPLETED
    ).values_list("tenant_id", "alias", "output_tokens", "reasoning_tokens")
    for tenant_id, alias, output, reasoning in rows.iterator(chunk_size=10_000):
        groups[(tenant_id, alias)].append(output + reasoning)
        groups[(None, alias)].append(output + reasoning)
    return [
        (tenant_id, alias, percentile(values), len(values))
        for (tenant_id, alias), values in groups.items()
        if len(values) >= min_samples
    ]


@transaction.atomic
def hold_caps_learn(*, as_of: datetime | None = None) -> int:
    """Recompute every hold cap from the window ending at `as_of`; returns how many."""
    until = as_of or timezone.now()
    since = until - timedelta(days=settings.RECKON_HOLD_CAP_DAYS)
    min_samples = settings.RECKON_HOLD_CAP_MIN_SAMPLES
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Runs that overlap (a retried task beside a late one) take turns instead of
            # colliding on the table's unique constraint; SQLite's writers already do.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
            cursor.execute(_PG_SQL, [PERCENTILE, since, until, min_samples])
            learned = [(t, a, int(p), int(n)) for t, a, p, n in cursor.fetchall()]
    else:
        learned = _learned_in_python(since, until, min_samples)
    HoldCap.objects.all().delete()
    HoldCap.objects.bulk_create(
        [
            HoldCap(
                tenant_id=tenant_id,
                alias=alias,
                p99_output_tokens=max(p99, 1),
                samples=samples,
                computed_at=until,
            )
            for tenant_id, alias, p99, samples in learned
        ]
    )
    return len(learned)


# Every cap a tenant's calls may use: its own and every alias's across tenants.
_caps_of_tenant = CompiledQuery(
    lambda tenant_id: HoldCap.objects.filter(
        Q(tenant_id=tenant_id) | Q(tenant__isnull=True)
    ).values_list("alias", "tenant_id", "p99_output_tokens"),
    UUID_SLOT,
)


def hold_caps(tenant_id: uuid.UUID, aliases: list[str]) -> dict[str, int]:
    """The learned plausible output size per alias: the tenant's own where learned, else
    the alias's across tenants."""
    wanted = set(aliases)
    caps: dict[str, int] = {}
    for alias, owner, p99 in _caps_of_tenant.rows(tenant_id):
        if alias in wanted and (owner is not None or alias not in caps):
            caps[alias] = p99
    return caps
