"""Archive, verify, drop and restore of ledger months (metering.ledger.archive), on the
real database (PostgreSQL partitions; SQLite keeps its records) and a real store: a
local directory, or an S3-compatible server on loopback (moto_server, over HTTP)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import F
from django.urls import reverse

from config.errors import Conflict
from metering import tasks
from metering.calendar import month_day
from metering.ledger import archive as ledger_archive
from metering.ledger.archive import (
    ADDED_SINCE,
    SCHEMA,
    SCHEMA_VERSION,
    ArchiveMismatch,
    ledger_month_archive,
    ledger_month_drop,
    ledger_month_export,
    ledger_month_restore,
    ledger_month_verify,
    schema_of_version,
)
from metering.ledger.archive_months import RUN_CLASS, STATE_CLASS
from metering.ledger.archive_store import ArchiveStoreError, archive_store_open
from metering.ledger.orm import usage_records_write
from metering.ledger.partitions import partition_create, partition_name, partitions_list
from metering.models import LedgerArchive, ServingCostRate, UsageRecord, UsageRollup
from metering.selectors import (
    UsageFilter,
    usage_series,
    usage_summary,
    usage_summary_raw,
    usage_totals,
)
from tests.factories import ApiKeyFactory
from tests.ports import free_port
from tests.usage_helpers import usage_row

pytestmark = pytest.mark.django_db

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
postgres_only = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").split(":")[0] not in ("postgres", "postgresql"),
    reason="partitions (and so a drop) exist on PostgreSQL only",
)
sqlite_only = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "") != "", reason="the embedded SQLite ledger"
)


@pytest.fixture
def archive_dir(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "archive"
    settings.RECKON_LEDGER_ARCHIVE_URL = root.as_uri()
    settings.RECKON_LEDGER_ARCHIVE_ENDPOINT_URL = ""
    return root


@pytest.fixture
def rate() -> ServingCostRate:
    return ServingCostRate.objects.create(
        alias="reasoner",
        accelerator="h100",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_usd=Decimal("0.333333333333333333"),
        cache_read_usd=Decimal("0.01"),
        cache_write_usd=Decimal("0.02"),
        output_usd=Decimal("1.777777777777777777"),
        reasoning_usd=Decimal("1.5"),
    )


# The routing stamps of a failed-over attempt (decision 0117), on some rows of a month.
ROUTED = {
    "route_id": 31,
    "attempt": 1,
    "failed_over": True,
    "route_policy": "cheapest",
    "route_reason": "cost",
    "reasoning_effort": "",
}


def write_month(month: datetime, rate: ServingCostRate, count: int = 40) -> list[dict[str, Any]]:
    """`count` records over the month from two tenants, one in ten flagged, with exact
    money, JSON usage and every nullable column both set and empty."""
    if connection.vendor == "postgresql":
        partition_create(month)
    keys = [ApiKeyFactory(), ApiKeyFactory()]
    rows = []
    for n in range(count):
        rows.append(
            usage_row(
                keys[n % 2],
                started_at=month + timedelta(hours=17 * n, microseconds=n * 7919),
                rate=rate if n % 3 else None,
                alias="reasoner" if n % 4 else "writer",
                input_tokens=1000 + n,
                cached_input_tokens=n,
                cache_write_tokens=2 * n,
                output_tokens=300 * n,
                reasoning_tokens=777 * n,
                spend_usd=Decimal("0.000000000000000000000001") * n + Decimal("12.5") * (n % 5),
                flags=["reasoning_exceeds_output"] if n % 10 == 9 else [],
                raw_usage={"prompt_tokens": n, "note": 'naïve, "quoted"\nline'} if n % 2 else None,
                upstream_response_id="" if n % 3 else f"chatcmpl-{n}",
                ttft_us=None if n % 2 else 1000 + n,
                provider_account_id=None if n % 3 == 1 else 7 + n % 2,
                **(ROUTED if n % 4 == 1 else {}),
            )
        )
    usage_records_write(rows)
    return rows


def db_rows(month: datetime) -> list[tuple[Any, ...]]:
    fields = [f.attname for f in UsageRecord._meta.concrete_fields]
    return list(
        UsageRecord.objects.filter(
            started_at__gte=month, started_at__lt=month_day(month.year, month.month + 1)
        )
        .order_by("id")
        .values_list(*fields)
    )


VERSION_1 = [
    "id:int64",
    "request_id:string",
    "tenant_id:string",
    "api_key_id:int64",
    "alias:string",
    "provider:string",
    "upstream_model:string",
    "accelerator:string",
    "endpoint:string",
    "stream:bool",
    "status:string",
    "upstream_status:int64",
    "upstream_response_id:string",
    "input_tokens:int64",
    "cached_input_tokens:int64",
    "cache_write_tokens:int64",
    "output_tokens:int64",
    "reasoning_tokens:int64",
    "reasoning_source:string",
    "flags:string",
    "raw_usage:string",
    "cost_rate_id:int64",
    "serving_cost_usd:decimal256(44, 24)",
    "spend_usd:decimal256(44, 24)",
    "reasoning_cost_usd:decimal256(44, 24)",
    "client_disconnected:bool",
    "ttft_us:int64",
    "latency_us:int64",
    "started_at:timestamp[us, tz=UTC]",
    "finished_at:timestamp[us, tz=UTC]",
    "recorded_at:timestamp[us, tz=UTC]",
]


# Version 2: the provider account stamp (reconciliation), after the accelerator.
VERSION_2 = [*VERSION_1[:8], "provider_account_id:int64", *VERSION_1[8:]]
# Version 3: the routing stamps (decision 0117), after the provider account.
VERSION_3 = [
    *VERSION_2[:9],
    "route_id:int64",
    "attempt:int64",
    "failed_over:bool",
    "route_policy:string",
    "route_reason:string",
    "reasoning_effort:string",
    *VERSION_2[9:],
]


def test_schema_is_explicit_and_pinned() -> None:
    # A new ledger column must come with a new archive schema version.
    assert SCHEMA_VERSION == 3
    assert SCHEMA.names == [f.column for f in UsageRecord._meta.concrete_fields]
    assert [f"{f.name}:{f.type}" for f in SCHEMA] == VERSION_3  # bump the version with it
    assert [f"{f.name}:{f.type}" for f in schema_of_version(2)] == VERSION_2
    assert [f"{f.name}:{f.type}" for f in schema_of_version(1)] == VERSION_1
    assert SCHEMA.field("provider_account_id").nullable
    assert all(SCHEMA.field(name).nullable for name in ADDED_SINCE[2])
    assert str(SCHEMA.field("spend_usd").type) == "decimal256(44, 24)"
    assert str(SCHEMA.field("started_at").type) == "timestamp[us, tz=UTC]"
    assert not any("float" in str(f.type) or "double" in str(f.type) for f in SCHEMA)


def test_export_writes_exact_files_and_a_manifest(archive_dir: Path, rate: ServingCostRate) -> None:
    rows = write_month(SEP, rate)
    write_month(OCT, rate, count=3)  # another month stays out
    before = db_rows(SEP)
    archive = ledger_month_export(month=SEP, rows_per_file=15)
    manifest = archive.manifest
    assert archive.state == "exported" and archive.location == archive_dir.as_uri()
    assert manifest["rows"] == 40 and [f["rows"] for f in manifest["files"]] == [15, 15, 10]
    assert (manifest["min_id"], manifest["max_id"]) == (before[0][0], before[-1][0])
    every, clean = manifest["sums"]["all"], manifest["sums"]["unflagged"]
    assert every["reasoning_tokens"] == sum(r["reasoning_tokens"] for r in rows)
    assert clean["reasoning_tokens"] == sum(r["reasoning_tokens"] for r in rows if not r["flags"])
    assert clean["requests"] == 36
    stored_spend = [
        s
        for s in UsageRecord.objects.filter(started_at__lt=OCT).values_list("spend_usd", flat=True)
    ]
    assert Decimal(every["spend_usd"]) == sum(stored_spend)  # what the database holds
    if connection.vendor == "postgresql":  # (SQLite itself stores money as a float)
        assert Decimal(every["spend_usd"]) == sum(r["spend_usd"] for r in rows)
        assert every["spend_usd"].endswith("780")  # 1e-24 * (0 + ... + 39): to 24 places
    if connection.vendor == "postgresql":
        assert Decimal(every["serving_cost_usd"]) == sum(
            r["serving_cost_usd"] for r in rows if r["serving_cost_usd"] is not None
        )
    assert (archive_dir / "2026-09" / "manifest.json").is_file()
    # the files hold the rows exactly (money as decimals, ids, JSON as its text)
    table = pq.read_table(archive_dir / "2026-09" / "part-00000.parquet")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    first = table.slice(0, 1).to_pylist()[0]
    stored = UsageRecord.objects.get(pk=first["id"])
    assert first["request_id"] == str(stored.request_id)
    assert first["spend_usd"] == stored.spend_usd and isinstance(first["spend_usd"], Decimal)
    assert first["started_at"] == stored.started_at
    assert first["flags"] == "[]"
    odd = pq.read_table(archive_dir / "2026-09" / "part-00000.parquet").slice(1, 1).to_pylist()[0]
    assert json.loads(odd["raw_usage"]) == {"prompt_tokens": 1, "note": 'naïve, "quoted"\nline'}
    assert odd["ttft_us"] is None and odd["upstream_response_id"] == ""


def test_verify_reads_back_and_checks_database_and_rollups(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    ledger_month_export(month=SEP)
    archive = ledger_month_verify(month=SEP)
    assert archive.state == "verified" and archive.verified_at is not None
    assert len(db_rows(SEP)) == 40  # verify never removes anything


def test_a_tampered_file_stops_the_drop(archive_dir: Path, rate: ServingCostRate) -> None:
    write_month(SEP, rate)
    ledger_month_export(month=SEP)
    ledger_month_verify(month=SEP)
    part = archive_dir / "2026-09" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ArchiveMismatch) as caught:
        ledger_month_archive(month=SEP)  # resumes at "verified": verifies again first
    assert "sha256" in caught.value.message
    assert LedgerArchive.objects.get(month=SEP).state == "verified"
    assert len(db_rows(SEP)) == 40


def test_a_sum_mismatch_with_the_rollups_stops_the_drop(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    UsageRollup.objects.filter(hour__gte=SEP, hour__lt=OCT, alias="writer").update(
        output_tokens=F("output_tokens") + 1
    )
    with pytest.raises(ArchiveMismatch) as caught:
        ledger_month_archive(month=SEP)
    assert any("rollups vs unflagged output_tokens" in d for d in caught.value.extra["differences"])
    assert LedgerArchive.objects.get(month=SEP).state == "exported"
    assert len(db_rows(SEP)) == 40
    with pytest.raises(Conflict, match="not verified"):
        ledger_month_drop(month=SEP)


def test_a_tampered_manifest_is_found(archive_dir: Path, rate: ServingCostRate) -> None:
    write_month(SEP, rate)
    ledger_month_export(month=SEP)
    manifest = archive_dir / "2026-09" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"rows": 40', '"rows": 41'))
    with pytest.raises(ArchiveMismatch, match="stored manifest differs"):
        ledger_month_verify(month=SEP)


@sqlite_only
def test_sqlite_exports_and_verifies_but_keeps_its_records(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    with pytest.raises(Conflict, match="SQLite ledger is not partitioned"):
        ledger_month_archive(month=SEP)
    assert LedgerArchive.objects.get(month=SEP).state == "verified"
    assert len(db_rows(SEP)) == 40
    with pytest.raises(CommandError, match="SQLite ledger is not partitioned"):
        call_command("ledger_archive", "2026-09")
    call_command("ledger_archive", "2026-09", "--no-drop")
    assert tasks.ledger_retention.delay().get() == 0  # retention never drops on SQLite


@postgres_only
def test_archive_drop_and_restore_with_the_same_ids(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    write_month(OCT, rate, count=5)
    before = db_rows(SEP)
    call_command("ledger_archive", "2026-09")
    assert LedgerArchive.objects.get(month=SEP).state == "dropped"
    assert partition_name(SEP) not in {name for _, name in partitions_list()}
    assert db_rows(SEP) == [] and len(db_rows(OCT)) == 5
    # rollups are kept: invoices still rate from them
    assert UsageRollup.objects.filter(hour__gte=SEP, hour__lt=OCT).exists()
    call_command("ledger_archive", "2026-09")  # again: nothing to do
    with pytest.raises(Conflict, match="already archived and dropped"):
        ledger_month_export(month=SEP)
    call_command("ledger_restore", "2026-09")
    assert db_rows(SEP) == before  # every column, the same ids
    assert LedgerArchive.objects.get(month=SEP).state == "restored"
    call_command("ledger_restore", "2026-09")  # again: a no-op
    assert db_rows(SEP) == before
    ledger_month_export(month=OCT)
    with pytest.raises(CommandError, match="never dropped"):
        call_command("ledger_restore", "2026-10")
    with pytest.raises(CommandError, match="2026-11 has no archive"):
        call_command("ledger_restore", "2026-11")
    # the restored month is immutable like any other
    with pytest.raises(Exception, match="immutable"):
        UsageRecord.objects.filter(pk=before[0][0]).update(input_tokens=0)


def _as_version(archive_dir: Path, month: datetime, version: int) -> None:
    """Rewrite an exported month as an archive of an older schema `version`: its files
    without the columns added since, its manifest (stored and recorded) with their
    checksums and the old version."""
    archive = LedgerArchive.objects.get(month=month)
    manifest = archive.manifest
    folder = archive_dir / manifest["month"]
    for entry in manifest["files"]:
        path = folder / entry["name"]
        table = pq.read_table(path).drop_columns(list(ADDED_SINCE[version]))
        pq.write_table(table.cast(schema_of_version(version)), path, compression="zstd")
        entry["sha256"] = ledger_archive._sha256(path)
        entry["bytes"] = path.stat().st_size
    manifest["schema_version"] = version
    manifest["schema"] = [
        {"name": f.name, "type": str(f.type), "nullable": f.nullable}
        for f in schema_of_version(version)
    ]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    archive.manifest = manifest
    archive.save(update_fields=["manifest"])


@postgres_only
@pytest.mark.parametrize("version", [1, 2])
def test_an_archive_of_an_older_schema_version_still_restores(
    archive_dir: Path, rate: ServingCostRate, version: int
) -> None:
    """An archive of schema version 1 (no provider_account_id, no routing stamps) or 2
    (no routing stamps) verifies, drops and restores: every other column as it was, the
    columns it lacks NULL."""
    write_month(SEP, rate)
    before = db_rows(SEP)
    in_sep = UsageRecord.objects.filter(started_at__lt=OCT)
    assert {r.provider_account_id for r in in_sep} == {None, 7, 8}
    assert {r.route_id for r in in_sep} == {None, 31}
    ledger_month_export(month=SEP, rows_per_file=15)
    _as_version(archive_dir, SEP, version)
    assert ledger_month_verify(month=SEP).state == "verified"  # older files
    ledger_month_drop(month=SEP)
    assert LedgerArchive.objects.get(month=SEP).state == "dropped" and db_rows(SEP) == []
    call_command("ledger_restore", "2026-09")
    names = [f.column for f in UsageRecord._meta.concrete_fields]
    lacking = [names.index(column) for column in ADDED_SINCE[version]]
    after = db_rows(SEP)
    assert len(after) == len(before) == 40
    for old, new in zip(before, after, strict=True):
        assert all(new[i] is None for i in lacking)
        assert [v for i, v in enumerate(new) if i not in lacking] == [
            v for i, v in enumerate(old) if i not in lacking
        ]


def test_an_archive_of_an_unknown_schema_version_does_not_verify(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate, count=5)
    archive = ledger_month_export(month=SEP)
    archive.manifest["schema_version"] = 99
    (archive_dir / "2026-09" / "manifest.json").write_text(
        json.dumps(archive.manifest, indent=1, sort_keys=True)
    )
    archive.save(update_fields=["manifest"])
    with pytest.raises(ArchiveMismatch, match="schema differs from version 99"):
        ledger_month_verify(month=SEP)


@postgres_only
def test_records_arriving_after_verification_stop_the_drop(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    ledger_month_export(month=SEP)
    ledger_month_verify(month=SEP)
    key = ApiKeyFactory()
    usage_records_write([usage_row(key, started_at=SEP + timedelta(days=3), input_tokens=5)])
    with pytest.raises(ArchiveMismatch, match="changed since it was verified"):
        ledger_month_drop(month=SEP)
    assert len(db_rows(SEP)) == 41
    assert partition_name(SEP) in {name for _, name in partitions_list()}


@postgres_only
def test_retention_resumes_after_a_crash_between_export_and_drop(
    archive_dir: Path, rate: ServingCostRate, settings: Any
) -> None:
    write_month(SEP, rate)
    write_month(OCT, rate, count=4)
    settings.RECKON_LEDGER_RETENTION_MONTHS = 2
    as_of = datetime(2026, 12, 2, tzinfo=UTC)  # keeps Oct and Nov; Sep and older go
    ledger_month_export(month=SEP)  # ... and the run died here
    (archive_dir / "2026-09" / "part-00000.parquet").write_bytes(b"half a file")
    assert tasks.ledger_retention.delay(as_of.isoformat()).get() >= 1
    assert LedgerArchive.objects.get(month=SEP).state == "dropped"  # re-exported, verified
    assert db_rows(SEP) == [] and len(db_rows(OCT)) == 4
    assert not LedgerArchive.objects.filter(month=OCT).exists()
    assert tasks.ledger_retention.delay(as_of.isoformat()).get() == 0  # idempotent
    ledger_month_restore(month=SEP)  # an operator brings September back to look at it:
    assert tasks.ledger_retention.delay(as_of.isoformat()).get() == 0  # it stays
    assert len(db_rows(SEP)) == 40


@postgres_only
def test_retention_resumes_after_a_crash_between_verify_and_drop(
    archive_dir: Path, rate: ServingCostRate, settings: Any
) -> None:
    write_month(SEP, rate)
    settings.RECKON_LEDGER_RETENTION_MONTHS = 2
    ledger_month_export(month=SEP)
    ledger_month_verify(month=SEP)  # ... and the run died here
    tasks.ledger_retention.delay("2026-12-02T00:00:00+00:00").get()
    assert LedgerArchive.objects.get(month=SEP).state == "dropped"


def test_retention_unset_keeps_everything(archive_dir: Path, rate: ServingCostRate) -> None:
    write_month(SEP, rate, count=3)
    assert tasks.ledger_retention.delay("2030-01-01T00:00:00+00:00").get() == 0
    assert len(db_rows(SEP)) == 3


@postgres_only
def test_raw_usage_totals_read_a_dropped_month_from_its_archive(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    first = UsageRecord.objects.order_by("id")[0]
    sep_last = UsageRecord.objects.order_by("-id").values_list("id", flat=True)[0]
    write_month(OCT, rate, count=1)
    # the same tenant in October: a window spans the archived and the live month
    october = [
        usage_row(first.api_key, started_at=OCT + timedelta(days=d), output_tokens=7)
        for d in (1, 12)
    ]
    usage_records_write(october)
    oct_first = UsageRecord.objects.get(request_id=october[0]["request_id"]).pk
    windows = [  # (start, end, cut-off): whole month; mid-month to mid-month
        (SEP, OCT, sep_last - 3),
        (SEP + timedelta(days=9, hours=5), OCT + timedelta(days=7), oct_first + 1),
    ]

    def totals() -> list[Any]:
        return [
            usage_totals(tenant_id=first.tenant_id, start=s, end=e, up_to_record_id=c)
            for s, e, c in windows
        ]

    before = totals()
    assert before[0].tokens and before[0].cutoff_record_id <= sep_last - 3
    assert before[1].cutoff_record_id == oct_first  # the live month was read too
    ledger_month_archive(month=SEP)
    assert db_rows(SEP) == []
    assert totals() == before


def test_the_store_url_never_carries_credentials() -> None:
    with pytest.raises(ArchiveStoreError, match="must not carry credentials"):
        archive_store_open(url="s3://AKIA:secret@bucket/prefix")
    with pytest.raises(ArchiveStoreError, match="file:// or s3://"):
        archive_store_open(url="ftp://host/dir")
    with pytest.raises(ArchiveStoreError, match="No archive location"):
        archive_store_open(url="")


def test_the_admin_shows_archives_read_only(
    client: Any, archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate, count=3)
    archive = ledger_month_export(month=SEP)
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    listing = client.get(reverse("admin:metering_ledgerarchive_changelist"))
    assert listing.status_code == 200
    assert b"2026" in listing.content and b"Exported" in listing.content
    page = client.get(reverse("admin:metering_ledgerarchive_change", args=[archive.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.get(reverse("admin:metering_ledgerarchive_add")).status_code == 403
    assert (
        client.post(reverse("admin:metering_ledgerarchive_delete", args=[archive.pk])).status_code
        == 403
    )


# --- S3-compatible store on loopback ----------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server on loopback (moto_server), for this module."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_archive(s3_endpoint: str, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"ledger-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    settings.RECKON_LEDGER_ARCHIVE_URL = f"s3://{bucket}/reckon/ledger"
    settings.RECKON_LEDGER_ARCHIVE_ENDPOINT_URL = s3_endpoint
    return client, bucket


def test_s3_store_export_verify_and_tamper(s3_archive: Any, rate: ServingCostRate) -> None:
    client, bucket = s3_archive
    write_month(SEP, rate)
    archive = ledger_month_export(month=SEP, rows_per_file=25)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "reckon/ledger/2026-09/manifest.json",
        "reckon/ledger/2026-09/part-00000.parquet",
        "reckon/ledger/2026-09/part-00001.parquet",
    ]
    assert archive.location == f"s3://{bucket}/reckon/ledger"
    assert "test-secret" not in str(archive.manifest) and "test-key" not in archive.location
    assert ledger_month_verify(month=SEP).state == "verified"
    body = client.get_object(Bucket=bucket, Key=keys[2])["Body"].read()
    client.put_object(Bucket=bucket, Key=keys[2], Body=body[:-9] + b"XXXXXXXXX")
    with pytest.raises(ArchiveMismatch, match="sha256"):
        ledger_month_verify(month=SEP)
    client.delete_object(Bucket=bucket, Key=keys[1])
    with pytest.raises(ArchiveStoreError, match="could not be read"):
        ledger_month_verify(month=SEP)


@postgres_only
def test_s3_store_drop_and_restore(s3_archive: Any, rate: ServingCostRate) -> None:
    write_month(SEP, rate)
    before = db_rows(SEP)
    assert ledger_month_archive(month=SEP).state == "dropped"
    assert db_rows(SEP) == []
    assert ledger_month_restore(month=SEP).state == "restored"
    assert db_rows(SEP) == before


def test_months_must_be_whole() -> None:
    with pytest.raises(ValueError, match="first instant of a month"):
        ledger_archive._month_bounds(SEP + timedelta(days=1))


@pytest.mark.parametrize("command", ["ledger_archive", "ledger_restore"])
@pytest.mark.parametrize("month", ["2026-13", "2026-9", "Sept", "2026-09-01"])
def test_commands_refuse_a_malformed_month(command: str, month: str) -> None:
    with pytest.raises(CommandError, match="Use YYYY-MM"):
        call_command(command, month)


@postgres_only
def test_two_runs_never_work_on_one_month_at_once(archive_dir: Path, rate: ServingCostRate) -> None:
    write_month(SEP, rate, count=3)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    other = psycopg.connect(**params, autocommit=True)  # another run's session
    try:
        other.execute("SELECT pg_advisory_lock(%s, 202609)", [RUN_CLASS])
        with pytest.raises(Conflict, match="being archived or restored by another run"):
            ledger_month_archive(month=SEP)
        assert not LedgerArchive.objects.filter(month=SEP).exists()
        ledger_month_export(month=OCT)  # another month is free
        other.execute("SELECT pg_advisory_unlock(%s, 202609)", [RUN_CLASS])
        assert ledger_month_archive(month=SEP).state == "dropped"
    finally:
        other.close()


# --- review fixes: reads of dropped months, month locks, restore, drop, store errors -----


def analytics(tenant_id: uuid.UUID, since: datetime, until: datetime) -> list[Any]:
    """Every usage summary and series answer of a window (each grouping, granularity)."""
    filters = UsageFilter(tenant_id=tenant_id, since=since, until=until)
    answers: list[Any] = [
        usage_summary(filters=filters, group_by=group) for group in (None, "alias", "api_key")
    ]
    answers.append(usage_summary(filters=filters, group_by="day"))
    for granularity in ("hour", "day", "month"):
        for group in (None, "alias"):
            answers.append(usage_series(filters=filters, granularity=granularity, group_by=group))
    return answers


@postgres_only
def test_usage_analytics_of_a_dropped_month_equal_the_raw_scan(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    write_month(SEP, rate)
    write_month(OCT, rate, count=2)
    key = UsageRecord.objects.order_by("id")[0].api_key
    # the tenant's records inside the partial hours at the windows' edges
    at = [
        SEP + timedelta(days=3, hours=10, minutes=30),
        SEP + timedelta(days=25, hours=14, minutes=45),
    ]
    at.append(OCT + timedelta(days=2, hours=8, minutes=20))
    usage_records_write(
        [
            usage_row(key, started_at=t, alias="writer", output_tokens=100 + n, flags=flags)
            for n, t in enumerate(at)
            for flags in ([], ["reasoning_exceeds_output"])
        ]
        # an attempt that failed over (decision 0117): a record, not a client call
        + [usage_row(key, started_at=at[0], alias="writer", status="failed", **ROUTED)]
    )
    windows = [  # mid-hour to mid-hour inside September; September into October;
        (at[0] - timedelta(minutes=15), at[1] + timedelta(minutes=5)),
        (at[0] - timedelta(minutes=15), at[2] + timedelta(minutes=5)),
        (at[0] - timedelta(minutes=15), at[0] + timedelta(minutes=10)),  # no whole hour
    ]
    raw = [
        usage_summary_raw(filters=UsageFilter(tenant_id=key.tenant_id, since=s, until=u))
        for s, u in windows
    ]
    before = [analytics(key.tenant_id, s, u) for s, u in windows]
    assert [b[0] for b in before] == raw  # the rollup path equals the raw scan
    assert before[2][0][0]["requests"] == 2  # the edge records are in the answer (calls)
    ledger_month_archive(month=SEP)
    assert db_rows(SEP) == []
    assert [analytics(key.tenant_id, s, u) for s, u in windows] == before
    # the check can fail: the edge hours' records are gone from the database
    LedgerArchive.objects.filter(month=SEP).update(state="verified")
    assert [analytics(key.tenant_id, s, u) for s, u in windows] != before


@postgres_only
@pytest.mark.django_db(transaction=True)  # each step commits, as in production
def test_a_drop_or_restore_waits_for_no_reader_and_is_refused_under_one(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    """A read across database and archive holds its months' state lock shared: a drop or
    restore starting under it is refused (the reader sees the month one way only)."""
    write_month(SEP, rate, count=4)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    reader = psycopg.connect(**params)  # a recompute's transaction, mid-read
    try:
        reader.execute("SELECT pg_advisory_xact_lock_shared(%s, 202609)", [STATE_CLASS])
        ledger_month_export(month=SEP)
        ledger_month_verify(month=SEP)  # export and verify never wait for readers
        with pytest.raises(Conflict, match="being read"):
            ledger_month_drop(month=SEP)
        assert LedgerArchive.objects.get(month=SEP).state == "verified"
        assert len(db_rows(SEP)) == 4
        reader.rollback()
        ledger_month_drop(month=SEP)
        reader.execute("SELECT pg_advisory_xact_lock_shared(%s, 202609)", [STATE_CLASS])
        with pytest.raises(Conflict, match="being read"):
            ledger_month_restore(month=SEP)
        assert LedgerArchive.objects.get(month=SEP).state == "dropped"
        assert partition_name(SEP) not in {name for _, name in partitions_list()}
        reader.rollback()
        assert ledger_month_restore(month=SEP).state == "restored"
    finally:
        reader.close()


@postgres_only
def test_a_failed_restore_leaves_no_partition_behind(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    """The partition is created in the transaction that loads the rows: a restore that
    fails half-way leaves the month dropped with no partition (an insert into the month
    is still refused, so nothing is folded into the rollups twice)."""
    write_month(SEP, rate)
    ledger_month_export(month=SEP, rows_per_file=10)
    ledger_month_verify(month=SEP)
    ledger_month_drop(month=SEP)
    last = archive_dir / "2026-09" / "part-00003.parquet"
    good = last.read_bytes()
    last.write_bytes(good[:200] + bytes([good[200] ^ 1]) + good[201:])
    with pytest.raises(ArchiveMismatch, match="part-00003.parquet: sha256"):
        ledger_month_restore(month=SEP)
    assert LedgerArchive.objects.get(month=SEP).state == "dropped"
    assert partition_name(SEP) not in {name for _, name in partitions_list()}
    with pytest.raises(Exception, match="no partition"):
        usage_records_write([usage_row(ApiKeyFactory(), started_at=SEP + timedelta(days=2))])
    last.write_bytes(good)
    assert ledger_month_restore(month=SEP).state == "restored"
    assert len(db_rows(SEP)) == 40


def test_store_failures_are_store_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArchiveStoreError, match="endpoint URL must not carry credentials"):
        archive_store_open(url="s3://bucket/prefix", endpoint_url="http://AKIA:secret@minio:9000")
    # nothing listens on this port: the endpoint cannot be reached
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = archive_store_open(url="s3://bucket/p", endpoint_url=f"http://127.0.0.1:{port}")
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.raises(
        ArchiveStoreError,
        match="could not be written .*EndpointConnectionError|S3UploadFailedError",
    ):
        store.put_file(name="a/f", path=source)
    with pytest.raises(ArchiveStoreError, match="could not be read"):
        store.get_file(name="a/f", path=tmp_path / "g")
    with pytest.raises(ArchiveStoreError, match="could not be reached"):
        store.exists(name="a/f")


@postgres_only
@pytest.mark.django_db(transaction=True)  # the drop and the insert run in their own sessions
def test_a_drop_and_an_insert_into_its_month_never_deadlock(
    archive_dir: Path, rate: ServingCostRate
) -> None:
    """An insert takes the parent, then the partition; the drop does the same (it used
    to hold the partition, then wait for the parent: a deadlock). Here a writer's open
    transaction holds the parent while the drop waits for it, then inserts into the
    month being dropped: it goes through, and the drop stops on the new record."""
    write_month(SEP, rate, count=4)
    write_month(OCT, rate, count=1)
    ledger_month_export(month=SEP)
    ledger_month_verify(month=SEP)
    columns = [c for c in ledger_archive.COLUMNS if c != "id"]
    copied = ", ".join("gen_random_uuid()" if c == "request_id" else c for c in columns)

    def copy_row(month: datetime) -> str:
        return (
            f"INSERT INTO metering_usagerecord ({', '.join(columns)})"  # noqa: S608
            f" SELECT {copied} FROM {partition_name(month)} ORDER BY id LIMIT 1"
        )

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    writer = psycopg.connect(**params)
    outcome: list[BaseException | None] = []

    def drop() -> None:
        try:
            ledger_month_drop(month=SEP)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)
        finally:
            connection.close()

    try:
        writer.execute(copy_row(OCT))  # holds the parent (and October) until it commits
        dropper = threading.Thread(target=drop)
        dropper.start()
        time.sleep(0.5)  # the drop is waiting for the parent
        writer.execute(copy_row(SEP))  # a late record of September: no deadlock
        writer.commit()
        dropper.join(timeout=60)
        assert not dropper.is_alive()
    finally:
        writer.close()
    assert isinstance(outcome[0], ArchiveMismatch), outcome
    assert "arrived after the check" in str(outcome[0])
    assert len(db_rows(SEP)) == 5
    assert LedgerArchive.objects.get(month=SEP).state == "verified"


def test_the_proxy_process_never_loads_the_archive_libraries() -> None:
    """Every process sets Django up and loads the selectors and tasks; pyarrow and boto3
    (the archive's) load only where a month is archived or a dropped month read."""
    probe = (
        "import sys, django; django.setup();"
        " import config.asgi, metering.selectors, metering.tasks;"
        " print(sorted(m for m in ('pyarrow', 'boto3', 'metering.ledger.archive')"
        " if m in sys.modules))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
