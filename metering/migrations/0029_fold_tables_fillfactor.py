"""The tables the ledger's batch statement folds into (UsageRollup, RouteTargetHour,
RouteLatencyBucket) keep free room in each page (fillfactor), so an upsert's new row
version fits on its own page: a HOT update, which writes no index entry.

Why: every batch updates the rows of the current hour over and over. At the default
fillfactor (100) the rows of a new hour are inserted into full pages, so their updates
cannot stay on the page until pruning makes room: each such update moves the row and
inserts a new entry into every index of the table (six on UsageRollup), which the
indexes later spend CPU deleting again (bottom-up deletion). With the room nearly every
update is HOT (`bench/ledger_statement_bench.py --baseline REV --own-schema` prints the
HOT counts). RouteTargetHour and RouteLatencyBucket are tiny (no tenant or key): they
keep 70% free. UsageRollup is larger and read by billing, so it keeps half free (its
closed hours take up to twice the pages: the price of the room).

The setting holds for pages written from now on (rows of new hours); existing pages are
not rewritten (no lock beyond SHARE UPDATE EXCLUSIVE, which writers and readers do not
wait for; the migration gives up after 5 s rather than queue behind an autovacuum or an
index build holding it). A rewrite of UsageRollup (VACUUM FULL, pg_repack, a dump and
restore) packs its closed hours at 50% too: the whole table then takes up to twice the
pages. Storage parameters exist on PostgreSQL only; SQLite is left alone.
"""

from django.db import migrations

FILLFACTOR = {
    "metering_usagerollup": 50,
    "metering_routetargethour": 30,
    "metering_routelatencybucket": 30,
}


def _set(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET LOCAL lock_timeout = '5s'")
        for table, fillfactor in FILLFACTOR.items():
            name = schema_editor.quote_name(table)
            schema_editor.execute(f"ALTER TABLE {name} SET (fillfactor = {int(fillfactor)})")


def _reset(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET LOCAL lock_timeout = '5s'")
        for table in FILLFACTOR:
            schema_editor.execute(
                f"ALTER TABLE {schema_editor.quote_name(table)} RESET (fillfactor)"
            )


class Migration(migrations.Migration):
    dependencies = [("metering", "0028_uuid7_started_at_plpgsql")]
    operations = [migrations.RunPython(_set, _reset)]
