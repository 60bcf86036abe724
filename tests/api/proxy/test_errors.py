"""What a caller may see of an upstream's error answer (api.proxy.errors)."""

import orjson
import pytest

from api.proxy import errors


@pytest.mark.parametrize(
    "leak",
    [
        "sk-proj-AbC123def456ghi789",
        "rk_live_0123456789abcdef",
        "Bearer abc.def.ghi",
        "https://internal.example.com/v1/chat",
        "10.1.2.3",
        "10.1.2.3:8000",
        "vllm-3.corp.internal:8443",
        "gpu-node-3.cluster.local",
        "[fd00::1]:9000",
        "0123456789abcdefABCDEF0123456789",
    ],
)
def test_redact_strips_keys_urls_hosts_and_addresses(leak: str) -> None:
    redacted = errors.redact(f"Invalid value for 'max_tokens' ({leak}); try again.")
    assert leak not in redacted
    assert redacted.startswith("Invalid value for 'max_tokens'")


def body(message: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "x", "param": param}})


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, errors.UPSTREAM_AUTH),
        (403, errors.UPSTREAM_AUTH),
        (429, errors.UPSTREAM_RATE_LIMITED),
        (500, errors.UPSTREAM_FAILED),
        (503, errors.UPSTREAM_FAILED),
        (418, errors.UPSTREAM_FAILED),
    ],
)
def test_statuses_about_us_never_pass_the_upstream_message(
    status: int, kind: errors.ProxyErrorKind
) -> None:
    failure = errors.upstream_failure(
        status, body("key sk-live-123 at db:5432"), "application/json"
    )
    assert failure.kind == kind
    assert "sk-live" not in failure.message and "db:5432" not in failure.message


def test_the_callers_own_mistakes_pass_redacted_with_a_known_param() -> None:
    failure = errors.upstream_failure(
        422, body("temperature must be <= 2 (node 10.0.0.1)", "temperature"), "application/json"
    )
    assert failure.kind.status == 422 and failure.param == "temperature"
    assert failure.message == "temperature must be <= 2 (node [redacted])"
    odd_param = errors.upstream_failure(400, body("bad", "x-internal-route"), "application/json")
    assert odd_param.param is None


def test_non_json_bodies_never_pass() -> None:
    failure = errors.upstream_failure(400, b"<html>nginx 10.0.0.9</html>", "text/html")
    assert failure.kind.status == 400 and "nginx" not in failure.message
    failure = errors.upstream_failure(400, b"not json at all", "application/json")
    assert "not json" not in failure.message
