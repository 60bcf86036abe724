"""A real database outage under the real server: `manage.py serve` on a private PostgreSQL
this test starts and stops (never the shared one), the simulator upstream, plain HTTP.
A call answered 200 while PostgreSQL is down is spooled; once PostgreSQL is back, with
no further request, the record is in the ledger within a few seconds and its Redis
report is gone."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.e2e.conftest import ROOT, free_port, http, start, stop

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.e2e


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PrivatePostgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="reckon-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(  # noqa: S603 - fixed binaries
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
            ),
            check=True,
            capture_output=True,
        )
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(  # noqa: S603
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "-l",
                    str(self.dir / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(  # noqa: S603
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            ),
            check=True,
            capture_output=True,
        )

    def count(self, request_id: str) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM metering_usagerecord WHERE request_id = %s", [request_id]
            ).fetchone()
        return int(row[0]) if row else 0


def manage(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


# The same management commands the CLI runs, in one Django boot instead of four (a boot is
# seconds here): migrate, a route to the simulator, a tenant, and its API key (printed).
SEED = """
import io
from django.core.management import call_command

def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()

run("migrate", "--noinput")
run("route_set", "sim", "--provider", "openai", "--base-url", {base_url!r},
    "--upstream-model", "sim-reasoner", "--api-key-env", "RECKON_SIMULATOR_API_KEY")
print(run("apikey_create", run("tenant_create", "acme", "--allow", "sim")))
"""


def seed(env: dict[str, str], sim_port: int) -> str:
    """SEED in the database env names: the API key of tenant acme, allowed route `sim`."""
    code = SEED.format(base_url=f"http://127.0.0.1:{sim_port}/v1")
    return manage(["shell", "-v", "0", "-c", code], env)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed here")
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(pg.dir, ignore_errors=True)


def load_migrated_template(pg: PrivatePostgres, template: str) -> None:
    """The session's migrated template (on the shared server) into the private server's
    database, with pg_dump: seconds, where `migrate` from scratch takes about a minute on a
    loaded machine. The test still runs `migrate`, which then has nothing to do."""
    from django.db import connection

    s = connection.settings_dict
    source = f"postgres://{s['USER']}@{s['HOST']}:{s['PORT'] or 5432}/{template}"
    dump = subprocess.run(  # noqa: S603 - fixed binaries
        [str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", source],
        check=True,
        capture_output=True,
    )
    subprocess.run(  # noqa: S603
        [str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", pg.url],
        input=dump.stdout,
        check=True,
        capture_output=True,
    )


def test_a_call_spooled_during_an_outage_reaches_the_ledger_without_traffic(
    private_postgres: PrivatePostgres, tmp_path: Path, migrated_template: str
) -> None:
    pg = private_postgres
    load_migrated_template(pg, migrated_template)
    env = {
        "DATABASE_URL": pg.url,
        "REDIS_URL": REDIS_URL,
        "RECKON_LEDGER_SPOOL_DIR": str(tmp_path),
        "RECKON_AUTH_CACHE_SECONDS": "3600",  # the key stays known while the database is down
        "RECKON_SIMULATOR_API_KEY": "sim-test-key",
        "PYTHONUNBUFFERED": "1",
    }
    sim_port, port = free_port(), free_port()
    simulator = start(
        ["run_simulator", "--port", str(sim_port)], env, f"http://127.0.0.1:{sim_port}/_sim/health"
    )
    server = None
    try:
        key = seed(env, sim_port)
        server = start(["serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/_ready")
        call = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        status, _, _ = http("POST", url, call, headers)  # warms the key cache and the ledger
        assert status == 200

        pg.stop()
        status, answered, _ = http("POST", url, call, headers)
        assert status == 200  # answered: the record is spooled durably
        request_id = answered["x-reckon-request-id"]
        assert list(tmp_path.glob("ledger-*.jsonl"))
        reports = redis.Redis.from_url(REDIS_URL)
        deadline = time.monotonic() + 2  # reported one thread hop after the answer
        while not (keys := list(reports.scan_iter("rk:spool:*"))):
            assert time.monotonic() < deadline, "the spool was not reported in Redis"
            time.sleep(0.02)
        assert [reports.get(k) for k in keys] == [b"1"]

        pg.start()
        back = time.monotonic()
        while pg.count(request_id) == 0:  # no request is sent meanwhile
            assert time.monotonic() - back < 5, "the spooled record did not reach the ledger"
            time.sleep(0.05)
        deadline = time.monotonic() + 2
        while reports.exists(*keys):
            assert time.monotonic() < deadline, "the spool report was not cleared"
            time.sleep(0.05)
        assert not list(tmp_path.glob("ledger-*.jsonl"))
    finally:
        if server is not None:
            stop(server)
        stop(simulator)
