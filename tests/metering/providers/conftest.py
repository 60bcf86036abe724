"""Fixtures for the provider report importer: fake admin APIs on loopback, accounts whose
admin keys live in environment variables, and retries fast enough for tests."""

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest

from metering.models import ProviderAccount
from metering.providers import importer
from metering.providers.accounts import provider_account_set
from tests.fakes.provider_admin import ANTHROPIC, OPENAI, FakeProviderAdmin, ModelPrice, ServedEvent

OPENAI_KEY = "sk-admin-openai-test-secret-0123456789"
ANTHROPIC_KEY = "sk-ant-admin01-test-secret-0123456789"
OPENAI_ENV = "RECKON_TEST_OPENAI_ADMIN_KEY"
ANTHROPIC_ENV = "RECKON_TEST_ANTHROPIC_ADMIN_KEY"
DAY = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
PRICES = {
    "gpt-r": ModelPrice(
        input=Decimal("1.234567890123456789"), cache_read=Decimal("0.125"), output=Decimal("10")
    ),
    "claude-r": ModelPrice(
        input=Decimal("3"),
        cache_read=Decimal("0.3"),
        cache_write=Decimal("3.75"),
        cache_write_1h=Decimal("6"),
        output=Decimal("15"),
    ),
}


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A time on day `day` after DAY (0 = DAY itself)."""
    return DAY + dt.timedelta(days=day, hours=hour, minutes=minute)


def events(model: str) -> list[ServedEvent]:
    return [
        ServedEvent(at(0, 1, 5), model, "key_a", 100, 40, 8, 30, 70),
        ServedEvent(at(0, 1, 50), model, "key_a", 10, 0, 0, 5, 0),
        ServedEvent(at(0, 2, 0), model, "key_b", 7, 3, 0, 4, 9),
        ServedEvent(at(1, 23, 59), model, "key_a", 1, 1, 2, 1, 1, cache_write_1h=3),
    ]


@pytest.fixture(autouse=True)
def _fast_retries(settings, monkeypatch):  # type: ignore[no-untyped-def]
    settings.RECKON_PROVIDER_RETRY_BASE_SECONDS = 0.001
    settings.RECKON_PROVIDER_RETRY_MAX_SECONDS = 5
    settings.RECKON_PROVIDER_RETRY_ATTEMPTS = 3
    settings.RECKON_PROVIDER_HTTP_TIMEOUT_SECONDS = 10
    waits: list[float] = []
    monkeypatch.setattr(importer, "sleep", waits.append)  # record the waits, do not wait
    return waits


@pytest.fixture
def waits(_fast_retries):  # type: ignore[no-untyped-def]
    return _fast_retries


def _fake(provider: str, admin_key: str, model: str) -> FakeProviderAdmin:
    """The provider's fake admin API, serving `events(model)` to `admin_key`."""
    return FakeProviderAdmin(provider, admin_key=admin_key, events=events(model), prices=PRICES)


def _account(
    monkeypatch: pytest.MonkeyPatch, fake: FakeProviderAdmin, *, name: str, env: str, key: str
) -> ProviderAccount:
    """An account of the fake's provider reading its admin key `key` from the variable `env`."""
    monkeypatch.setenv(env, key)
    return provider_account_set(
        name=name, provider=fake.provider, admin_key_env=env, admin_base_url=fake.url
    )


@pytest.fixture
def openai_fake() -> Iterator[FakeProviderAdmin]:
    with _fake(OPENAI, OPENAI_KEY, "gpt-r") as fake:
        yield fake


@pytest.fixture
def anthropic_fake() -> Iterator[FakeProviderAdmin]:
    with _fake(ANTHROPIC, ANTHROPIC_KEY, "claude-r") as fake:
        yield fake


@pytest.fixture
def openai_account(openai_fake, monkeypatch) -> ProviderAccount:  # type: ignore[no-untyped-def]
    return _account(monkeypatch, openai_fake, name="oai-main", env=OPENAI_ENV, key=OPENAI_KEY)


@pytest.fixture
def anthropic_account(anthropic_fake, monkeypatch) -> ProviderAccount:  # type: ignore[no-untyped-def]
    return _account(
        monkeypatch, anthropic_fake, name="ant-main", env=ANTHROPIC_ENV, key=ANTHROPIC_KEY
    )
