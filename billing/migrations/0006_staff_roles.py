"""The staff roles (operator, finance-read, finance-write) as Django groups holding exactly
their permissions. Idempotent: re-running sets the same permissions.

The roles are a frozen copy of `api.permissions.ROLES` as it stood when this migration was
written, so that the migration means the same whatever the code becomes. A permission that
does not exist yet at this point of history is skipped."""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.models import Q

OPERATOR = (
    "billing.add_costbasisversion",
    "billing.add_deployment",
    "billing.add_marginpolicy",
    "billing.add_plan",
    "billing.add_planversion",
    "billing.add_pricecomponent",
    "billing.add_pricetier",
    "billing.add_subscription",
    "billing.add_webhookendpoint",
    "billing.change_alert",
    "billing.change_costbasisversion",
    "billing.change_deployment",
    "billing.change_marginpolicy",
    "billing.change_plan",
    "billing.change_planversion",
    "billing.change_pricecomponent",
    "billing.change_pricetier",
    "billing.change_subscription",
    "billing.change_webhookendpoint",
    "billing.delete_pricecomponent",
    "billing.delete_pricetier",
    "billing.delete_webhookendpoint",
    "billing.publish_planversion",
    "billing.view_acceleratortype",
    "billing.view_alert",
    "billing.view_calibrationrun",
    "billing.view_costbasisversion",
    "billing.view_deployment",
    "billing.view_marginpolicy",
    "billing.view_plan",
    "billing.view_planversion",
    "billing.view_pricecomponent",
    "billing.view_pricetier",
    "billing.view_subscription",
    "billing.view_webhookendpoint",
    "metering.add_apikey",
    "metering.add_ratelimit",
    "metering.add_reasoningpolicy",
    "metering.add_route",
    "metering.add_spendlimit",
    "metering.add_tenant",
    "metering.change_apikey",
    "metering.change_ratelimit",
    "metering.change_reasoningpolicy",
    "metering.change_route",
    "metering.change_spendlimit",
    "metering.change_tenant",
    "metering.delete_ratelimit",
    "metering.delete_reasoningpolicy",
    "metering.delete_route",
    "metering.delete_spendlimit",
    "metering.revoke_apikey",
    "metering.view_apikey",
    "metering.view_holdcap",
    "metering.view_ratelimit",
    "metering.view_reasoningpolicy",
    "metering.view_route",
    "metering.view_servingcostrate",
    "metering.view_spendlimit",
    "metering.view_tenant",
    "metering.view_usagerecord",
    "metering.view_usagerollup",
)
FINANCE_READ = (
    "billing.export_invoices",
    "billing.view_acceleratortype",
    "billing.view_alert",
    "billing.view_balanceaccount",
    "billing.view_balanceentry",
    "billing.view_costbasisversion",
    "billing.view_creditnote",
    "billing.view_deployment",
    "billing.view_invoice",
    "billing.view_invoiceline",
    "billing.view_invoicesequence",
    "billing.view_marginpolicy",
    "billing.view_margins",
    "billing.view_plan",
    "billing.view_planversion",
    "billing.view_pricecomponent",
    "billing.view_pricetier",
    "billing.view_stripecustomer",
    "billing.view_stripeevent",
    "billing.view_subscription",
    "metering.view_servingcostrate",
    "metering.view_tenant",
    "metering.view_usagerecord",
    "metering.view_usagerollup",
)
FINANCE_WRITE = (
    *FINANCE_READ,
    "billing.change_balanceaccount",
    "billing.change_hard_stop",
    "billing.finalize_invoice",
    "billing.grant_credit",
    "billing.issue_creditnote",
    "billing.resend_invoice",
    "billing.void_invoice",
)
ROLES = {"operator": OPERATOR, "finance-read": FINANCE_READ, "finance-write": FINANCE_WRITE}


def sync(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Make each role's group hold exactly its permissions that exist (created if missing).
    Permissions are created first: migrations run before Django's own post-migrate step
    creates them."""
    for label in ("metering", "billing"):
        create_permissions(global_apps.get_app_config(label), verbosity=0, apps=apps)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role, wanted in ROLES.items():
        query = Q(pk__in=[])
        for name in wanted:
            label, codename = name.split(".")
            query |= Q(content_type__app_label=label, codename=codename)
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.set(permission_model.objects.filter(query))


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("metering", "0011_apikey_revoke_permission"),
        ("billing", "0005_staff_permissions"),
    ]

    operations = [migrations.RunPython(sync, migrations.RunPython.noop)]
