"""Aliases with several targets (routing, decision 0117).

- `Alias` holds what tenants call and its routing policy; every route becomes a target
  of the alias named by its `alias` column, which keeps its text (a foreign key to
  `Alias.name`: no route row is rewritten). One alias per existing route, each with
  that single target named "default".
- Grants move from routes to aliases (`Tenant.allowed_aliases`), copied both ways.
- Serving cost rates gain the target they are for (set on every existing rate: one
  route per alias until now).
- Per-target statistics (`RouteTargetHour`, `RouteLatencyBucket`) and learned
  expectations (`RouteExpectation`) start empty.

The usage records' routing stamps and the rollups' new key column are migration 0023
(online, not atomic).
"""

import django.db.models.deletion
from django.db import migrations, models


def aliases_from_routes(apps, schema_editor):
    Route = apps.get_model("metering", "Route")
    Alias = apps.get_model("metering", "Alias")
    for alias, is_active in Route.objects.values_list("alias", "is_active"):
        Alias.objects.get_or_create(name=alias, defaults={"is_active": is_active})


def grants_to_aliases(apps, schema_editor):
    Tenant = apps.get_model("metering", "Tenant")
    Alias = apps.get_model("metering", "Alias")
    names = dict(Alias.objects.values_list("name", "pk"))
    Through = Tenant.allowed_aliases.through
    Through.objects.bulk_create(
        [
            Through(tenant_id=row.tenant_id, alias_id=names[row.route.alias_id])
            for row in Tenant.allowed_routes.through.objects.select_related("route")
        ],
        ignore_conflicts=True,
    )


def grants_to_routes(apps, schema_editor):
    Tenant = apps.get_model("metering", "Tenant")
    Route = apps.get_model("metering", "Route")
    Through = Tenant.allowed_routes.through
    rows = []
    for grant in Tenant.allowed_aliases.through.objects.select_related("alias"):
        for route_id in Route.objects.filter(alias_id=grant.alias.name).values_list(
            "pk", flat=True
        ):
            rows.append(Through(tenant_id=grant.tenant_id, route_id=route_id))
    Through.objects.bulk_create(rows, ignore_conflicts=True)


