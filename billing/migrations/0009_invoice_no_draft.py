"""Invoices have no draft state: a close issues every invoice finalized, with its number.

Drops the "draft" choice and its escape from the number check, makes "finalized" the
default, and deletes the ``billing.finalize_invoice`` permission, which nothing checked
(groups lose it with it).

An invoice still in status "draft" stops the migration: it is a money document, and
turning it into a finalized one would issue it without a number. Resolve such rows by
hand first (finalize them through a period close, or delete them if they were never sent).
"""

from django.db import migrations, models


def refuse_drafts(apps, schema_editor):  # type: ignore[no-untyped-def]
    invoice_model = apps.get_model("billing", "Invoice")
    drafts = list(
        invoice_model.objects.filter(status="draft").order_by("pk").values_list("pk", flat=True)
    )
    if drafts:
        shown = ", ".join(str(pk) for pk in drafts[:20])
        more = f" and {len(drafts) - 20} more" if len(drafts) > 20 else ""
        raise RuntimeError(
            f"{len(drafts)} invoice(s) still have status 'draft' (ids {shown}{more}). "
            "Invoices have no draft state any more and this migration will not convert "
            "money documents: finalize or delete these invoices by hand, then migrate again."
        )


def remove_finalize_permission(apps, schema_editor):  # type: ignore[no-untyped-def]
    permission_model = apps.get_model("auth", "Permission")
    permission_model.objects.filter(
        content_type__app_label="billing",
        content_type__model="invoice",
        codename="finalize_invoice",
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("billing", "0008_usage_watermark"),
        ("metering", "0012_usage_watermark"),
    ]

    operations = [
        migrations.RunPython(refuse_drafts, migrations.RunPython.noop),
        migrations.AlterModelOptions(
            name="invoice",
            options={
                "ordering": ["-period_start", "-id"],
                "permissions": [
                    ("void_invoice", "Can void invoices"),
                    ("resend_invoice", "Can resend invoices to Stripe"),
                    ("export_invoices", "Can export invoices of every tenant as CSV"),
                ],
            },
        ),
        migrations.RemoveConstraint(
            model_name="invoice",
            name="finalized_invoice_has_number",
        ),
        migrations.AlterField(
            model_name="invoice",
            name="status",
            field=models.CharField(
                choices=[
                    ("finalized", "Finalized"),
                    ("paid", "Paid"),
                    ("void", "Void"),
                    ("uncollectible", "Uncollectible"),
                ],
                default="finalized",
                max_length=16,
            ),
        ),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.CheckConstraint(
                condition=models.Q(("number__isnull", False)), name="invoice_has_number"
            ),
        ),
        migrations.RunPython(remove_finalize_permission, migrations.RunPython.noop),
    ]
