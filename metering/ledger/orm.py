"""The ledger's ORM write path: SQLite (the embedded default), and spool replay on
PostgreSQL too (the two databases Reckon runs on; `rollups` speaks both). One transaction inserts a batch, skipping request
ids already stored, and folds the new records into rollups (`rollups`)."""

import asyncio
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction

from metering.ledger.partitions import is_missing_partition
from metering.ledger.rollups import usage_rollups_fold
from metering.models import ApiKey, UsageRecord


def usage_records_write(records: list[dict[str, Any]], *, touch_keys: Iterable[int] = ()) -> int:
    """Insert records and fold them into rollups in one transaction; skip stored ids.

    Returns how many rows were inserted. `touch_keys` are API key ids whose last_used_at
    moves to the newest record's finish time in the same transaction.
    """
    records = list({r["request_id"]: r for r in reversed(records)}.values())[::-1]  # first wins
    request_ids = [r["request_id"] for r in records]
    with transaction.atomic():
        existing = set(
            UsageRecord.objects.filter(request_id__in=request_ids).values_list(
                "request_id", flat=True
            )
        )
        fresh = [UsageRecord(**r) for r in records if r["request_id"] not in existing]
        UsageRecord.objects.bulk_create(fresh)
        usage_rollups_fold([row.pk for row in fresh])
        keys = sorted(set(touch_keys))
        if keys:
            newest = max(r["finished_at"] for r in records)
            ApiKey.objects.filter(pk__in=keys).update(last_used_at=newest)
    return len(fresh)


class OrmLedgerSink:
    """The sink for SQLite (the embedded default): the ORM on one thread."""

    concurrency = 1

    def __init__(self) -> None:
        # One thread, so batches always use the same (thread-local) connection.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    async def write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._write, records, touch_keys)

    def _write(self, records: list[dict[str, Any]], touch_keys: list[int]) -> None:
        try:
            usage_records_write(records, touch_keys=touch_keys)
        except IntegrityError as exc:
            if is_missing_partition(exc):  # the database's failure, not the records'
                raise DatabaseError(str(exc)) from exc
            raise
        except DatabaseError:
            connection.close()  # replaced on the next try
            raise

    async def close(self) -> None:
        self._executor.submit(lambda: connection.close()).result()
        self._executor.shutdown(wait=True)
