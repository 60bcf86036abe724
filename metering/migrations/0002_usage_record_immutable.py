"""On PostgreSQL, the ledger refuses UPDATE and DELETE on usage records at the database
level, whatever code or operator tries it: corrections are new rows elsewhere."""

from django.db import migrations

FORBID = """
CREATE OR REPLACE FUNCTION metering_usage_record_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'usage records are immutable (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER metering_usage_record_immutable
    BEFORE UPDATE OR DELETE ON metering_usagerecord
    FOR EACH ROW EXECUTE FUNCTION metering_usage_record_immutable();
"""
ALLOW = """
DROP TRIGGER IF EXISTS metering_usage_record_immutable ON metering_usagerecord;
DROP FUNCTION IF EXISTS metering_usage_record_immutable();
"""


def forward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORBID, params=None)


def backward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(ALLOW, params=None)


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
