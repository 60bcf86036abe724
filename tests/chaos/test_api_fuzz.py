"""Scenario 6: schema-driven fuzzing of the whole REST API (schemathesis against
/api/v1/schema) with tenant and staff credentials: zero 5xx."""

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.chaos.conftest import World, free_port, report

pytestmark = pytest.mark.chaos
EXAMPLES = 10  # per operation and credential


def test_fuzzing_the_rest_api_gives_no_5xx(world: World) -> None:
    seeded = world.seed("proxy", "--simulator-url", world.simulator_url, "--controls")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    world.serve(port)
    schema = schemathesis.openapi.from_url(base + "/api/v1/schema")
    credentials = {
        "tenant": {"Authorization": f"Bearer {seeded['key']}"},
        "staff": {"Authorization": f"Bearer {seeded['staff']}"},  # a staff token, every role
    }
    calls: Counter[str] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]

    def fuzzer(operation, who: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=base, headers=headers, timeout=30)
            calls[f"{response.status_code // 100}xx"] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{who} {case.method} {case.operation.path} -> {response.status_code} "
                    f"{response.text[:160]!r}"
                )

        return fuzz

    for operation in operations:
        for who, headers in credentials.items():
            try:
                fuzzer(operation, who, headers)()
            except Unsatisfiable:
                calls["unsatisfiable"] += 1
    report(
        f"schemathesis, {EXAMPLES} examples per operation and credential (tenant, staff)",
        operations=len(operations),
        responses=dict(sorted(calls.items())),
        responses_5xx=len(failures),
    )
    distinct = sorted({f.split(" -> ")[0] for f in failures})
    for line in distinct:
        print(f"[chaos]   5xx: {line}")
    if failures:
        print(f"[chaos]   first: {failures[0]}")
    assert not failures, f"{len(failures)} 5xx on {len(distinct)} operations, e.g. {failures[0]}"
