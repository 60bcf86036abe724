"""On PostgreSQL, the usage ledger becomes a table partitioned by month (decision 0112).

`metering_usagerecord` is rebuilt as `PARTITION BY RANGE (started_at)`:
- primary key (id, started_at) and UNIQUE (request_id, started_at): a unique index on a
  partitioned table must hold the partition key;
- CHECK `usage_request_id_encodes_started_at`: a version-7 request id encodes its
  `started_at` (`metering_uuid7_started_at`, an IMMUTABLE SQL function), so equal ids
  have equal `started_at`, land in one partition, and its unique index catches the
  second: idempotency stays global. Legacy uuid4 ids are not constrained (their retries
  carry the same `started_at`);
- the index (tenant_id, started_at, id) and the token CHECK as before;
- the immutability row trigger on the parent (PostgreSQL clones it onto every
  partition) and a BEFORE TRUNCATE statement trigger on the parent and on every
  partition (statement triggers are not cloned);
- existing rows copied with their ids; the id sequence continues where it was;
- one partition per month from the oldest month holding rows to the current month + 3.

Django's model state is unchanged (the ORM still sees `id` as the primary key). SQLite is
left unpartitioned. The reverse rebuilds the flat table (rows copied back): it costs a
full copy, like the forward.

The partition DDL here is frozen on purpose; the live code's copy is
`metering.ledger.partitions.partition_ddl`.
"""

from datetime import UTC, datetime

from django.db import migrations

TABLE = "metering_usagerecord"

FUNCTIONS = r"""
-- started_at a version-7 request id encodes: 48-bit Unix milliseconds, then the
-- microsecond within that millisecond (0..999) in the 12 bits of rand_a. NULL for any
-- other version. Integer arithmetic only (no float rounding). Immutable: the interval
-- added has a time part only, so the session's time zone cannot change the result.
CREATE OR REPLACE FUNCTION metering_uuid7_started_at(request_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN substr(h, 13, 1) = '7' THEN
        timestamptz '1970-01-01 00:00:00+00'
        + (('x' || lpad(substr(h, 1, 12), 16, '0'))::bit(64)::bigint * 1000
           + ('x' || lpad(substr(h, 14, 3), 16, '0'))::bit(64)::bigint)
          * interval '1 microsecond'
    END
    FROM (SELECT replace(request_id::text, '-', '') AS h) AS id
$$;

-- TRUNCATE bypasses row triggers: a statement trigger on the parent and on every
-- partition refuses it. A session may allow it by setting reckon.ledger_truncate to
-- 'allow' (the test suite's database flush does; nothing in the application does).
CREATE OR REPLACE FUNCTION metering_usage_record_no_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('reckon.ledger_truncate', true) = 'allow' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'usage records are immutable (TRUNCATE of % refused)', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
"""

ENCODES = (
    "started_at = coalesce(metering_uuid7_started_at(request_id), started_at)"
)


