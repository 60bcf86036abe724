"""`make run` (`manage.py quickstart`) as a process manager sees it: however the parent
ends, its simulator ends with it and the ports are free for the next start; a port
already taken is said plainly. Real processes on loopback, SQLite in a temp dir."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port, port_free

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@dataclass
class Quickstart:
    process: subprocess.Popen[bytes]
    port: int
    simulator_port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quickstart")


def quickstart_env(workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "RECKON_", "TEST_DATABASE"))
    }
    return {
        **env,
        "DATABASE_URL": f"sqlite:///{workdir / 'reckon.sqlite3'}",
        "RECKON_LEDGER_SPOOL_DIR": str(workdir / "spool"),
        "RECKON_ENV": "development",  # the embedded default is development mode
        "PYTHONUNBUFFERED": "1",
    }


def launch(workdir: Path, port: int, simulator_port: int, name: str) -> Quickstart:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "quickstart",
                "--port",
                str(port),
                "--simulator-port",
                str(simulator_port),
                # These tests are about processes and ports; the demo data has its own test.
                "--no-demo",
            ],
            cwd=ROOT,
            env=quickstart_env(workdir),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Quickstart(process, port, simulator_port, log)


@pytest.fixture
def running(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Quickstart]:
    qs = launch(workdir, free_port(), free_port(), request.node.name)

    def serving() -> bool:
        assert qs.process.poll() is None, qs.output()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{qs.port}/v1/models", timeout=1)  # noqa: S310
        except urllib.error.HTTPError:
            return True  # it answered (401 without a key)
        except OSError:
            return False
        return True

    assert wait_for(serving, 180), qs.output()
    started = children_of(qs.process.pid)
    yield qs
    # whatever the test did, leave nothing behind
    for pid in [qs.process.pid, *started]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    qs.process.wait(timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL])
def test_the_simulator_ends_with_its_parent_whatever_the_signal(
    running: Quickstart, signum: int
) -> None:
    (simulator,) = children_of(running.process.pid)
    assert alive(simulator)
    assert not port_free(running.simulator_port)

    running.process.send_signal(signum)
    running.process.wait(timeout=60)

    assert wait_for(lambda: not alive(simulator), 15), (
        f"simulator {simulator} still runs after {signal.Signals(signum).name} of its parent"
    )
    assert wait_for(lambda: port_free(running.simulator_port), 5)
    assert wait_for(lambda: port_free(running.port), 5)
    assert children_of(running.process.pid) == []


@pytest.mark.parametrize("taken", ["simulator", "server"])
def test_a_taken_port_is_said_plainly(workdir: Path, taken: str) -> None:
    port, simulator_port = free_port(), free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", simulator_port if taken == "simulator" else port))
    squatter.listen()  # bound and listening, answers nothing: like a stuck old process
    try:
        qs = launch(workdir, port, simulator_port, f"taken-{taken}")
        try:
            code = qs.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            qs.process.kill()
            pytest.fail(f"quickstart hung on a taken port:\n{qs.output()}")
        output = qs.output().lower()
        assert code != 0
        if taken == "simulator":
            assert f"port {simulator_port}" in output and "--simulator-port" in output, output
        else:
            assert f"port {port}" in output and "--port" in output, output
        assert "Traceback" not in output, output
    finally:
        squatter.close()


def test_quickstart_and_its_simulator_end_when_make_is_killed(workdir: Path) -> None:
    """`make run` killed with -9: quickstart loses its parent (make) and must not go on
    serving with the ports taken. A shell that waits for it stands in for make."""
    port, simulator_port = free_port(), free_port()
    log = workdir / "under-make.log"
    command = (
        f"'{sys.executable}' manage.py quickstart --port {port} "
        f"--simulator-port {simulator_port} --no-demo > '{log}' 2>&1; exit 0"
    )
    make = subprocess.Popen(["sh", "-c", command], cwd=ROOT, env=quickstart_env(workdir))
    started: list[int] = []
    try:

        def serving() -> bool:
            assert make.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)  # noqa: S310
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        assert wait_for(serving, 180), log.read_text()
        (quickstart,) = children_of(make.pid)
        (simulator,) = children_of(quickstart)
        started += [quickstart, simulator]

        make.kill()
        make.wait(timeout=10)

        assert wait_for(lambda: not alive(quickstart), 60), "quickstart outlived make"
        assert wait_for(lambda: not alive(simulator), 15), "the simulator outlived make"
        assert wait_for(lambda: port_free(port) and port_free(simulator_port), 5)
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if make.poll() is None:
            make.kill()
            make.wait()


def test_the_quick_start_seeds_the_demo_once_and_prints_the_console(tmp_path: Path) -> None:
    """`manage.py quickstart --no-serve` twice on one database: the console URL and the
    demo sign-ins the first time (passwords shown once), how to reset them the second
    time, and no demo record written twice."""

    def seed() -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", "quickstart", "--no-serve"],
            cwd=ROOT,
            env=quickstart_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    first, second = seed(), seed()
    assert "Console:            http://127.0.0.1:8000/console/" in first
    for username, role in (
        ("demo", "owner"),
        ("demo-dev", "developer"),
        ("demo-billing", "billing"),
    ):
        assert f"Console sign-in:    {username} ({role}), password " in first
        assert (
            f"reset with `manage.py tenant_member_set demo {username} --role {role} "
            "--reset-password`" in second
        )
        assert f"{username} ({role}), password" not in second
    assert "records written now" in first and " 0 records written now" not in first
    # (the second run may add the calls of the seconds in between: idempotency is
    # tests/billing/test_demo.py's, with one `now`)
    assert "finalized invoices: RK-" in second
