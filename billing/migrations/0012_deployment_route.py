"""Deployments name the alias's target they serve (routing, decision 0117): set on every
existing deployment from its alias, which had exactly one route until now."""

import django.db.models.deletion
from django.db import migrations, models


def deployments_to_routes(apps, schema_editor):
    Route = apps.get_model("metering", "Route")
    Deployment = apps.get_model("billing", "Deployment")
    for route_id, alias in Route.objects.values_list("pk", "alias_id"):
        Deployment.objects.filter(alias=alias, route__isnull=True).update(route_id=route_id)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0011_operator_endpoint_role"),
        ("metering", "0022_aliases"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="route",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="deployments",
                to="metering.route",
            ),
        ),
        migrations.RunPython(deployments_to_routes, migrations.RunPython.noop),
    ]
