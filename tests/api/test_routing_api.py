"""The routing views (GET /api/v1/routing/aliases[/{alias}]) and the re-route what-if
(GET /api/v1/finance/whatif/reroute[.csv]) over the routed world: two targets of
"reasoner" with usage written through the ledger (which folds RouteTargetHour)."""

import csv
import io
import os
import time
from datetime import UTC, datetime

import pytest
import redis
from rest_framework.test import APIClient

from config.db_router import REPLICA
from metering.routing.breaker import breaker_key
from tests.api.test_replica_reads import both, needs_replica, on_replica
from tests.api.test_usage_api import client_for
from tests.billing.routed_world import RoutedWorld, routed_world
from tests.staff import staff_client

pytestmark = pytest.mark.django_db
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def world() -> RoutedWorld:
    return routed_world()


@pytest.fixture
def operator() -> APIClient:
    return staff_client("ops", "operator")


@pytest.fixture
def finance_operator() -> APIClient:
    return staff_client("cfo", "operator", "finance-read")


def test_list_shows_every_alias_with_its_targets(world: RoutedWorld, operator: APIClient) -> None:
    body = operator.get("/api/v1/routing/aliases", {"period": "2026-10"}).json()
    assert body["period"] == {
        "start": "2026-10-01T00:00:00+00:00",
        "end": "2026-11-01T00:00:00+00:00",
        "month": "2026-10",
    }
    (alias,) = body["aliases"]
    assert alias["alias"] == "reasoner" and alias["policy"] == "fallback"
    assert (alias["attempts"], alias["answered"], alias["error_rate"]) == (2, 2, "0")
    # route 0 usage (before routing) is no target's
    assert alias["serving_cost_usd"] == "4.75"
    h100, mi = alias["targets"]
    assert (h100["name"], h100["route_id"], h100["weight"], h100["priority"]) == (
        "h100",
        world.h100.pk,
        80,
        0,
    )
    assert (h100["attempts"], h100["serving_cost_usd"], h100["cost_per_call_usd"]) == (1, "3", "3")
    assert (mi["name"], mi["serving_cost_usd"], mi["accelerator"]) == ("mi", "1.75", "amd-mi300x")
    # another month: the targets, no calls
    empty = operator.get("/api/v1/routing/aliases", {"period": "2026-09"}).json()
    assert [t["attempts"] for t in empty["aliases"][0]["targets"]] == [0, 0]
    assert empty["aliases"][0]["error_rate"] is None