def rates_to_routes(apps, schema_editor):
    Route = apps.get_model("metering", "Route")
    ServingCostRate = apps.get_model("metering", "ServingCostRate")
    for route_id, alias in Route.objects.values_list("pk", "alias_id"):
        ServingCostRate.objects.filter(alias=alias, route__isnull=True).update(route_id=route_id)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0021_provider_roles"),
    ]

    operations = [
        migrations.CreateModel(
            name="Alias",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=200, unique=True)),
                (
                    "policy",
                    models.CharField(
                        choices=[
                            ("fallback", "Fallback by priority"),
                            ("weighted", "Weighted split"),
                            ("cheapest", "Cheapest expected cost"),
                            ("effort", "Rules by reasoning effort"),
                        ],
                        default="fallback",
                        max_length=16,
                    ),
                ),
                ("rules", models.JSONField(blank=True, default=list)),
                ("max_attempts", models.PositiveSmallIntegerField(default=2)),
                ("is_active", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "verbose_name_plural": "aliases",
                "ordering": ["name"],
            },
        ),
        migrations.RunPython(aliases_from_routes, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="route",
            name="alias",
            field=models.ForeignKey(
                db_column="alias",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="targets",
                to="metering.alias",
                to_field="name",
            ),
        ),
        migrations.AddField(
            model_name="tenant",
            name="allowed_aliases",
            field=models.ManyToManyField(blank=True, related_name="tenants", to="metering.alias"),
        ),
        migrations.RunPython(grants_to_aliases, grants_to_routes),
        migrations.RemoveField(
            model_name="tenant",
            name="allowed_routes",
        ),
        migrations.CreateModel(
            name="RouteExpectation",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("reasoning_effort", models.CharField(blank=True, default="", max_length=16)),
                (
                    "mean_input_tokens",
                    models.DecimalField(decimal_places=4, default=0, max_digits=20),
                ),
                (
                    "mean_cached_input_tokens",
                    models.DecimalField(decimal_places=4, default=0, max_digits=20),
                ),
                (
                    "mean_cache_write_tokens",
                    models.DecimalField(decimal_places=4, default=0, max_digits=20),
                ),
                (
                    "mean_output_tokens",
                    models.DecimalField(decimal_places=4, default=0, max_digits=20),
                ),
                (
                    "mean_reasoning_tokens",
                    models.DecimalField(decimal_places=4, default=0, max_digits=20),
                ),
                ("p50_latency_ms", models.PositiveIntegerField(blank=True, null=True)),
                ("samples", models.PositiveBigIntegerField(default=0)),
                ("computed_at", models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name="RouteLatencyBucket",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("route_id", models.BigIntegerField()),
                ("hour", models.DateTimeField()),
                ("reasoning_effort", models.CharField(blank=True, default="", max_length=16)),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("latency", "Latency (request to end of upstream response)"),
                            ("ttft", "Time to first token"),
                        ],
                        max_length=8,
                    ),
                ),
                ("bucket", models.PositiveSmallIntegerField()),
                ("shard", models.PositiveSmallIntegerField(default=0)),
                ("count", models.BigIntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name="RouteTargetHour",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("route_id", models.BigIntegerField()),
                ("hour", models.DateTimeField()),
                ("reasoning_effort", models.CharField(blank=True, default="", max_length=16)),
                ("shard", models.PositiveSmallIntegerField(default=0)),
                ("attempts", models.BigIntegerField(default=0)),
                ("answered", models.BigIntegerField(default=0)),
                ("failed_over", models.BigIntegerField(default=0)),
                ("status_5xx", models.BigIntegerField(default=0)),
                ("status_429", models.BigIntegerField(default=0)),
                ("failed", models.BigIntegerField(default=0)),
                ("incomplete", models.BigIntegerField(default=0)),
                ("input_tokens", models.BigIntegerField(default=0)),
                ("cached_input_tokens", models.BigIntegerField(default=0)),
                ("cache_write_tokens", models.BigIntegerField(default=0)),
                ("output_tokens", models.BigIntegerField(default=0)),
                ("reasoning_tokens", models.BigIntegerField(default=0)),
                (
                    "serving_cost_usd",
                    models.DecimalField(decimal_places=24, default=0, max_digits=44),
                ),
                ("spend_usd", models.DecimalField(decimal_places=24, default=0, max_digits=44)),
                ("latency_us_sum", models.BigIntegerField(default=0)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.AlterModelOptions(
            name="route",
            options={"ordering": ["alias", "priority", "name"]},
        ),
        migrations.AddField(
            model_name="route",
            name="first_byte_timeout_ms",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="route",
            name="max_concurrent",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="route",
            name="name",
            field=models.CharField(default="default", max_length=100),
        ),
        migrations.AddField(
            model_name="route",
            name="priority",
            field=models.SmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="route",
            name="weight",
            field=models.PositiveIntegerField(default=100),
        ),
        migrations.AddField(
            model_name="servingcostrate",
            name="route",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="cost_rates",
                to="metering.route",
            ),
        ),
        migrations.RunPython(rates_to_routes, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="servingcostrate",
            index=models.Index(fields=["route", "effective_from"], name="cost_rate_route_time"),
        ),
        migrations.AddConstraint(
            model_name="alias",
            constraint=models.CheckConstraint(
                condition=models.Q(("max_attempts__gte", 1), ("max_attempts__lte", 4)),
                name="alias_max_attempts_1_to_4",
            ),
        ),
        migrations.AddConstraint(
            model_name="route",
            constraint=models.UniqueConstraint(
                fields=("alias", "name"), name="route_target_unique"
            ),
        ),
        migrations.AddField(
            model_name="routeexpectation",
            name="route",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="expectations",
                to="metering.route",
            ),
        ),
        migrations.AddIndex(
            model_name="routelatencybucket",
            index=models.Index(fields=["hour"], name="route_latency_hour"),
        ),
        migrations.AddConstraint(
            model_name="routelatencybucket",
            constraint=models.UniqueConstraint(
                fields=("route_id", "hour", "reasoning_effort", "kind", "bucket", "shard"),
                name="route_latency_bucket_unique",
            ),
        ),
        migrations.AddIndex(
            model_name="routetargethour",
            index=models.Index(fields=["hour"], name="route_hour_time"),
        ),
        migrations.AddConstraint(
            model_name="routetargethour",
            constraint=models.UniqueConstraint(
                fields=("route_id", "hour", "reasoning_effort", "shard"),
                name="route_target_hour_unique",
            ),
        ),
        migrations.AddConstraint(
            model_name="routeexpectation",
            constraint=models.UniqueConstraint(
                fields=("route", "reasoning_effort"), name="route_expectation_per_effort"
            ),
        ),
    ]
