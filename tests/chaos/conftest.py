"""The fault suite's own world: a private PostgreSQL and a private Redis (also the Celery
broker) on free loopback ports, a simulator, and Reckon server processes, all started
here and all stopped here, even when a test fails. The suite stops and starts THESE
processes only; the machine's shared PostgreSQL and Redis are never touched.

Every process runs in its own session (process group), so `kill -9` reaches all of it
and the finalizers can always clean up."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.ports import free_port  # noqa: F401 - the chaos tests take theirs here

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SIM_KEY = "sim-chaos-key"
TEMPLATE_DB = "reckon_template"


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> float:
    """Wait until `predicate()` is true; return the seconds it took, fail after `timeout`."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def report(title: str, **figures: Any) -> None:
    """Print what a scenario checked (run with -s to see it)."""
    print(f"\n[chaos] {title}")
    for name, value in figures.items():
        print(f"[chaos]   {name.replace('_', ' ')}: {value}")


# --- processes ------------------------------------------------------------------------


class Proc:
    """A child process in its own process group, output to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, user: str = "") -> None:
        self.args, self.log = args, log
        if user and os.geteuid() == 0:
            args = ["runuser", "-u", user, "--", *args]
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        # whatever the group left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._out.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http_up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


def manage(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode:
        raise RuntimeError(f"{args} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


# --- the private PostgreSQL and Redis --------------------------------------------------


class Postgres:
    """A throwaway cluster (fsync off) in a temp dir; `stop()`/`start()` make the outage."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "pg"
        self.sock = base / "pgsock"
        self.port = free_port()
        self.sock.mkdir()
        user = "postgres" if os.geteuid() == 0 else ""
        if user:
            shutil.chown(base, user)
            shutil.chown(self.sock, user)
        self.user = user
        self._run([str(PG_BIN / "initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust"])
        self.start()

    def _run(self, args: list[str]) -> None:
        if self.user:
            args = ["runuser", "-u", self.user, "--", *args]
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sock} -c fsync=off -c listen_addresses=127.0.0.1"
        self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-l", str(self.dir / "log"), "-w"]
            + ["-o", options, "start"]
        )

    def stop(self) -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "-w", "stop"])

    def is_up(self) -> bool:
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def execute(self, sql: str, name: str = "postgres") -> None:
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def query(self, sql: str, name: str, *params: Any) -> list[tuple]:
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


