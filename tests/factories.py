"""factory_boy factories for the metering models."""

import uuid
from datetime import UTC, datetime

import factory

from metering.keys import api_key_generate, api_key_hash, api_key_visible_prefix
from metering.ledger.rollups import usage_rollups_fold
from metering.models import Alias, ApiKey, Route, Tenant, UsageRecord


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"tenant-{n}")


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """A key whose raw value is unknown; tests that call with a key use api_key_create."""

    class Meta:
        model = ApiKey

    tenant = factory.SubFactory(TenantFactory)
    prefix = factory.LazyFunction(lambda: api_key_visible_prefix(api_key_generate()))
    key_hash = factory.LazyFunction(lambda: api_key_hash(api_key_generate()))


class RouteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Route
        django_get_or_create = ["alias", "name"]

    @classmethod
    def _get_or_create(cls, model_class, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(kwargs.get("alias"), str):  # an alias named by its text, as tenants call it
            kwargs["alias"] = Alias.objects.get_or_create(name=kwargs["alias"])[0]
        return super()._get_or_create(model_class, *args, **kwargs)

    alias = factory.Sequence(lambda n: f"model-{n}")
    provider = Route.Provider.OPENAI
    base_url = "http://127.0.0.1:9/v1"
    upstream_model = "sim-reasoner"
    accelerator = "nvidia-h100-sxm"


class UsageRecordFactory(factory.django.DjangoModelFactory):
    """A stored usage record, folded into the rollups as the ledger's write paths do."""

    class Meta:
        model = UsageRecord

    @classmethod
    def _create(cls, model_class, *args, **kwargs):  # type: ignore[no-untyped-def]
        record = super()._create(model_class, *args, **kwargs)
        usage_rollups_fold([record.pk])
        return record

    request_id = factory.LazyFunction(uuid.uuid4)
    tenant = factory.SubFactory(TenantFactory)
    api_key = factory.SubFactory(ApiKeyFactory, tenant=factory.SelfAttribute("..tenant"))
    alias = "reasoner"
    provider = Route.Provider.OPENAI
    upstream_model = "sim-reasoner"
    accelerator = "nvidia-h100-sxm"
    endpoint = UsageRecord.Endpoint.CHAT_COMPLETIONS
    status = UsageRecord.Status.COMPLETED
    upstream_status = 200
    input_tokens = 100
    output_tokens = 20
    reasoning_tokens = 80
    reasoning_source = UsageRecord.ReasoningSource.REPORTED
    started_at = factory.LazyFunction(lambda: datetime.now(UTC))
    finished_at = factory.LazyAttribute(lambda o: o.started_at)