def _month_start(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def _add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _partition(cursor, month: datetime) -> None:  # type: ignore[no-untyped-def]
    name = f"{TABLE}_p{month:%Y_%m}"
    cursor.execute(
        f'CREATE TABLE "{name}" (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
        " INCLUDING STORAGE)"
    )
    cursor.execute(
        f'CREATE TRIGGER metering_usage_record_no_truncate BEFORE TRUNCATE ON "{name}"'
        " FOR EACH STATEMENT EXECUTE FUNCTION metering_usage_record_no_truncate()"
    )
    cursor.execute(
        f'ALTER TABLE {TABLE} ATTACH PARTITION "{name}"'
        f" FOR VALUES FROM ('{month.isoformat()}') TO ('{_add_months(month, 1).isoformat()}')"
    )


def _sequence_state(cursor, table: str) -> tuple[str, int, bool]:  # type: ignore[no-untyped-def]
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
    sequence = cursor.fetchone()[0]
    cursor.execute(f"SELECT last_value, is_called FROM {sequence}")
    last_value, is_called = cursor.fetchone()
    return sequence, last_value, is_called


def _continue_sequence(cursor, old: str, new_table: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The new table's id sequence takes over where `old` table's stood, and its name."""
    old_sequence, last_value, is_called = _sequence_state(cursor, old)
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [new_table])
    new_sequence = cursor.fetchone()[0]
    cursor.execute("SELECT setval(%s, %s, %s)", [new_sequence, last_value, is_called])
    return old_sequence, new_sequence


def forward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(FUNCTIONS)
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_flat")
        # its index names are reused by the partitioned table
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass"
            " AND contype IN ('p', 'u')",
            [f"{TABLE}_flat"],
        )
        for (constraint,) in cursor.fetchall():
            cursor.execute(f'ALTER TABLE {TABLE}_flat DROP CONSTRAINT "{constraint}"')
        cursor.execute("DROP INDEX usage_tenant_time")
        cursor.execute(
            f"CREATE TABLE {TABLE} (LIKE {TABLE}_flat INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            " INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)"
            " PARTITION BY RANGE (started_at)"
        )
        cursor.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id, started_at)")
        cursor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_request_id_started_at_key"
            " UNIQUE (request_id, started_at)"
        )
        cursor.execute(f"CREATE INDEX usage_tenant_time ON {TABLE} (tenant_id, started_at, id)")
        cursor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT usage_request_id_encodes_started_at"
            f" CHECK ({ENCODES})"
        )
        cursor.execute(
            f"CREATE TRIGGER metering_usage_record_immutable BEFORE UPDATE OR DELETE ON {TABLE}"
            " FOR EACH ROW EXECUTE FUNCTION metering_usage_record_immutable()"
        )
        cursor.execute(
            f"CREATE TRIGGER metering_usage_record_no_truncate BEFORE TRUNCATE ON {TABLE}"
            " FOR EACH STATEMENT EXECUTE FUNCTION metering_usage_record_no_truncate()"
        )
        # every month from the oldest holding rows to 3 after the current one, no gap
        cursor.execute(f"SELECT min(started_at) FROM {TABLE}_flat")
        oldest = cursor.fetchone()[0]
        current = _month_start(datetime.now(UTC))
        month = min(_month_start(oldest), current) if oldest else current
        while month <= _add_months(current, 3):
            _partition(cursor, month)
            month = _add_months(month, 1)
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {TABLE}_flat")
        old_sequence, new_sequence = _continue_sequence(cursor, f"{TABLE}_flat", TABLE)
        cursor.execute(f"DROP TABLE {TABLE}_flat")
        cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {old_sequence.split('.')[-1]}")
        cursor.execute(f"ANALYZE {TABLE}")


def backward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_parted")
        cursor.execute(f"ALTER INDEX usage_tenant_time RENAME TO {TABLE}_parted_tenant_time")
        cursor.execute(f"ALTER INDEX {TABLE}_pkey RENAME TO {TABLE}_parted_pkey")
        cursor.execute(
            f"CREATE TABLE {TABLE} (LIKE {TABLE}_parted INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            " INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)"
        )
        cursor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT usage_request_id_encodes_started_at")
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {TABLE}_parted")
        cursor.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        cursor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_request_id_key UNIQUE (request_id)"
        )
        cursor.execute(f"CREATE INDEX usage_tenant_time ON {TABLE} (tenant_id, started_at, id)")
        cursor.execute(
            f"CREATE TRIGGER metering_usage_record_immutable BEFORE UPDATE OR DELETE ON {TABLE}"
            " FOR EACH ROW EXECUTE FUNCTION metering_usage_record_immutable()"
        )
        old_sequence, new_sequence = _continue_sequence(cursor, f"{TABLE}_parted", TABLE)
        cursor.execute(f"DROP TABLE {TABLE}_parted")  # its partitions go with it
        cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {old_sequence.split('.')[-1]}")
        cursor.execute("DROP FUNCTION metering_usage_record_no_truncate()")
        cursor.execute("DROP FUNCTION metering_uuid7_started_at(uuid)")
        cursor.execute(f"ANALYZE {TABLE}")


class Migration(migrations.Migration):
    dependencies = [("metering", "0012_usage_watermark")]
    operations = [migrations.RunPython(forward, backward)]