class Redis:
    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.log = base / "redis.log"
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.proc = Proc([*args, "--appendonly", "no"], {}, self.log)
        wait_for("redis up", self.ping, 10)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """A crash, not a shutdown: kill -9, nothing saved."""
        if self.proc is not None:
            self.proc.kill9()
            self.proc.stop()
            self.proc = None

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="reckon-chaos-"))
    yield base
    if os.environ.get("RECKON_CHAOS_KEEP"):
        print(f"\n[chaos] logs and data kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(workdir: Path) -> Iterator[Postgres]:
    cluster = Postgres(workdir)
    try:
        cluster.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        manage(["manage.py", "migrate", "--no-input"], {"DATABASE_URL": cluster.url(TEMPLATE_DB)})
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()


@pytest.fixture(scope="session")
def redis(workdir: Path) -> Iterator[Redis]:
    server = Redis(workdir)
    yield server
    server.stop()


_databases = iter(range(1, 16))


@dataclass
class World:
    """One test's database (a copy of the migrated template), Redis db, spool and logs."""

    pg: Postgres
    redis: Redis
    dir: Path
    db: str
    redis_db: int
    simulator_url: str
    procs: list[Proc] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": self.pg.url(self.db),
            "REDIS_URL": self.redis.url(self.redis_db),
            "CELERY_BROKER_URL": self.redis.url(self.redis_db),
            "RECKON_SIMULATOR_API_KEY": SIM_KEY,
            "RECKON_LEDGER_SPOOL_DIR": str(self.dir / "spool"),
            "RECKON_AUTH_CACHE_SECONDS": "0.5",
            "RECKON_DRAIN_TIMEOUT_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
            "RECKON_ENV": "development",  # loopback, the built-in secret
            "TEST_DATABASE_NAME": "",
            **extra,
        }

    def seed(self, *args: str) -> dict:
        out = manage(["-m", "tests.chaos.seed", *args], self.env())
        return json.loads(out.strip().splitlines()[-1])

    def spawn(self, name: str, args: list[str], **env: str) -> Proc:
        proc = Proc(args, self.env(**env), self.dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def serve(self, port: int, **env: str) -> Proc:
        proc = self.spawn(
            f"serve-{port}", [sys.executable, "manage.py", "serve", "--port", str(port)], **env
        )
        url = f"http://127.0.0.1:{port}/v1/models"
        try:
            wait_for("reckon server up", lambda: http_up(url) or not proc.alive(), 60)
        except AssertionError:
            raise AssertionError(f"server did not come up:\n{proc.tail()}") from None
        assert proc.alive(), f"server exited:\n{proc.tail()}"
        return proc

    def ledger(self, sql: str, *params: Any) -> list[tuple]:
        return self.pg.query(sql, self.db, *params)


@pytest.fixture(scope="session")
def simulator_url(workdir: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        [sys.executable, "manage.py", "run_simulator", "--port", str(port)],
        {"RECKON_SIMULATOR_API_KEY": SIM_KEY},
        workdir / "simulator.log",
    )
    wait_for("simulator up", lambda: http_up(f"http://127.0.0.1:{port}/_sim/health"), 30)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def world(pg: Postgres, redis: Redis, simulator_url: str, workdir: Path) -> Iterator[World]:
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    base = workdir / name
    base.mkdir()
    w = World(pg, redis, base, name, next(_databases), simulator_url)
    try:
        yield w
    finally:
        for proc in reversed(w.procs):
            proc.stop()
        if not redis.ping():
            redis.start()  # a failed test may have left it down
        if not pg.is_up():
            pg.start()


# --- load -----------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float  # monotonic
    ended: float
    wire: str  # "openai" or "anthropic"
    status: int  # 0: no HTTP answer (connection refused or reset)
    request_id: str
    content_type: str
    retry_after: str
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def call(base: str, key: str, wire: str, alias: str, stream: bool = False) -> Outcome:
    if wire == "anthropic":
        url = base + "/v1/messages"
        body: dict[str, Any] = {
            "model": alias,
            "max_tokens": 512,
            "messages": [{"role": "user", "content": "Think about chaos."}],
        }
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    else:
        url = base + "/v1/chat/completions"
        body = {
            "model": alias,
            "max_completion_tokens": 512,
            "messages": [{"role": "user", "content": "Think about chaos."}],
        }
        headers = {"Authorization": f"Bearer {key}"}
    if stream:
        body["stream"] = True
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={**headers, "Content-Type": "application/json"},
    )
    started = time.monotonic()
    status, hdrs, raw = 0, {}, b""
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            status, hdrs = response.status, dict(response.headers)
            raw = response.read()
    except urllib.error.HTTPError as exc:
        status, hdrs = exc.code, dict(exc.headers)
        with contextlib.suppress(OSError):
            raw = exc.read()
    except OSError as exc:  # refused, reset, timeout, or a body cut short
        if status:
            status = -status  # an answer that started but did not complete
        raw = repr(exc).encode()
    lower = {k.lower(): v for k, v in hdrs.items()}
    return Outcome(
        started,
        time.monotonic(),
        wire,
        status,
        lower.get("x-reckon-request-id", ""),
        lower.get("content-type", ""),
        lower.get("retry-after", ""),
        raw,
    )


class Load:
    """`callers` threads calling as fast as they can until stopped; half OpenAI, half
    Anthropic. `base` may be changed while running (a restarted server)."""

    def __init__(self, base: str, key: str, callers: int = 32) -> None:
        self.base, self.key = base, key
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(callers)
        ]

    def _run(self, i: int) -> None:
        wire, alias = ("anthropic", "thinker") if i % 2 else ("openai", "reasoner")
        while not self._stop.is_set():
            outcome = call(self.base, self.key, wire, alias)
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.status in (0, -200):
                time.sleep(0.02)  # nobody listening: do not spin

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)

    def count(self, predicate: Callable[[Outcome], bool] = lambda o: True) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if predicate(o))

    def wait_for_ok(self, more: int, timeout: float = 60) -> None:
        target = self.count(lambda o: o.status == 200) + more
        wait_for(
            f"{more} more 200s", lambda: self.count(lambda o: o.status == 200) >= target, timeout
        )


def caller_format(outcome: Outcome) -> bool:
    """An error in the caller's own wire format: JSON, shaped as OpenAI's or Anthropic's."""
    if not outcome.content_type.startswith("application/json"):
        return False
    body = outcome.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    error = body["error"]
    if outcome.wire == "anthropic":
        return body.get("type") == "error" and isinstance(error.get("message"), str)
    return isinstance(error.get("message"), str) and isinstance(error.get("type"), str)


def status_counts(outcomes: list[Outcome]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return dict(sorted(counts.items()))
