import pytest


@pytest.fixture(autouse=True)
def _fast_auth_cache(settings):  # type: ignore[no-untyped-def]
    settings.RECKON_AUTH_CACHE_SECONDS = 0.5
