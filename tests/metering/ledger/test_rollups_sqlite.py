"""The rollup fold's SQLite dialect (the embedded default): in a process of its own on a
fresh SQLite file, rollups equal the unflagged records' sums per (tenant, alias,
accelerator, API key, UTC hour) and the flagged ones' in the flagged sums, a replayed
batch adds nothing, and the commit stamp is the
highest record id (SQLite commits ids in order)."""

from pathlib import Path

from tests.sqlite_helpers import run_on_sqlite

SCRIPT = """
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import django

django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)
from metering.ledger.orm import usage_records_write
from metering.ledger.rollups import FLAGGED_SUMS, ROLLUP_SUMS
from metering.models import ApiKey, Tenant, UsageRecord, UsageRollup

tenants = [Tenant.objects.create(name=n) for n in ("a", "b")]
keys = [
    ApiKey.objects.create(tenant=tenants[i % 2], prefix=f"k{i}", key_hash=f"k{i}")
    for i in range(4)
]
base = datetime(2026, 11, 3, 10, 59, 59, 999999, tzinfo=UTC)


def record(i):
    key, at = keys[i % 4], base + timedelta(minutes=7 * (i % 5))
    return {
        "request_id": uuid.UUID(int=1000 + i), "tenant_id": key.tenant_id,
        "api_key_id": key.pk, "alias": "xy"[i % 3 == 0], "provider": "openai",
        "upstream_model": "m", "accelerator": "h100" if i % 4 == 0 else "",
        "endpoint": "chat.completions", "stream": False, "status": "completed",
        "upstream_status": 200, "upstream_response_id": "", "input_tokens": i,
        "cached_input_tokens": i // 2, "cache_write_tokens": 1, "output_tokens": 3 * i,
        "reasoning_tokens": i % 4, "reasoning_source": "reported",
        "flags": ["total_mismatch"] if i % 7 == 0 else [], "raw_usage": None,
        "cost_rate_id": None,
        "serving_cost_usd": Decimal("0.000123456789") * i if i % 2 else None,
        "reasoning_cost_usd": Decimal("0.5"), "spend_usd": Decimal("0.25") * i,
        "client_disconnected": False, "ttft_us": None, "latency_us": 1,
        "started_at": at, "finished_at": at,
    }


assert usage_records_write([record(i) for i in range(40)]) == 40
assert usage_records_write([record(i) for i in range(30, 70)]) == 30  # 30-39 replayed
flagged_names = tuple(f"flagged_{name}" for name in FLAGGED_SUMS)
expected = defaultdict(
    lambda: dict.fromkeys(("requests", "flagged", "last", *ROLLUP_SUMS, *flagged_names), 0)
)
for row in UsageRecord.objects.all():
    hour = row.started_at.replace(minute=0, second=0, microsecond=0)
    sums = expected[(row.tenant_id, row.alias, row.accelerator, row.api_key_id, hour)]
    sums["last"] = max(sums["last"], row.pk)
    if row.flags:
        sums["flagged"] += 1
        for name in FLAGGED_SUMS:
            sums[f"flagged_{name}"] += getattr(row, name) or 0
        continue
    sums["requests"] += 1
    for name in ROLLUP_SUMS:
        sums[name] += getattr(row, name) or 0
rollups = {
    (r.tenant_id, r.alias, r.accelerator, r.api_key_id, r.hour): r
    for r in UsageRollup.objects.all()
}
assert rollups.keys() == expected.keys(), (sorted(rollups), sorted(expected))
for group, sums in expected.items():
    r = rollups[group]
    assert (r.shard, r.requests, r.flagged_requests) == (0, sums["requests"], sums["flagged"])
    assert r.last_record_id == r.changed_xid == sums["last"], group
    for name in (*ROLLUP_SUMS, *flagged_names):
        assert getattr(r, name) == sums[name], (group, name, getattr(r, name), sums[name])
print("ok", len(rollups))
"""


def test_rollups_fold_on_sqlite(tmp_path: Path) -> None:
    stdout = run_on_sqlite(SCRIPT, tmp_path, migrated=True)
    assert stdout.startswith("ok ")
