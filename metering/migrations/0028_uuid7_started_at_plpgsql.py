"""`metering_uuid7_started_at` (the ledger's CHECK that a version-7 request id encodes its
`started_at`, migration 0013) becomes a PL/pgSQL function with the same result for every
id.

Why: PostgreSQL 15 caches nothing of an SQL-language function across statements. Each
batch insert into the ledger parsed its body twice (once trying to inline it, once to run
it) and planned it once, before checking a single row: about 100 us of the database's
CPU per batch, a fifth of a one-record batch's whole cost. PL/pgSQL compiles the
function once per connection and keeps its expression plan, so the CHECK costs one call
per row. It reads the id's bytes (`uuid_send`) instead of its hex text. The function
keeps its name and signature, so the CHECK that calls it is untouched (no revalidation
of the ledger). SQLite has no such function and is left alone.
"""

from django.db import migrations

PLPGSQL = r"""
-- started_at a version-7 request id encodes: 48-bit Unix milliseconds (bytes 0-5), then
-- the microsecond within that millisecond (0..999) in the 12 bits of rand_a (the low
-- nibble of byte 6, byte 7). NULL for any other version (the high nibble of byte 6).
-- Integer arithmetic only (no float rounding). Immutable: the interval added has a time
-- part only, so the session's time zone cannot change the result.
CREATE OR REPLACE FUNCTION metering_uuid7_started_at(request_id uuid) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN CASE WHEN get_byte(uuid_send(request_id), 6) >> 4 = 7 THEN
        timestamptz '1970-01-01 00:00:00+00'
        + (('x' || encode(substr(uuid_send(request_id), 1, 6), 'hex'))::bit(48)::bigint * 1000
           + ((get_byte(uuid_send(request_id), 6) & 15) << 8
              | get_byte(uuid_send(request_id), 7)))
          * interval '1 microsecond'
    END;
END
$$;
"""

# migration 0013's body, restored by the reverse
SQL = r"""
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
"""


def _run(sql: str):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("metering", "0027_apikey_can_read_billing")]
    operations = [migrations.RunPython(_run(PLPGSQL), _run(SQL))]
