import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

# Property tests check correctness, not speed: on a loaded 2-core CI machine an example may
# take longer than hypothesis's default 200 ms deadline without anything being wrong.
hypothesis_settings.register_profile(
    "reckon", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("reckon")


@pytest.fixture(autouse=True)
def _fast_auth_cache(settings):  # type: ignore[no-untyped-def]
    settings.RECKON_AUTH_CACHE_SECONDS = 0.5


@pytest.fixture(autouse=True)
def _celery_eager(request):  # type: ignore[no-untyped-def]
    """Tasks run in-process in unit and scenario tests; tests marked `worker` use a real
    Celery worker and broker instead."""
    from config.celery import app

    if request.node.get_closest_marker("worker"):
        yield
        return
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
