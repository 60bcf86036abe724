"""Staff API access by personal tokens (`Bearer rks_...`), HTTP Basic off by default."""

import base64
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from api.models import StaffToken
from api.staff_tokens import staff_token_create, staff_token_revoke
from metering.keys import api_key_hash
from metering.services import api_key_create
from tests.factories import TenantFactory
from tests.staff import staff_user

pytestmark = pytest.mark.django_db
PLANS = "/api/v1/plans"


@pytest.fixture
def ops():  # type: ignore[no-untyped-def]
    return staff_user("ops", "operator", password="a-long-password")


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_command_prints_a_token_once_and_stores_its_digest(ops) -> None:  # type: ignore[no-untyped-def]
    out = StringIO()
    call_command(
        "staff_token_create",
        "ops",
        "--name",
        "laptop",
        "--expires-at",
        "2099-01-01T00:00:00+00:00",
        stdout=out,
    )
    raw = out.getvalue().strip()
    assert raw.startswith("rks_") and not raw.startswith("rk_")
    token = StaffToken.objects.get()
    assert token.user == ops and token.name == "laptop"
    assert token.token_hash == api_key_hash(raw) and raw not in (token.prefix, token.token_hash)
    assert token.expires_at == datetime(2099, 1, 1, tzinfo=UTC)
    assert bearer(raw).get(PLANS).status_code == 200


def test_command_refuses_unknown_or_non_staff_users() -> None:
    get_user_model().objects.create_user("tenant-person")
    with pytest.raises(CommandError, match="no active user"):
        call_command("staff_token_create", "nobody")
    with pytest.raises(CommandError, match="is not staff"):
        call_command("staff_token_create", "tenant-person")


def test_a_token_acts_as_its_user_with_that_users_permissions(ops) -> None:  # type: ignore[no-untyped-def]
    analyst = get_user_model().objects.create_user("analyst", is_staff=False)
    assert bearer(staff_token_create(user=ops).raw_token).get(PLANS).status_code == 200
    response = bearer(staff_token_create(user=analyst).raw_token).get(PLANS)
    assert response.status_code == 403  # authenticated, but not allowed: permissions apply


def test_revoked_expired_and_inactive_tokens_fail(ops) -> None:  # type: ignore[no-untyped-def]
    revoked = staff_token_create(user=ops)
    staff_token_revoke(token=revoked.token)
    expired = staff_token_create(user=ops, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    other = get_user_model().objects.create_user("gone", is_staff=True)
    inactive = staff_token_create(user=other)
    other.is_active = False
    other.save()
    for raw in (revoked.raw_token, expired.raw_token, inactive.raw_token, "rks_" + "x" * 43):
        response = bearer(raw).get(PLANS)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_failed"


def test_a_tenant_key_is_not_a_staff_token(ops) -> None:  # type: ignore[no-untyped-def]
    key = api_key_create(tenant=TenantFactory()).raw_key
    assert bearer(key).get(PLANS).status_code == 403  # a tenant, not staff


def test_http_basic_is_off_by_default(ops) -> None:  # type: ignore[no-untyped-def]
    client = APIClient()
    basic = base64.b64encode(b"ops:a-long-password").decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {basic}")
    response = client.get(PLANS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
