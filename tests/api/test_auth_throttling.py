"""Failed authentications are limited per client address before any credential is
checked: over the limit a caller gets 429 JSON with Retry-After and costs no lookup and
no password hash. Counted in Redis (shared by every process) when REDIS_URL is set, in
the process otherwise."""

import base64
import uuid

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import Client
from rest_framework.test import APIClient
from rest_framework.views import APIView

from api import throttling
from api.authentication import ThrottledBasicAuthentication
from api.staff_tokens import staff_token_create
from metering.services import api_key_create
from tests.factories import TenantFactory
from tests.staff import staff_user

pytestmark = [pytest.mark.django_db, pytest.mark.real_password_hash]  # counts PBKDF2 hashes
RECORDS = "/api/v1/usage/records"


@pytest.fixture
def address() -> str:
    """A client address of its own, so counters never leak between tests."""
    octets = uuid.uuid4().bytes
    return f"10.{octets[0]}.{octets[1]}.{octets[2]}"


@pytest.fixture(autouse=True)
def _small_limit(settings, monkeypatch):  # type: ignore[no-untyped-def]
    settings.RECKON_AUTH_FAILURE_LIMIT = 3
    settings.RECKON_AUTH_FAILURE_WINDOW_SECONDS = 30
    monkeypatch.setattr(throttling, "local_counter", throttling.LocalFailureCounter())


@pytest.fixture
def hashes(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The passwords hashed from here on; the staff user "ops" (password "right-password")
    exists already."""
    hashed: list[str] = []
    original = PBKDF2PasswordHasher.encode

    def counting_encode(self, password, salt, iterations=None):  # type: ignore[no-untyped-def]
        hashed.append(password)
        return original(self, password, salt, iterations)

    monkeypatch.setattr(PBKDF2PasswordHasher, "encode", counting_encode)
    get_user_model().objects.create_user("ops", password="right-password", is_staff=True)
    hashed.clear()
    return hashed


def get(address: str, authorization: str, path: str = RECORDS) -> object:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client.get(path)


@pytest.mark.parametrize("redis_url", ["", "env"])
def test_failures_over_the_limit_get_429_before_any_lookup(
    address: str,
    settings,
    django_assert_num_queries,
    redis_url: str,  # type: ignore[no-untyped-def]
) -> None:
    if redis_url == "":
        settings.REDIS_URL = ""  # embedded mode: counted in the process
    elif not django_settings.REDIS_URL:
        pytest.skip("REDIS_URL not set")
    good = api_key_create(tenant=TenantFactory()).raw_key
    for _ in range(3):
        assert get(address, "Bearer rk_wrong").status_code == 401
    with django_assert_num_queries(0):  # refused before the key is looked up
        response = get(address, f"Bearer {good}")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "auth_throttled"
    assert 1 <= int(response["Retry-After"]) <= 30
    # another address is not affected
    assert get("10.255.255.254", f"Bearer {good}").status_code == 200


def test_the_count_is_shared_through_redis(address: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if not django_settings.REDIS_URL:
        pytest.skip("REDIS_URL not set")
    for _ in range(3):
        get(address, "Bearer rks_" + "x" * 43)
    # another process knows nothing locally
    monkeypatch.setattr(throttling, "local_counter", throttling.LocalFailureCounter())
    assert get(address, "Bearer rk_wrong").status_code == 429
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert int(client.get(throttling.KEY_PREFIX + address)) == 3
    client.delete(throttling.KEY_PREFIX + address)


def test_redis_down_falls_back_to_counting_in_the_process(address: str, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens
    for _ in range(3):
        assert get(address, "Bearer rk_wrong").status_code == 401
    assert get(address, "Bearer rk_wrong").status_code == 429


def test_successes_are_not_counted(address: str) -> None:
    ops = staff_user("ops", "operator")
    token = staff_token_create(user=ops).raw_token
    for _ in range(5):
        assert get(address, f"Bearer {token}", "/api/v1/plans").status_code == 200


def test_basic_when_enabled_is_limited_before_the_password_hash(
    address: str,
    settings,
    monkeypatch,  # type: ignore[no-untyped-def]
    hashes: list[str],
) -> None:
    # what RECKON_API_BASIC_AUTH=true adds (views read the classes when imported)
    monkeypatch.setattr(
        APIView,
        "authentication_classes",
        [*APIView.authentication_classes, ThrottledBasicAuthentication],
    )
    wrong = "Basic " + base64.b64encode(b"ops:wrong").decode()
    for _ in range(3):
        assert get(address, wrong).status_code == 401
    hashed = len(hashes)
    assert hashed == 3  # one password hash per attempt that was let through
    right = "Basic " + base64.b64encode(b"ops:right-password").decode()
    response = get(address, right)
    assert response.status_code == 429
    assert len(hashes) == hashed  # no hash ran for the refused attempt


def test_admin_sign_in_is_limited_before_the_password_hash(
    address: str,
    hashes: list[str],
) -> None:
    client = Client(REMOTE_ADDR=address)
    for _ in range(3):
        response = client.post(
            "/admin/login/", {"username": "ops", "password": "wrong"}, REMOTE_ADDR=address
        )
        assert response.status_code == 200  # the form again, with its error
    assert len(hashes) == 3
    response = client.post(
        "/admin/login/", {"username": "ops", "password": "right-password"}, REMOTE_ADDR=address
    )
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 30
    assert len(hashes) == 3  # refused before any lookup or hash
    # another address signs in
    other = Client(REMOTE_ADDR="10.255.255.253")
    response = other.post("/admin/login/", {"username": "ops", "password": "right-password"})
    assert response.status_code == 302