def test_detail_per_target_with_breaker_and_margin(
    world: RoutedWorld, operator: APIClient, finance_operator: APIClient, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    key = breaker_key(world.alias.pk)
    client.delete(key)
    client.hset(key, f"{world.mi.pk}:open", int(time.time() * 1000) + 600_000)
    try:
        body = operator.get("/api/v1/routing/aliases/reasoner", {"period": "2026-10"}).json()
    finally:
        client.delete(key)
    h100, mi = body["targets"]
    assert h100["breaker"] == "closed" and mi["breaker"].startswith("open until ")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: unknown, never "closed"
    down = operator.get("/api/v1/routing/aliases/reasoner", {"period": "2026-10"})
    assert down.status_code == 200
    assert [t["breaker"] for t in down.json()["targets"]] == ["unknown", "unknown"]
    assert (h100["tokens"]["reasoning_tokens"], h100["tokens"]["output_tokens"]) == (
        2_000_000,
        1_000_000,
    )
    # one call each, latency 1 us: the first bucket (below 50 ms)
    assert h100["latency_ms"] == {"p50": 50, "p99": 50}
    assert h100["ttft_ms"] == {"p50": None, "p99": None}
    assert h100["efforts"] == [
        {
            "effort": "",
            "attempts": 1,
            "answered": 1,
            "reasoning_tokens": 2_000_000,
            "reasoning_per_call": "2000000",
            "cost_per_call_usd": "3",
        }
    ]
    assert h100["margin"] is None  # the operator may not view margins
    finance = finance_operator.get("/api/v1/routing/aliases/reasoner", {"period": "2026-10"})
    h100, mi = finance.json()["targets"]
    assert h100["margin"] == {"revenue_usd": "8", "cost_usd": "3", "gross_margin": "0.625"}
    assert mi["margin"] == {"revenue_usd": "14", "cost_usd": "1.75", "gross_margin": "0.875"}
    # a range that is not a calendar month: statistics, no margin
    ranged = finance_operator.get(
        "/api/v1/routing/aliases/reasoner",
        {"start": "2026-10-04T00:00:00Z", "end": "2026-10-05T00:00:00Z"},
    ).json()
    assert ranged["period"]["month"] is None
    assert [t["attempts"] for t in ranged["targets"]] == [1, 1]
    assert ranged["targets"][0]["margin"] is None


@pytest.mark.parametrize(
    "query",
    [
        {"period": "2026-13"},
        {"start": "2026-10-01T00:00:00Z"},
        {"start": "2026-10-02T00:00:00Z", "end": "2026-10-01T00:00:00Z"},
        {"period": "2026-10", "start": "2026-10-01T00:00:00Z", "end": "2026-10-02T00:00:00Z"},
        {"start": "2025-01-01T00:00:00Z", "end": "2026-10-01T00:00:00Z"},
    ],
)
def test_bad_periods_are_400_in_the_api_error_shape(
    world: RoutedWorld, operator: APIClient, query: dict[str, str]
) -> None:
    for path in ("/api/v1/routing/aliases", "/api/v1/routing/aliases/reasoner"):
        response = operator.get(path, query)
        assert response.status_code == 400, (path, query)
        assert response.json()["error"]["code"] == "invalid_request"


def test_who_may_see_routing(world: RoutedWorld) -> None:
    finance_only = staff_client("reader", "finance-read")
    (h100, _) = finance_only.get("/api/v1/routing/aliases/reasoner", {"period": "2026-10"}).json()[
        "targets"
    ]
    assert h100["margin"]["revenue_usd"] == "8"
    refused = staff_client("nobody").get("/api/v1/routing/aliases")
    assert refused.status_code == 403
    assert refused.json()["error"]["detail"] == {"required_permission": "metering.view_alias"}
    tenant, _ = client_for(world.key.tenant)
    assert tenant.get("/api/v1/routing/aliases/reasoner").status_code == 403
    assert APIClient().get("/api/v1/routing/aliases").status_code == 401
    missing = staff_client("ops", "operator").get("/api/v1/routing/aliases/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_reroute_whatif_json_and_csv(world: RoutedWorld, finance_operator: APIClient) -> None:
    query = {"period": "2026-10", "alias": "reasoner", "policy": "cheapest"}
    body = finance_operator.get("/api/v1/finance/whatif/reroute", query).json()
    # mi is cheaper: both calls (effort "") go there, at mi's own mean per call
    # (3M output, 1M reasoning); route 0's usage is not re-routed
    assert body["calls"] == 2
    assert body["actual"] == {"cost_usd": "4.75", "revenue_usd": "22", "gross_margin": "0.784091"}
    h100, mi = body["targets"]
    assert (h100["rerouted_calls"], mi["rerouted_calls"]) == (0, 2)
    assert mi["rerouted_tokens"]["output"] == 6_000_000
    assert mi["rerouted_tokens"]["reasoning"] == 2_000_000
    assert mi["rerouted_cost_usd"] == "3.5"  # 6M x 0.5 + 2M x 0.25
    assert body["realized_revenue_per_million_usd"] == {"output": "4", "reasoning": "2"}
    assert mi["rerouted_revenue_usd"] == "28"  # 6M x 4 + 2M x 2
    assert body["difference"] == {"cost_usd": "-1.25", "revenue_usd": "6", "margin_usd": "7.25"}
    lines = list(
        csv.DictReader(
            io.StringIO(
                finance_operator.get("/api/v1/finance/whatif/reroute.csv", query).content.decode()
            )
        )
    )
    assert [(row["target"], row["rerouted_calls"], row["rerouted_cost_usd"]) for row in lines] == [
        ("h100", "0", "0"),
        ("mi", "2", "3.5"),
    ]
    weighted = finance_operator.get(
        "/api/v1/finance/whatif/reroute", {**query, "policy": "weighted", "weights": "h100:1,mi:0"}
    ).json()
    assert [t["rerouted_calls"] for t in weighted["targets"]] == [2, 0]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"policy": "random"}, 400),
        ({"policy": "weighted", "weights": "h100=1"}, 400),
        ({"policy": "weighted", "weights": "zz:1"}, 400),
        ({"policy": "weighted", "weights": "h100:\u00b2"}, 400),  # sent as h100:%C2%B2
        ({"policy": "weighted", "weights": "h100:" + "9" * 1500}, 400),
        ({"policy": "effort", "rules": "not json"}, 400),
        ({"policy": "effort", "rules": '[{"name": "x"}]'}, 400),
        ({"period": "2026-1"}, 400),
        ({"alias": "nope"}, 404),
    ],
)
def test_reroute_bad_input(
    world: RoutedWorld, finance_operator: APIClient, query: dict[str, str], status: int
) -> None:
    params = {"period": "2026-10", "alias": "reasoner", "policy": "fallback", **query}
    response = finance_operator.get("/api/v1/finance/whatif/reroute", params)
    assert response.status_code == status, response.content
    assert "code" in response.json()["error"]


