"""A query compiled once per process gives what its queryset gives, for any arguments, on
any thread: it keeps nothing of the connection of the thread that compiled it."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.db.models.sql.compiler import SQLCompiler

from config.compiled_sql import (
    DATETIME_SLOT,
    STR_SLOT,
    UUID_SLOT,
    CompiledQuery,
    datetime_slots,
    int_slots,
    model_fields,
    str_slots,
    uuid_slots,
)
from config.db_router import reporting_reads
from metering.models import Alias, ReasoningPolicy, SpendLimit, Tenant
from tests.api.test_replica_reads import needs_replica, on_replica
from tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db(transaction=True)


def limits(tenant_id, since):  # type: ignore[no-untyped-def]
    return (
        SpendLimit.objects.filter(tenant_id=tenant_id, created_at__gte=since)
        .filter(Q(api_key__isnull=True) | Q(api_key__reasoning_policy__isnull=False))
        .order_by("pk")
        .values_list(
            "pk", "window", "amount_usd", "created_at", "api_key__reasoning_policy__allowed_efforts"
        )
    )


def test_rows_are_the_querysets_for_any_arguments_on_any_thread() -> None:
    keys = [ApiKeyFactory(), ApiKeyFactory()]
    ReasoningPolicy.objects.create(api_key=keys[0], allowed_efforts=["low", "high"])
    for key in keys:
        SpendLimit.objects.create(tenant=key.tenant, window="month", amount_usd=Decimal("1.5"))
        SpendLimit.objects.create(
            tenant=key.tenant, api_key=key, window="total", amount_usd=Decimal("7.25")
        )
    query = CompiledQuery(limits, UUID_SLOT, DATETIME_SLOT)
    early = datetime(2020, 1, 1, tzinfo=UTC)
    late = datetime.now(UTC) + timedelta(days=1)
    for key in keys:
        for since in (early, late):
            assert query.rows(key.tenant_id, since) == list(limits(key.tenant_id, since))
    assert query.rows(keys[0].tenant_id, early)[1][-1] == ["low", "high"]  # converted JSON

    # On another thread, with its own connection, after the first one closed.
    connection.close()
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(query.rows(keys[1].tenant_id, early)))
    worker.start()
    worker.join()
    assert seen == [list(limits(keys[1].tenant_id, early))]
    # what it keeps (SQL, parameters, slots, converters) names no connection, nor a
    # compiler (which holds the compiling thread's connection)
    kept = [query._compiled, *(query._compiled or ())]
    for part in list(kept):
        if isinstance(part, list | tuple):
            kept.extend(part)
    assert not any(isinstance(part, BaseDatabaseWrapper | SQLCompiler) for part in kept)


def test_slots_of_one_type_take_distinct_values() -> None:
    for name in ("a", "b", "c"):
        Alias.objects.create(name=name, max_attempts=len(name) + 1)

    def build(*args):  # type: ignore[no-untyped-def]
        return (
            Alias.objects.filter(Q(name__in=args[:2]) | Q(pk__in=args[2:]))
            .order_by("name")
            .values_list("name", "max_attempts")
        )

    query = CompiledQuery(build, *str_slots(2), *int_slots(1))
    c = Alias.objects.get(name="c").pk
    assert query.rows("a", "b", c) == list(build("a", "b", c))
    assert [name for name, _ in query.rows("b", "zz", c)] == ["b", "c"]


def test_a_slot_missing_from_the_sql_is_refused() -> None:
    query = CompiledQuery(lambda tenant_id: Alias.objects.values_list("name"), UUID_SLOT)
    with pytest.raises(ValueError, match="not a parameter"):
        query.rows(UUID_SLOT)


@needs_replica
@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_a_reporting_read_goes_where_the_router_sends_its_queryset(settings) -> None:  # type: ignore[no-untyped-def]
    settings.RECKON_REPLICA_READS = True
    on_replica(Tenant(name="replica-only"))
    query = CompiledQuery(
        lambda name: Tenant.objects.filter(name=name).values_list("name"), STR_SLOT
    )
    assert query.rows("replica-only") == []  # the primary
    assert query.db() == "default"
    with reporting_reads():
        assert query.rows("replica-only") == [("replica-only",)]
        assert query.db() == "replica"
    assert query.rows("replica-only") == []


def test_equal_slots_are_refused() -> None:
    # both arguments would take the same parameters: the second overwriting the first
    def build(tenant_id, other_id):  # type: ignore[no-untyped-def]
        return Tenant.objects.filter(pk=tenant_id).exclude(pk=other_id).values_list("pk")

    with pytest.raises(ValueError, match="not distinct"):
        CompiledQuery(build, UUID_SLOT, UUID_SLOT)
    for slots in (uuid_slots(2), datetime_slots(2), int_slots(2), str_slots(2)):
        assert len(set(slots)) == 2
    tenants = [Tenant.objects.create(name=n) for n in "ab"]
    query = CompiledQuery(build, *uuid_slots(2))
    assert query.rows(tenants[0].pk, tenants[1].pk) == [(tenants[0].pk,)]
    assert query.rows(tenants[0].pk, tenants[0].pk) == []


def test_a_slot_written_into_the_sql_text_is_refused() -> None:
    (slot,) = int_slots(1)

    def build(pk):  # type: ignore[no-untyped-def]
        inlined = Alias.objects.extra(where=[f"id <> {pk}"])  # noqa: S610 - the case tested
        return inlined.filter(pk=pk).values_list("name")

    query = CompiledQuery(build, slot)
    with pytest.raises(ValueError, match="written into its SQL text"):
        query.rows(1)


def test_an_int_slot_on_a_narrower_column_is_refused() -> None:
    # INT_SLOT is beyond int2/int4: the ORM empties this filter instead of passing it
    query = CompiledQuery(
        lambda n: Alias.objects.filter(max_attempts=n).values_list("name"), *int_slots(1)
    )
    with pytest.raises(ValueError, match="no query"):
        query.rows(2)


def test_model_fields_come_in_the_order_from_db_maps_them() -> None:
    # `from_db` maps a row positionally in model field order, whatever order it is told
    fields = model_fields(Alias, "max_attempts", "name", "id")
    assert fields == ("id", "name", "max_attempts")
    alias = Alias.objects.create(name="x", max_attempts=3)
    row = Alias.objects.filter(pk=alias.pk).values_list(*fields).get()
    loaded = Alias.from_db("default", fields, row)
    assert (loaded.pk, loaded.name, loaded.max_attempts) == (alias.pk, "x", 3)
    with pytest.raises(ValueError, match="not fields of Alias"):
        model_fields(Alias, "name", "alias__name")
