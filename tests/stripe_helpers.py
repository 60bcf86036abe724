"""Fixtures for tests that push invoices to the local fake Stripe through the stripe SDK.

A test module takes them by binding them as module attributes (``fake = stripe_helpers.fake``),
so each module still gets its own module-scoped server."""

import pytest

from tests.fakes.stripe_server import FakeStripe


@pytest.fixture(scope="module")
def fake():  # type: ignore[no-untyped-def]
    with FakeStripe(api_key="sk_test_reckon") as server:
        yield server


@pytest.fixture
def stripe_on(fake, settings):  # type: ignore[no-untyped-def]
    fake.reset()
    settings.STRIPE_API_KEY = fake.api_key
    settings.STRIPE_API_BASE = fake.url
    return fake
