"""Through the real server (`manage.py serve`, uvicorn, the ASGI lifespan): a spool left by
a server that is gone reaches the ledger when a new server starts, before any request."""

import os
import time
from pathlib import Path

import pytest

from metering.models import UsageRecord
from tests.e2e.conftest import database_url, free_port, start, stop
from tests.factories import ApiKeyFactory
from tests.usage_helpers import record_for, spool_append

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_starting_server_loads_the_spool_without_traffic(tmp_path: Path) -> None:
    key = ApiKeyFactory()
    records = [record_for(key) for _ in range(5)]
    spool_append(tmp_path, records)  # as a crashed server on the shared volume left it
    ids = [r["request_id"] for r in records]
    port = free_port()
    env = {
        "DATABASE_URL": database_url(),
        "RECKON_LEDGER_SPOOL_DIR": str(tmp_path),
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        "PYTHONUNBUFFERED": "1",
    }
    # ready once it answers; a 404 on an unknown path needs neither a key nor the ledger
    server = start(["serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/_ready")
    try:
        deadline = time.monotonic() + 5
        while UsageRecord.objects.filter(request_id__in=ids).count() < len(ids):
            assert time.monotonic() < deadline, "the server did not load the spool at start-up"
            time.sleep(0.05)
    finally:
        stop(server)
    assert not list(tmp_path.glob("ledger-*.jsonl"))
