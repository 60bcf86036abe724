"""A database outage through a real server on its own private PostgreSQL: keys looked up
before the outage keep working (their usage spooled), unknown keys get a 503 in the
caller's wire format with Retry-After, never an HTML 500; calls go on once it is back."""

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest
import redis

from metering.ledger.spool import SPOOL_KEY_PREFIX, SPOOL_WRITERS_KEY
from tests.e2e.conftest import ROOT, SIM_KEY_ENV, free_port, http, start, stop

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PROMPT = [{"role": "user", "content": "Think hard about prime gaps."}]
UNKNOWN_KEY = "rk_never_issued_0000000000000000"

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs PostgreSQL 15 binaries and root (to run them as postgres)",
)


def as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


@dataclass
class PrivateDb:
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/reckon"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data.parent / "pg.log")
        as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self) -> None:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


# The set-up commands run in one process: each `manage.py` process costs seconds of
# Django start-up on a loaded machine, and the commands are the same either way.
SET_UP = """
import io
import sys

import django

django.setup()
from django.core.management import call_command


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else ""


run("migrate", "--no-input")
tenant = run("tenant_create", "outage-co")
for alias, provider, model in (
    ("reasoner", "openai", "sim-reasoner"),
    ("thinker", "anthropic", "sim-thinker"),
):
    run(
        "route_set", alias, "--provider", provider, "--base-url", sys.argv[1] + "/v1",
        "--upstream-model", model, "--api-key-env", sys.argv[2], "--allow-tenant", tenant,
    )
print(run("apikey_create", tenant))
"""


def set_up(db: PrivateDb, simulator_url: str) -> str:
    """Migrate the private database, make the tenant and its two routes; the key."""
    env = {**os.environ, "DATABASE_URL": db.url, "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", SET_UP, simulator_url, SIM_KEY_ENV],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def private_db() -> Iterator[PrivateDb]:
    home = Path(tempfile.mkdtemp(prefix="reckon-outage-"))
    shutil.chown(home, "postgres")
    db = PrivateDb(home / "data", free_port())
    as_postgres(
        str(PG_BIN / "initdb"), "-D", str(db.data), "-A", "trust", "-U", "postgres", "--no-sync"
    )
    db.start()
    try:
        as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(db.port), "reckon")
        yield db
    finally:
        try:
            db.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(home, ignore_errors=True)


def spooled_records(spool: Path) -> list[str]:
    if not spool.exists():
        return []
    return [line for path in spool.glob("ledger-*.jsonl") for line in path.read_text().splitlines()]


def test_warm_keys_keep_working_and_unknown_keys_get_503_in_their_format(
    private_db: PrivateDb, simulator_url: str
) -> None:
    key = set_up(private_db, simulator_url)
    spool = Path(private_db.data.parent / "spool")
    port = free_port()
    env = {
        "DATABASE_URL": private_db.url,
        "RECKON_AUTH_CACHE_SECONDS": "0.2",
        "RECKON_AUTH_STALE_SECONDS": "300",
        "RECKON_AUTH_LOOKUP_TIMEOUT_SECONDS": "2",
        "RECKON_LEDGER_SPOOL_DIR": str(spool),
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        "PYTHONUNBUFFERED": "1",
        SIM_KEY_ENV: "sim-test-key",
    }
    server = start(["serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/v1/models")
    base = f"http://127.0.0.1:{port}"
    oai = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
    try:

        def both_sdks_answer() -> None:
            chat = oai.chat.completions.create(model="reasoner", messages=PROMPT)  # type: ignore[arg-type]
            assert chat.usage is not None and chat.usage.completion_tokens > 0
            message = claude.messages.create(model="thinker", max_tokens=64, messages=PROMPT)  # type: ignore[arg-type]
            assert message.usage.output_tokens > 0

        both_sdks_answer()  # warms the key
        private_db.stop()
        time.sleep(0.5)  # past the cache's freshness: every call now asks the database

        both_sdks_answer()
        status, _, models = http(
            "GET", base + "/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        assert status == 200 and {m["id"] for m in models["data"]} == {"reasoner", "thinker"}
        # the usage of both calls made during the outage is durable in the spool
        deadline = time.monotonic() + 15
        while len(spooled_records(spool)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(spooled_records(spool)) >= 2

        with pytest.raises(openai.APIStatusError) as openai_error:
            openai.OpenAI(
                base_url=base + "/v1", api_key=UNKNOWN_KEY, max_retries=0
            ).chat.completions.create(
                model="reasoner",
                messages=PROMPT,  # type: ignore[arg-type]
            )
        response = openai_error.value.response
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "service_unavailable"
        assert response.headers["content-type"] == "application/json"

        with pytest.raises(anthropic.APIStatusError) as anthropic_error:
            anthropic.Anthropic(base_url=base, api_key=UNKNOWN_KEY, max_retries=0).messages.create(
                model="thinker",
                max_tokens=64,
                messages=PROMPT,  # type: ignore[arg-type]
            )
        response = anthropic_error.value.response
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert "127.0.0.1" not in response.text and "OperationalError" not in response.text

        private_db.start()
        time.sleep(1.2)  # past the fail-fast pause after a failed lookup
        both_sdks_answer()
        # Known again to be unknown: 401 once a lookup reaches the restarted database.
        # Until then (a loaded machine may take a few seconds to accept connections) the
        # only other answer allowed is the same clean 503.
        deadline = time.monotonic() + 20
        while True:
            try:
                openai.OpenAI(
                    base_url=base + "/v1", api_key=UNKNOWN_KEY, max_retries=0
                ).chat.completions.create(
                    model="reasoner",
                    messages=PROMPT,  # type: ignore[arg-type]
                )
            except openai.AuthenticationError:
                break
            except openai.InternalServerError as still:
                assert still.status_code == 503, still
                assert time.monotonic() < deadline, "the unknown key never got its 401"
                time.sleep(0.3)
            else:
                raise AssertionError("an unknown key was let through")
    finally:
        stop(server)
        forget_spool_reports(spool, env["REDIS_URL"])


def forget_spool_reports(spool: Path, redis_url: str) -> None:
    """Delete what this test's server reported of its spool to the shared Redis: records
    left unreplayed in a private spool must not make later tests see usage outstanding."""
    writers = {path.name.removeprefix("ledger-").split(".")[0] for path in spool.glob("ledger-*")}
    if not writers:
        return
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(*(SPOOL_KEY_PREFIX + writer for writer in writers))
        client.srem(SPOOL_WRITERS_KEY, *writers)
    finally:
        client.close()
