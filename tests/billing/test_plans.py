"""Plans, subscriptions and period rating against the database, from rollups."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import transaction

from billing.models import PlanVersion
from billing.period_rating import invoice_preview, period_rate
from billing.plans import (
    plan_create,
    plan_version_create,
    plan_version_issues,
    plan_version_publish,
    subscription_change_plan,
    subscription_create,
)
from billing.pricing.periods import Period
from billing.pricing.validate import PlanInvalid
from billing.selectors import CurrentVersion, plan_version_pricing, version_pricing
from config.errors import ApplicationError, Conflict, NotFound
from tests.factories import ApiKeyFactory
from tests.usage_helpers import write_usage  # noqa: F401 - used here and by other tests

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PER_MILLION = [
    {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.10")},
    {"token_class": "cache_read", "charge_model": "per_unit", "unit_price": Decimal("0.275")},
    {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4.40")},
    {
        "token_class": "reasoning",
        "charge_model": "graduated",
        "tiers": [
            {"up_to": Decimal("1"), "unit_price": Decimal("4.40")},
            {"up_to": None, "unit_price": Decimal("3.00")},
        ],
    },
]


def published(components=PER_MILLION, **kwargs) -> PlanVersion:  # type: ignore[no-untyped-def]
    plan = plan_create(code=f"p-{uuid.uuid4().hex[:8]}", name="Reasoning")
    version = plan_version_create(
        plan=plan, currency="USD", effective_from=T0, components=components, **kwargs
    )
    return plan_version_publish(version=version)


def test_publishing_freezes_and_validation_blocks_errors() -> None:
    plan = plan_create(code="bad", name="Bad")
    with pytest.raises(PlanInvalid) as excinfo:
        plan_version_create(
            plan=plan,
            currency="USD",
            effective_from=T0,
            components=[
                {
                    "token_class": "output",
                    "charge_model": "graduated",
                    "tiers": [{"up_to": Decimal(5), "unit_price": 1}],
                },
            ],
        )
    assert excinfo.value.extra["issues"][0]["code"] == "last_tier_not_open"
    version = published()
    assert plan_version_publish(version=version).published_at == version.published_at  # idempotent


def test_published_pricing_is_cached_once_its_transaction_commits(
    django_capture_on_commit_callbacks,
) -> None:  # type: ignore[no-untyped-def]
    version = published()
    with django_capture_on_commit_callbacks(execute=True):
        first = plan_version_pricing(version)
    assert plan_version_pricing(version) is first


def as_current(version: PlanVersion) -> CurrentVersion:
    return CurrentVersion(
        pk=version.pk,
        created_at=version.created_at,
        published_at=version.published_at,
        status=version.status,
        allowed_efforts=None,
        default_max_output_tokens=None,
        max_output_tokens=None,
        monthly_reasoning_tokens=None,
        reasoning_mode="",
    )


def test_both_pricing_reads_share_one_cache_of_published_versions_only(
    django_assert_num_queries,
) -> None:  # type: ignore[no-untyped-def]
    version = published()
    first = plan_version_pricing(version)
    with django_assert_num_queries(0):
        assert version_pricing(as_current(version)) is first
    plan = plan_create(code="draft", name="Draft")
    draft = plan_version_create(
        plan=plan, currency="USD", effective_from=T0, components=PER_MILLION
    )
    assert plan_version_pricing(draft) is not plan_version_pricing(draft)
    assert version_pricing(as_current(draft)) == plan_version_pricing(draft)
    assert version_pricing(as_current(draft)) is not version_pricing(as_current(draft))


def test_pricing_cache_never_serves_a_rolled_back_version() -> None:
    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        gone = published(base_fee=Decimal("10"))
        assert plan_version_pricing(gone).base_fee == 10
        raise Undo
    kept = published(base_fee=Decimal("0"))  # on SQLite, the rolled-back row's id again
    assert plan_version_pricing(kept).base_fee == 0


def test_volume_cliff_is_a_warning_not_an_error() -> None:
    version = published(
        [
            {
                "token_class": "output",
                "charge_model": "volume",
                "unit_tokens": 1000,
                "tiers": [
                    {
                        "up_to": Decimal(1000),
                        "unit_price": Decimal("0.010"),
                        "flat_fee": Decimal(5),
                    },
                    {
                        "up_to": Decimal(10000),
                        "unit_price": Decimal("0.008"),
                        "flat_fee": Decimal(10),
                    },
                    {"up_to": None, "unit_price": Decimal("0.005")},
                ],
            }
        ]
    )
    issues = plan_version_issues(version=version)
    assert [(i.severity, i.code) for i in issues] == [("warning", "volume_cliff")]
    assert (
        "crossing 10000 units lowers the total from 90.00 to 50.00 (by 40.00)" in issues[0].message
    )


def test_period_rating_from_rollups_matches_an_independent_calculation() -> None:
    key = ApiKeyFactory()
    subscription_create(tenant=key.tenant, plan_version=published(), starts_at=T0)
    for day in range(5):
        write_usage(
            key,
            T0 + timedelta(days=day, hours=3),
            input_tokens=200_000,
            cached_input_tokens=50_000,
            output_tokens=100_000,
            reasoning_tokens=300_000,
        )
    write_usage(key, T0 - timedelta(hours=1), reasoning_tokens=10**9)  # previous period: excluded
    rating = period_rate(
        tenant_id=key.tenant_id, period=Period(T0, datetime(2026, 12, 1, tzinfo=UTC))
    )
    # 1M input at 1.10, 0.25M cached at 0.275, 0.5M output at 4.40, 1.5M reasoning: 1M at 4.40 + 0.5M at 3.00
    expected = [
        Decimal("1.10"),
        Decimal("0.06875"),
        Decimal("2.20"),
        Decimal("4.40") + Decimal("1.50"),
    ]
    usage_lines = [line for line in rating.lines if line.kind == "usage"]
    assert [line.amount_exact for line in usage_lines] == expected
    assert [line.amount_minor for line in usage_lines] == [110, 7, 220, 590]
    assert rating.total_minor == 927
    assert rating.cutoff_record_id > 0


def test_mid_period_plan_change_splits_into_prorated_segments() -> None:
    key = ApiKeyFactory()
    cheap = published(base_fee=Decimal("30"))
    dear = published(
        [{"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("10")}],
        base_fee=Decimal("60"),
    )
    first = subscription_create(tenant=key.tenant, plan_version=cheap, starts_at=T0)
    write_usage(key, T0 + timedelta(days=2), output_tokens=1_000_000, reasoning_tokens=1_000_000)
    second = subscription_change_plan(
        subscription=first, plan_version=dear, at=T0 + timedelta(days=10, minutes=1)
    )
    assert second.starts_at == T0 + timedelta(days=10, hours=1)  # whole hours
    write_usage(key, T0 + timedelta(days=20), output_tokens=1_000_000)
    rating = period_rate(
        tenant_id=key.tenant_id, period=Period(T0, datetime(2026, 12, 1, tzinfo=UTC))
    )
    a, b = rating.segments
    assert a.share + b.share == 1
    assert (a.end, b.start) == (second.starts_at, second.starts_at)
    # segment a: base 30 x (241h/720h) = 10.041666.. -> 10.04; 1M output at 4.40; reasoning 1M at 4.40
    assert [line.amount_minor for line in a.rated.lines] == [1004, 0, 0, 440, 440]
    # segment b: base 60 x (479h/720h) = 39.9166.. -> 39.92; 1M output at 10 (reasoning folds into output)
    assert [line.amount_minor for line in b.rated.lines] == [3992, 1000]
    assert rating.total_minor == 1004 + 440 + 440 + 3992 + 1000


def test_minimum_commitment_true_up() -> None:
    key = ApiKeyFactory()
    subscription_create(
        tenant=key.tenant, plan_version=published(minimum_commitment=Decimal("25")), starts_at=T0
    )
    write_usage(key, T0 + timedelta(days=1), output_tokens=1_000_000)  # 4.40 of usage
    rating = invoice_preview(tenant_id=key.tenant_id, as_of=T0 + timedelta(days=3))
    true_up = [line for line in rating.lines if line.kind == "minimum_true_up"]
    assert [line.amount_minor for line in true_up] == [2060]
    assert rating.total_minor == 2500


def test_subscription_guards() -> None:
    key = ApiKeyFactory()
    version = published()
    plan = plan_create(code="draft", name="Draft")
    draft = plan_version_create(
        plan=plan, currency="USD", effective_from=T0, components=PER_MILLION
    )
    with pytest.raises(ApplicationError):
        subscription_create(tenant=key.tenant, plan_version=draft, starts_at=T0)
    subscription_create(tenant=key.tenant, plan_version=version, starts_at=T0)
    with pytest.raises(Conflict):
        subscription_create(
            tenant=key.tenant, plan_version=version, starts_at=T0 + timedelta(days=40)
        )
    with pytest.raises(NotFound):
        invoice_preview(tenant_id=ApiKeyFactory().tenant_id)


@pytest.mark.django_db
def test_plan_governance_is_validated_and_stored() -> None:
    from billing.plans import plan_create, plan_version_create
    from billing.pricing.validate import PlanInvalid

    plan = plan_create(code="governed", name="Governed")
    component = {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("1")}
    version = plan_version_create(
        plan=plan,
        currency="USD",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        components=[component],
        governance={
            "allowed_efforts": ["medium", "low", "low"],
            "max_output_tokens": 4000,
            "monthly_reasoning_tokens": 10_000_000,
            "reasoning_mode": "refuse",
        },
    )
    assert version.allowed_efforts == ["low", "medium"] and version.max_output_tokens == 4000
    for bad in (
        {"allowed_efforts": ["extreme"]},
        {"max_output_tokens": 0},
        {"monthly_reasoning_tokens": 1.5},
        {"default_max_output_tokens": 5000, "max_output_tokens": 4000},
        {"reasoning_mode": "maybe"},
        {"colour": "blue"},
    ):
        with pytest.raises(PlanInvalid):
            plan_version_create(
                plan=plan,
                currency="USD",
                effective_from=datetime(2026, 1, 1, tzinfo=UTC),
                components=[component],
                governance=bad,
            )
    assert plan.versions.count() == 1
