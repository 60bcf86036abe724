"""The REST API under the real ASGI server (`manage.py serve`) keeps its PostgreSQL
connections bounded: each REST request borrows from the process's pool and gives the
connection back, and a request that cannot get one in time is a JSON 503, not a 500."""

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.e2e.conftest import (
    ROOT,
    E2ETenant,
    database_url,
    free_port,
    http,
    stop,
    wait_until_up,
)

pytestmark = pytest.mark.e2e

REQUESTS = 500


def process_tree(root: int) -> set[int]:
    """`root` and every process below it (uvicorn's workers with --workers N)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def local_tcp_ports(pids: set[int], *, remote_port: int) -> set[int]:
    """Local ports of the TCP sockets these processes hold open to `remote_port`. Only
    those: the kernel may give one local port number to connections to different
    destinations, so a socket to Redis can share its number with another process's
    PostgreSQL connection."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def server_connections(server_pid: int) -> list[tuple[str, int]]:
    """(application_name, backend pid) of every PostgreSQL backend serving the server's
    processes, matched by the client ports its sockets hold (not by a name it sets)."""
    port = urlsplit(database_url()).port or 5432
    ports = local_tcp_ports(process_tree(server_pid), remote_port=port)
    with psycopg.connect(database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, pid, client_port FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(name, pid) for name, pid, port in rows if port in ports]


@contextmanager
def reckon_server(**env: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)]
        + ["--workers", env.pop("WORKERS", "1")],
        cwd=ROOT,
        env={
            **os.environ,
            "RECKON_ENV": "development",
            "DATABASE_URL": database_url(),
            "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            "RECKON_SIMULATOR_API_KEY": "sim-test-key",
            **env,
        },
    )
    try:
        # several worker processes start slowly on a busy 2-core machine
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", process, timeout=120)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop(process)


@pytest.mark.parametrize("workers", [1, 2])
def test_rest_connections_stay_bounded_over_500_requests(e2e: E2ETenant, workers: int) -> None:
    pool_max = 3
    name = f"rk-conn-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {e2e.raw_key}"}
    with reckon_server(
        WORKERS=str(workers),
        RECKON_DB_APPLICATION_NAME=name,
        RECKON_DB_POOL_MAX_SIZE=str(pool_max),
    ) as (url, pid):
        # sequential calls (the reported leak) and a burst of 8 at a time
        for _ in range(REQUESTS // 2):
            status, _, body = http("GET", url + "/api/v1/usage/records?limit=5", headers=auth)
            assert status == 200, body
        with ThreadPoolExecutor(8) as burst:
            statuses = list(
                burst.map(
                    lambda _: http("GET", url + "/api/v1/usage/records?limit=5", headers=auth)[0],
                    range(REQUESTS // 2),
                )
            )
        assert statuses == [200] * (REQUESTS // 2)
        # proxied calls: the key lookup thread borrows from the same pool, the ledger
        # commits on its own connections (RECKON_LEDGER_CONNECTIONS, default 2)
        for _ in range(20):
            status, _, body = http(
                "POST",
                url + "/v1/chat/completions",
                {"model": "reasoner", "messages": [{"role": "user", "content": "hi"}]},
                {**auth, "Content-Type": "application/json"},
            )
            assert status == 200, body
        connections = server_connections(pid)
    # each worker process: at most its pool plus its ledger connections
    assert 1 <= len(connections) <= (pool_max + 2) * workers, connections
    assert all(app.startswith(name + ":") for app, _ in connections), connections


def test_exhausted_pool_answers_json_503_with_retry_after(e2e: E2ETenant) -> None:
    auth = {"Authorization": f"Bearer {e2e.raw_key}"}
    with reckon_server(RECKON_DB_POOL_MAX_SIZE="1", RECKON_DB_POOL_TIMEOUT="0.5") as (url, _):
        assert http("GET", url + "/api/v1/usage/records?limit=5", headers=auth)[0] == 200
        with psycopg.connect(database_url()) as blocker:
            # The first request takes the only pooled connection and waits on this lock;
            # the second waits for a connection, past the pool's timeout.
            blocker.execute("LOCK TABLE metering_apikey IN ACCESS EXCLUSIVE MODE")
            first: list[int] = []
            holder = threading.Thread(
                target=lambda: first.append(
                    http("GET", url + "/api/v1/usage/records?limit=5", headers=auth)[0]
                )
            )
            holder.start()
            time.sleep(0.3)
            started = time.monotonic()
            status, headers, body = http("GET", url + "/api/v1/usage/records?limit=5", headers=auth)
            waited = time.monotonic() - started
            blocker.rollback()
        holder.join(timeout=10)
    assert status == 503, body
    assert body["error"]["code"] == "database_busy"
    assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
    assert 0.4 <= waited < 5
    assert first == [200]  # the request that held the connection finished normally