def test_reroute_needs_the_margins_permission(world: RoutedWorld, operator: APIClient) -> None:
    response = operator.get(
        "/api/v1/finance/whatif/reroute",
        {"period": "2026-10", "alias": "reasoner", "policy": "fallback"},
    )
    assert response.status_code == 403


def test_the_schema_documents_the_endpoints(finance_operator: APIClient) -> None:
    paths = finance_operator.get("/api/v1/schema", {"format": "json"}).json()["paths"]
    for path in (
        "/api/v1/routing/aliases",
        "/api/v1/routing/aliases/{alias}",
        "/api/v1/finance/whatif/reroute",
        "/api/v1/finance/whatif/reroute.csv",
    ):
        assert "get" in paths[path], path


@needs_replica
@both
def test_routing_views_read_the_replica_when_replica_reads_are_on(settings) -> None:  # type: ignore[no-untyped-def]
    from metering.models import Alias, RouteTargetHour
    from tests.factories import RouteFactory

    settings.RECKON_REPLICA_READS = True
    route = RouteFactory(alias="replicated", name="a")
    on_replica(Alias.objects.get(name="replicated"), route)
    hour = datetime(2026, 10, 2, 5, tzinfo=UTC)
    RouteTargetHour(route_id=route.pk, hour=hour, attempts=5, answered=5).save(
        using=REPLICA, force_insert=True
    )
    client = staff_client("ops", "operator")

    def attempts() -> int:
        body = client.get("/api/v1/routing/aliases/replicated", {"period": "2026-10"}).json()
        return body["targets"][0]["attempts"]

    assert attempts() == 5  # the row only the replica holds
    settings.RECKON_REPLICA_READS = False
    assert attempts() == 0


def test_reroute_weight_in_non_ascii_digits_is_a_clear_400(
    world: RoutedWorld, finance_operator: APIClient
) -> None:
    # "²".isdigit() is True but int("²") raises: once a 500.
    response = finance_operator.get(
        "/api/v1/finance/whatif/reroute?period=2026-10&alias=reasoner&policy=weighted"
        "&weights=h100:%C2%B2"
    )
    assert response.status_code == 400, response.content
    assert "target:weight" in response.content.decode()
