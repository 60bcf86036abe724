"""Streaming relay benchmark: thousands of concurrent paced streams through ONE Reckon
server process (`manage.py serve`, durable metering on PostgreSQL), beside the thinnest
Python pass-through (bench/bare_passthrough.py) under the same load, in one run.

    make bench-stream     # or: .venv/bin/python bench/stream_bench.py
                          #     [--streams 2000,10000 --rounds 3 --chunks 50 --interval 0.2]

The upstream is bench/paced_upstream.py: OpenAI chat-completions streams (with `--provider
anthropic`, Anthropic messages streams with a thinking block) of `--chunks` frames (one
write each) at `--interval` seconds apart (default: streams / 10,000 s, at
least 0.2 s, so the aggregate stays near 10,000 chunks/s). The client is a raw asyncio
Protocol in this process; streams open at `--ramp` per second. Each round starts a fresh
server process per target (Reckon, then bare; the order reverses every other round), warms
it with 20 short streams, and prints, per target:

- server CPU per relayed chunk: utime+stime of the server pid (/proc) over the round
  divided by the chunks the upstream wrote (streams x chunks). The whole-round figure
  includes each stream's setup and its record (for Reckon: until the ledger holds them);
  the steady-state figure is a window while every stream is open, divided by the frames
  the client received in it;
- resident memory per open stream: (server RSS with all N streams open - RSS just before
  the round) / N;
- added time to first byte: every `--probe-every`-th stream is paired with a probe
  straight to the paced upstream, opened at the same moment; the figure is the p50/p99
  through the server minus the p50/p99 of those direct probes, in the same round;
- every stream complete with its record: each client stream saw `data: [DONE]`, and the
  ledger (a scratch database, RECKON_BENCH_DB) gained exactly N records whose reasoning and
  visible output tokens sum to what the upstream reported for the round. Any mismatch
  exits non-zero.

`--floor` adds the floor (bench/floor_relay.py): a uvloop byte relay with no parsing at
all, one upstream connection per client connection, the upstream's bytes written to the
client as they arrive. Its CPU per chunk is what the kernel (recv, send, epoll) and the
event loop alone cost here, under the same load: the part of Reckon's figure that no
Python relay can cut.

`--baseline REV` adds a third target: Reckon served from a temporary worktree of REV, in
the same rounds under the same load, and prints the change of medians against it (an A/B
of two commits; machine drift between separate runs is larger than most changes).

Each round also prints how busy the server, the client and the upstream were, how long
the server waited for a CPU while the streams opened, and the machine's listen-queue drops
and SYN retransmits: on a shared machine those explain most of a bad time to first byte.

Options for attributing the tail (none is the default; the README's figures use none):
`--loop-probe PREFIX` runs Reckon with its loop-stall probe (api.proxy.stallprobe) and
prints, after each round, its stalls split into the loop's own CPU, GC, waiting for a CPU
and blocked; `--pin CPUS` pins every server under test alike (Reckon, baseline, bare) to
CPUS and this client and the paced upstream to the others, as a server with cores of its
own (PostgreSQL, Redis and other processes stay unpinned; printed in the banner);
`--pin-ab CPUS` instead adds a pinned Reckon target in the same rounds as the unpinned
one; `--upstream-name HOST` names the upstream in Reckon's route by a host name.

The server needs two sockets per stream (client and upstream) and this machine's per-
process limit on open files is a hard limit: a stream count above what fits is capped
(printed). The soft limit is raised to the hard one for every child process.
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from proxy_bench import (  # noqa: E402
    SIM_KEY_ENV,
    bare_passthrough,
    baseline_tree,
    django_env,
    free_port,
    psql_rows,
    remove_tree,
    seed,
    serve,
    setup_database,
    wait_up,
)
from stats import add_database_url, machine_banner, spread, target_line  # noqa: E402

RECKON_MODEL = "bench-reasoner"  # the alias proxy_bench.seed creates
RECKON_UPSTREAM_MODEL = "sim-reasoner"  # what Reckon asks the upstream for (its route)
BARE_MODEL = "paced-bare"
PROBE_MODEL = "paced-direct"
FD_RESERVE = 200  # the server's own files: database, Redis, listening socket, libraries
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), per destination
# Loopback addresses: each path to the upstream and each phase's client get their own,
# so tens of thousands of short-lived connections per run never run out of ports.
RECKON_UPSTREAM_HOST = "127.0.0.2"
PROBE_UPSTREAM_HOST = "127.0.0.3"
BARE_UPSTREAM_HOST = "127.0.0.4"
FLOOR_UPSTREAM_HOST = "127.0.0.5"
FLOOR_MODEL = "paced-floor"
CLIENT_HOSTS = [f"127.0.1.{n}" for n in range(1, 255)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# a server process may take this long to come up on a busy shared machine (60 s was not
# enough once, with four helpers on two cores)
START_TIMEOUT_S = 180


def raise_fd_limit() -> int:
    """Soft limit := hard limit (inherited by every child); returns the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def run_queue_seconds(pid: int) -> float:
    """Time the process's threads were ready to run but waited for a CPU (schedstat): on a
    shared machine, the part of a latency that other processes' load put there."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tcp_counters() -> dict[str, int]:
    """This network namespace's listen-queue drops and SYN retransmissions (/proc/net/netstat):
    a stream whose SYN was dropped waits a second or more for its first byte."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=True))
            return {
                "listen_drops": table.get("ListenDrops", 0),
                "syn_retrans": table.get("TCPSynRetrans", 0),
            }
    return {"listen_drops": 0, "syn_retrans": 0}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` (threads started later inherit the main thread's set)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile


def pinning(spec: str | None) -> tuple[set[int], set[int]] | None:
    """`--pin`: (the server under test's CPUs, the load's CPUs), or None (no pinning)."""
    if not spec:
        return None
    server = {int(c) for c in spec.split(",")}
    rest = set(os.sched_getaffinity(0)) - server
    if not rest or not server <= set(os.sched_getaffinity(0)):
        raise SystemExit(f"--pin {spec}: needs CPUs of this machine and at least one left over")
    return server, rest


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---- the client ------------------------------------------------------------------------


class Load:
    """What one phase's client saw, across its streams."""

    def __init__(self) -> None:
        self.events = 0  # SSE events received by all streams (frames relayed)
        self.open = 0
        self.complete = 0
        self.failed: list[str] = []
        self.ttfb: list[float] = []  # seconds, streams through the server
        self.probe_ttfb: list[float] = []  # seconds, direct probes
        self.done = asyncio.Event()
        self.expected = 0
        self.connect_failures = 0
        self.stream_failures = 0
        self.end = STREAM_END["chat"]


class Stream(asyncio.Protocol):
    __slots__ = (
        "load",
        "request",
        "probe",
        "parser",
        "transport",
        "sent",
        "first",
        "tail",
        "newline",
        "status",
        "error_body",
        "finished",
    )

    def __init__(self, load: Load, request: bytes, probe: bool) -> None:
        self.load = load
        self.request = request
        self.probe = probe
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.first = False
        self.tail = b""
        self.newline = False
        self.status = 0
        self.error_body = b""
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.probe:
            self.load.open += 1
        self.sent = time.perf_counter()
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(f"malformed response: {exc}")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        load = self.load
        if self.status != 200:
            self.error_body += body[:500]
            return
        if not self.first:
            self.first = True
            elapsed = time.perf_counter() - self.sent
            if self.probe:
                load.probe_ttfb.append(elapsed)
                self._end(None)
                return
            load.ttfb.append(elapsed)
        events = body.count(b"\n\n")
        if self.newline and body[:1] == b"\n":
            events += 1
        self.newline = body[-1:] == b"\n"
        load.events += events
        self.tail = (self.tail + body)[-32:]

    def on_message_complete(self) -> None:
        if self.status != 200:
            self._end(f"HTTP {self.status}: {self.error_body[:300]!r}")
        elif self.load.end not in self.tail:
            self._end(f"stream ended without {self.load.end!r}")
        else:
            self._end(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._end(f"connection lost before the end ({exc or 'closed'})")

    def _end(self, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        load = self.load
        if not self.probe:
            load.open -= 1
            if error is None:
                load.complete += 1
            else:
                load.failed.append(error)
                load.stream_failures += 1
            if load.connect_failures + load.complete + load.stream_failures >= load.expected:
                load.done.set()
        elif error is not None:
            load.failed.append("direct probe: " + error)
        if self.transport is not None:
            self.transport.close()


def messages_request(host: str, port: int, model: str, key: str) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "max_tokens": 4096,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [{"role": "user", "content": "Think it through, then answer."}],
            "stream": True,
        }
    ).encode()
    return (
        b"POST /v1/messages HTTP/1.1\r\nHost: %s:%d\r\nx-api-key: %s\r\n"
        b"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port, key.encode(), len(body), body)
    )


# what a complete stream ends with, by the request it answers
STREAM_END = {"chat": b"data: [DONE]\n\n", "messages": b'data: {"type":"message_stop"}\n\n'}


def chat_request(host: str, port: int, model: str, key: str) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Think it through, then answer."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), port, key.encode(), len(body), body)
    )


async def open_stream(
    factory: Callable[[], Stream], source: str, host: str, port: int, load: Load, probe: bool
) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.create_connection(factory, sock=sock)
    except OSError as exc:
        sock.close()
        load.failed.append(f"connect to {host}:{port}: {exc}")
        if not probe:
            load.connect_failures += 1
            if load.connect_failures + load.complete + load.stream_failures >= load.expected:
                load.done.set()


@dataclass
class Phase:
    """One target's round: where to send streams and what it measured."""

    name: str
    pid: int
    host: str
    port: int
    model: str
    key: str
    cpu_round: float = 0.0  # µs per chunk
    cpu_steady: float | None = None
    rss_per_stream: float | None = None  # KiB
    added_p50: float = 0.0  # ms
    added_p99: float = 0.0
    ttfb_p50: float = 0.0  # ms through the server
    ttfb_p99: float = 0.0
    server_busy_ramp: float = 0.0  # share of one core while the streams opened
    server_waiting_ramp: float = 0.0  # share of that time it waited for a CPU
    server_busy: float = 0.0  # over the whole round
    client_busy: float = 0.0
    upstream_busy: float = 0.0
    listen_drops: int = 0  # machine-wide, during the round
    syn_retrans: int = 0
    complete: int = 0
    failures: list[str] = field(default_factory=list)


async def drive(
    phase: Phase,
    *,
    streams: int,
    chunks: int,
    interval: float,
    ramp: float,
    probe_every: int,
    source: str,
    upstream_port: int,
    upstream_pid: int,
    settle: Callable[[], None],
    anthropic: bool = False,
) -> None:
    """Open `streams` paced streams through the phase's server, measure, wait for the end
    (Anthropic messages streams with `anthropic`; the direct probes are chat streams)."""
    load = Load()
    load.expected = streams
    if anthropic:
        load.end = STREAM_END["messages"]
        request = messages_request(phase.host, phase.port, phase.model, phase.key)
    else:
        request = chat_request(phase.host, phase.port, phase.model, phase.key)
    probe_request = chat_request(PROBE_UPSTREAM_HOST, upstream_port, PROBE_MODEL, "probe")
    pid = phase.pid
    tasks: set[asyncio.Task[None]] = set()
    rss_before = rss_kib(pid)
    tcp_before = tcp_counters()
    client_before = own_cpu_seconds()
    upstream_before = cpu_seconds(upstream_pid)
    cpu_before = cpu_seconds(pid)
    waiting_before = run_queue_seconds(pid)
    start = time.monotonic()
    duration = (chunks - 1) * interval  # first frame to last, per stream
    ramp_time = streams / ramp
    # while every stream is open: after the ramp, before the first stream can end
    window = (ramp_time + min(0.5, duration / 10), duration - min(0.5, duration / 10))
    for number in range(streams):
        due = start + number / ramp
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(
            open_stream(
                lambda: Stream(load, request, False), source, phase.host, phase.port, load, False
            )
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if number % probe_every == 0:
            probe = asyncio.create_task(
                open_stream(
                    lambda: Stream(load, probe_request, True),
                    source,
                    PROBE_UPSTREAM_HOST,
                    upstream_port,
                    load,
                    True,
                )
            )
            tasks.add(probe)
            probe.add_done_callback(tasks.discard)
    await asyncio.sleep(max(0.0, start + ramp_time - time.monotonic()))
    phase.server_busy_ramp = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - start)
    phase.server_waiting_ramp = (run_queue_seconds(pid) - waiting_before) / (
        time.monotonic() - start
    )
    if window[1] - window[0] >= 1.0:
        await asyncio.sleep(max(0.0, start + window[0] - time.monotonic()))
        events_a, cpu_a, t_a = load.events, cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(max(0.0, start + window[1] - time.monotonic()))
        events_b, cpu_b, t_b = load.events, cpu_seconds(pid), time.monotonic()
        all_open = load.open == streams
        if all_open and events_b > events_a:
            phase.cpu_steady = (cpu_b - cpu_a) / (events_b - events_a) * 1e6
            phase.rss_per_stream = (rss_kib(pid) - rss_before) / streams
        elif not all_open:
            phase.failures.append(
                f"only {load.open} of {streams} streams open in the steady window "
                f"({t_b - t_a:.1f} s); steady figures not taken"
            )
    try:
        await asyncio.wait_for(load.done.wait(), timeout=ramp_time + duration + 60)
    except TimeoutError:
        phase.failures.append(
            f"timed out: {load.complete} complete, {len(load.failed)} failed of {streams}"
        )
    settle()
    cpu_after = cpu_seconds(pid)
    elapsed = time.monotonic() - start
    phase.cpu_round = (cpu_after - cpu_before) / (streams * chunks) * 1e6
    phase.server_busy = (cpu_after - cpu_before) / elapsed
    phase.client_busy = (own_cpu_seconds() - client_before) / elapsed
    phase.upstream_busy = (cpu_seconds(upstream_pid) - upstream_before) / elapsed
    tcp_after = tcp_counters()
    phase.listen_drops = tcp_after["listen_drops"] - tcp_before["listen_drops"]
    phase.syn_retrans = tcp_after["syn_retrans"] - tcp_before["syn_retrans"]
    phase.complete = load.complete
    phase.failures.extend(load.failed[:5])
    if len(load.failed) > 5:
        phase.failures.append(f"... {len(load.failed)} failures in all")
    if load.ttfb and load.probe_ttfb:
        phase.added_p50 = (statistics.median(load.ttfb) - statistics.median(load.probe_ttfb)) * 1000
        phase.added_p99 = (percentile(load.ttfb, 0.99) - percentile(load.probe_ttfb, 0.99)) * 1000
        phase.ttfb_p50 = statistics.median(load.ttfb) * 1000
        phase.ttfb_p99 = percentile(load.ttfb, 0.99) * 1000
    for task in list(tasks):
        task.cancel()


# ---- processes, upstream and ledger ------------------------------------------------------


def http_json(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def upstream_totals(base: str, model: str) -> dict[str, int]:
    zero = {
        "started": 0,
        "completed": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "reasoning_tokens": 0,
    }
    return http_json(base + "/_paced/totals").get(model, zero)


def ledger(database_url: str) -> dict[str, int]:
    (row,) = psql_rows(
        database_url,
        "select count(*), count(*) filter (where status = 'completed'),"
        " coalesce(sum(reasoning_tokens), 0), coalesce(sum(output_tokens), 0)"
        " from metering_usagerecord",
    )
    records, completed, reasoning, visible = (int(v) for v in row)
    return {"records": records, "completed": completed, "reasoning": reasoning, "visible": visible}


def wait_ledger(database_url: str, records: int, timeout: float = 60) -> dict[str, int]:
    """The ledger once it holds `records` records (or the timeout's last look)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = ledger(database_url)
        if seen["records"] >= records or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def set_provider(database_url: str, upstream_base: str, provider: str) -> None:
    """The seeded route, with another provider (the same upstream and model)."""
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "route_set",
            RECKON_MODEL,
            "--provider",
            provider,
            "--base-url",
            upstream_base + "/v1",
            "--upstream-model",
            RECKON_UPSTREAM_MODEL,
            "--api-key-env",
            SIM_KEY_ENV,
        ],
        cwd=ROOT,
        env=django_env(database_url),
        check=True,
        capture_output=True,
    )


def start_reckon(port: int, env: dict[str, str], tree: Path | None = None) -> subprocess.Popen:
    """`manage.py serve`, one process: this checkout's, or the one in `tree`."""
    proc = serve(port, 1, env, tree)
    wait_up(f"http://127.0.0.1:{port}/v1/models", timeout=START_TIMEOUT_S)
    return proc


def start_bare(port: int, env: dict[str, str], upstream: str) -> subprocess.Popen:
    proc = bare_passthrough(port, env, upstream, None, "--backlog", "4096")
    wait_up(f"http://127.0.0.1:{port}/", timeout=START_TIMEOUT_S)
    return proc


def start_floor(port: int, upstream: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "bench/floor_relay.py", "--port", str(port), "--upstream", upstream],
        cwd=ROOT,
    )
    wait_up(f"http://127.0.0.1:{port}/v1/models", timeout=START_TIMEOUT_S)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- the run -----------------------------------------------------------------------------


@dataclass
class Point:
    streams: int
    chunks: int
    interval: float
    rounds: int
    phases: dict[str, list[Phase]] = field(
        default_factory=lambda: {
            "reckon": [],
            "baseline": [],
            "pinned": [],
            "bare": [],
            "floor": [],
        }
    )
    mismatches: list[str] = field(default_factory=list)


@dataclass
class Rig:
    """What every phase of the run shares: the scratch database, the paced upstream."""

    env: dict[str, str]
    key: str
    database_url: str
    upstream_port: int
    upstream_pid: int
    args: argparse.Namespace
    baseline: Path | None = None  # a worktree of --baseline REV, served as "baseline"
    baseline_sha: str = ""
    pinned: tuple[set[int], set[int]] | None = None  # --pin: (server CPUs, load CPUs)
    pin_ab: tuple[set[int], set[int]] | None = None  # --pin-ab: the "pinned" target's

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="2000,10000", help="stream counts, comma-separated")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per stream count (default: 3; a target needs 3 to be judged)",
    )
    parser.add_argument("--chunks", type=int, default=50, help="frames per stream")
    parser.add_argument(
        "--interval", type=float, help="seconds between frames (default: streams/10,000, >= 0.2)"
    )
    parser.add_argument("--ramp", type=float, default=1000, help="streams opened per second")
    parser.add_argument(
        "--probe-every", type=int, default=10, help="one direct TTFB probe per this many streams"
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare pass-through")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="add the floor: a uvloop byte relay (bench/floor_relay.py), no parsing, no "
        "metering: what the kernel and the event loop alone cost per chunk here",
    )
    parser.add_argument(
        "--provider",
        choices=["openai", "openai-compatible", "anthropic"],
        default="openai",
        help="the route's provider (openai-compatible: Reckon also counts the streamed text; "
        "anthropic: messages streams with a thinking block, whose text Reckon counts)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also serve Reckon from REV (a temporary worktree), interleaved with this "
        "checkout's in every round: an A/B of two commits under the same load",
    )
    parser.add_argument(
        "--upstream-name",
        metavar="HOST",
        help="Reckon's route names the paced upstream by this host name (e.g. localhost, "
        "which must resolve to a loopback address) instead of the IP literal "
        f"{RECKON_UPSTREAM_HOST}, as a production route names its provider",
    )
    parser.add_argument(
        "--pin",
        metavar="CPUS",
        help="pin each server under test (Reckon, baseline, bare alike) to these CPUs "
        "(comma-separated) and this client and the paced upstream to the others, as a server "
        "with cores of its own; PostgreSQL, Redis and other processes stay unpinned. Not "
        "the default: the README's figures are unpinned",
    )
    parser.add_argument(
        "--pin-ab",
        metavar="CPUS",
        help="add a target: this checkout's Reckon pinned as --pin pins (server on CPUS, "
        "client and paced upstream on the others) in the same rounds as the unpinned ones, "
        "to measure how much of the tail is sharing the load's CPUs (not with --pin)",
    )
    parser.add_argument(
        "--loop-probe",
        metavar="PATH_PREFIX",
        help="run Reckon with its loop-stall probe (RECKON_LOOP_PROBE, api.proxy.stallprobe) "
        "and print where its stalls went after each round (the probe costs a little CPU)",
    )
    add_database_url(parser)
    args = parser.parse_args()
    if args.chunks < 3:
        parser.error("--chunks must be at least 3 (role, deltas, finish)")
    hard = raise_fd_limit()
    cap = (hard - FD_RESERVE) // 2
    counts = [int(n) for n in args.streams.split(",")]
    if args.pin and args.pin_ab:
        parser.error("--pin and --pin-ab: one or the other")
    pinned = pinning(args.pin)
    pin_ab = pinning(args.pin_ab)
    print(machine_banner(), flush=True)
    if pinned is not None:
        pin(os.getpid(), pinned[1])
        print(
            f"pinned: each server under test on CPU {sorted(pinned[0])}, this client and the "
            f"paced upstream on CPU {sorted(pinned[1])}; PostgreSQL, Redis and everything "
            f"else unpinned",
            flush=True,
        )
    elif pin_ab is not None:
        print(
            f"pinned: only the target 'pinned' (Reckon on CPU {sorted(pin_ab[0])}, this client "
            f"and the paced upstream on CPU {sorted(pin_ab[1])} during its phases); every "
            f"other target unpinned",
            flush=True,
        )
    else:
        print("pinned: no (every process may run on any CPU)", flush=True)
    for n in counts:
        if n > cap:
            print(
                f"{n} streams capped at {cap}: the server holds two sockets per stream and "
                f"this machine's hard limit on open files per process is {hard}"
            )
    points = [
        Point(
            streams=min(n, cap),
            chunks=args.chunks,
            interval=args.interval if args.interval else max(0.2, min(n, cap) / 10_000),
            rounds=args.rounds or 3,
        )
        for n in counts
    ]
    database_url = setup_database(args.database_url)
    upstream_port = free_port()
    env = django_env(database_url)
    upstream_base = f"http://{args.upstream_name or RECKON_UPSTREAM_HOST}:{upstream_port}"
    print(f"Reckon's route: {upstream_base}", flush=True)
    key = seed(database_url, upstream_base)
    if args.provider != "openai":
        set_provider(database_url, upstream_base, args.provider)
    upstream_proc = subprocess.Popen(
        [
            sys.executable,
            "bench/paced_upstream.py",
            "--port",
            str(upstream_port),
            "--hosts",
            ",".join(
                ("127.0.0.1", RECKON_UPSTREAM_HOST, PROBE_UPSTREAM_HOST, BARE_UPSTREAM_HOST)
                + ((FLOOR_UPSTREAM_HOST,) if args.floor else ())
            ),
        ],
        cwd=ROOT,
    )
    rig = Rig(
        env, key, database_url, upstream_port, upstream_proc.pid, args, pinned=pinned, pin_ab=pin_ab
    )
    if pinned is not None:
        pin(upstream_proc.pid, pinned[1])
    targets = ["reckon"]
    scratch = tempfile.TemporaryDirectory(prefix="reckon-stream-bench-")
    if args.baseline:
        rig.baseline, rig.baseline_sha = baseline_tree(args.baseline, Path(scratch.name))
        targets.append("baseline")
    if pin_ab is not None:
        targets.append("pinned")
    if not args.no_bare:
        targets.append("bare")
    if args.floor:
        targets.append("floor")
    try:
        wait_up(rig.upstream + "/v1/models")
        client_hosts = iter(CLIENT_HOSTS * 100)
        for point in points:
            for round_number in range(point.rounds):
                order = targets if round_number % 2 == 0 else targets[::-1]
                for name in order:
                    phase = run_phase(rig, name, point, next(client_hosts))
                    point.phases[name].append(phase)
                    print_phase(phase, point, round_number)
        whole_upstream = upstream_totals(rig.upstream, RECKON_UPSTREAM_MODEL)
        whole_ledger = ledger(database_url)
    finally:
        stop(upstream_proc)
        if rig.baseline is not None:
            remove_tree(rig.baseline)
        scratch.cleanup()
    exit_code = 0
    for point in points:
        exit_code |= report(point, targets, rig.baseline_sha, args.provider)
    print()
    visible = whole_upstream["completion_tokens"] - whole_upstream["reasoning_tokens"]
    print(
        f"whole run: ledger {whole_ledger['records']} records ({whole_ledger['completed']} "
        f"completed), {whole_ledger['reasoning']} reasoning + {whole_ledger['visible']} visible "
        f"output tokens; Reckon's upstream completed {whole_upstream['completed']} streams, "
        f"{whole_upstream['reasoning_tokens']} reasoning + {visible} visible"
    )
    held = (
        whole_ledger["records"],
        whole_ledger["completed"],
        whole_ledger["reasoning"],
        whole_ledger["visible"],
    )
    served = (
        whole_upstream["completed"],
        whole_upstream["completed"],
        whole_upstream["reasoning_tokens"],
        visible,
    )
    if held != served:
        print("MISMATCH between the ledger and the upstream over the whole run")
        exit_code = 1
    if exit_code:
        print("records check: FAILED")
        sys.exit(1)
    print("records check: passed (every stream complete, one record each, tokens equal)")


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_phase(phase: Phase, point: Point, round_number: int) -> None:
    print(
        f"  {point.streams} streams, round {round_number + 1}, {phase.name}: "
        f"{phase.cpu_round:.1f} µs/chunk (steady {fmt(phase.cpu_steady, '.1f')}), "
        f"{fmt(phase.rss_per_stream, '.1f')} KiB/stream, TTFB p50 {phase.ttfb_p50:.2f} ms "
        f"({phase.added_p50:+.2f}) p99 {phase.ttfb_p99:.2f} ms ({phase.added_p99:+.2f}), "
        f"{phase.complete}/{point.streams} complete",
        flush=True,
    )
    print(
        f"    busy (share of one core): server {phase.server_busy_ramp:.0%} while streams "
        f"opened (and waiting for a CPU {phase.server_waiting_ramp:.0%}), "
        f"{phase.server_busy:.0%} over the round; client {phase.client_busy:.0%}; "
        f"upstream {phase.upstream_busy:.0%}; machine-wide listen drops "
        f"{phase.listen_drops}, SYN retransmits {phase.syn_retrans}",
        flush=True,
    )
    for failure in phase.failures:
        print(f"    ! {failure}", flush=True)


def run_phase(rig: Rig, name: str, point: Point, source: str) -> Phase:
    """One round of one target: a fresh server process, warmed up, then the paced load."""
    port = free_port()
    probe_path = None
    if rig.pin_ab is not None:  # the load's processes: on their CPUs for "pinned" only
        load_cpus = rig.pin_ab[1] if name == "pinned" else rig.pin_ab[0] | rig.pin_ab[1]
        pin(os.getpid(), load_cpus)
        pin(rig.upstream_pid, load_cpus)
    if name in ("reckon", "baseline", "pinned"):
        env = rig.env
        if rig.args.loop_probe:  # both Reckon targets (a tree without the probe ignores it)
            probe_path = f"{rig.args.loop_probe}-{name}-{port}"
            env = {**env, "RECKON_LOOP_PROBE": probe_path}
        proc = start_reckon(port, env, rig.baseline if name == "baseline" else None)
        model = RECKON_MODEL
    elif name == "bare":
        proc = start_bare(port, rig.env, f"http://{BARE_UPSTREAM_HOST}:{rig.upstream_port}")
        model = BARE_MODEL
    else:
        proc = start_floor(port, f"{FLOOR_UPSTREAM_HOST}:{rig.upstream_port}")
        model = FLOOR_MODEL
    if rig.pinned is not None:  # every target alike: Reckon, the baseline, bare, the floor
        pin(proc.pid, rig.pinned[0])
    if name == "pinned" and rig.pin_ab is not None:
        pin(proc.pid, rig.pin_ab[0])
    phase = Phase(name=name, pid=proc.pid, host="127.0.0.1", port=port, model=model, key=rig.key)
    upstream = rig.upstream
    try:
        # warm up: imports, caches, the database and Redis connections of the fresh process
        http_json(upstream + "/_paced/config", {"chunks": 3, "interval": 0.01})
        warm = Phase(name=name, pid=proc.pid, host="127.0.0.1", port=port, model=model, key=rig.key)
        uvloop.run(
            drive(
                warm,
                streams=20,
                chunks=3,
                interval=0.01,
                ramp=200,
                probe_every=5,
                source=source,
                upstream_port=rig.upstream_port,
                upstream_pid=rig.upstream_pid,
                settle=lambda: None,
                anthropic=rig.args.provider == "anthropic",
            )
        )
        if warm.failures:
            phase.failures.extend(["warm-up: " + f for f in warm.failures])
            point.mismatches.append(f"{name}: the warm-up failed")
            return phase
        http_json(upstream + "/_paced/config", {"chunks": point.chunks, "interval": point.interval})
        served_before = upstream_totals(upstream, RECKON_UPSTREAM_MODEL)
        # the warm-up's records land first, so the round's own can be counted
        before = wait_ledger(rig.database_url, served_before["completed"])
        settled: dict[str, int] = {}

        def settle() -> None:
            if name in ("reckon", "baseline"):  # until the ledger holds every stream it finished
                served = upstream_totals(upstream, RECKON_UPSTREAM_MODEL)
                settled.update(wait_ledger(rig.database_url, served["completed"]))

        uvloop.run(
            drive(
                phase,
                streams=point.streams,
                chunks=point.chunks,
                interval=point.interval,
                ramp=rig.args.ramp,
                probe_every=rig.args.probe_every,
                source=source,
                upstream_port=rig.upstream_port,
                upstream_pid=rig.upstream_pid,
                settle=settle,
                anthropic=rig.args.provider == "anthropic",
            )
        )
        if name in ("reckon", "baseline"):
            served_after = upstream_totals(upstream, RECKON_UPSTREAM_MODEL)
            check_records(phase, point, before, settled, served_before, served_after)
        elif phase.complete != point.streams:
            point.mismatches.append(f"{name}: {phase.complete}/{point.streams} streams complete")
    finally:
        stop(proc)
        if probe_path is not None:
            print_probe(Path(f"{probe_path}.{proc.pid}.json"))
    return phase


def print_probe(path: Path) -> None:
    """The server's loop-stall probe summary (api.proxy.stallprobe), if it wrote one."""
    if not path.exists():
        return
    probe = json.loads(path.read_text())
    split = probe["stall_seconds"]
    print(
        f"    loop probe ({probe['ticks']} ticks, {probe.get('errors', 0)} errors): "
        f"{probe['stalls']} stalls >= 3 ms in {probe['seconds']:.0f} s "
        f"{probe['stalls_by_ms']} (mostly own CPU: {probe['own_stalls_by_ms']}); stall time {split.get('wall', 0) * 1000:.0f} ms = own CPU "
        f"{split.get('own_cpu', 0) * 1000:.0f} (GC {split.get('gc', 0) * 1000:.0f}) + waiting "
        f"for a CPU {split.get('run_queue', 0) * 1000:.0f} + blocked/GIL "
        f"{split.get('blocked', 0) * 1000:.0f}; GC {probe['gc']}; other threads' CPU in "
        f"stalls {probe['other_threads_cpu_in_stalls_s']}",
        flush=True,
    )
    for stack, count in list(probe["loop_stacks_in_stalls"].items())[:6]:
        print(f"      loop stack x{count}: {stack}", flush=True)
    for stack, count in list(probe["other_stacks_in_stalls"].items())[:3]:
        print(f"      other thread x{count}: {stack}", flush=True)
    for entry in probe["worst"][:5]:
        print(f"      worst: {entry}", flush=True)


def check_records(
    phase: Phase,
    point: Point,
    before: dict[str, int],
    after: dict[str, int],
    served_before: dict[str, int],
    served_after: dict[str, int],
) -> None:
    n = point.streams
    new = {k: after[k] - before[k] for k in before}
    served = {k: served_after[k] - served_before[k] for k in served_before}
    expected = {
        "records": n,
        "completed": n,
        "reasoning": served["reasoning_tokens"],
        "visible": served["completion_tokens"] - served["reasoning_tokens"],
    }
    problems = []
    if phase.complete != n:
        problems.append(f"client saw {phase.complete}/{n} streams complete")
    if served["completed"] != n:
        problems.append(f"upstream completed {served['completed']}/{n} streams")
    if new != expected:
        problems.append(f"ledger gained {new}, expected {expected}")
    for problem in problems:
        point.mismatches.append(f"{phase.name}: {problem}")
        phase.failures.append("MISMATCH: " + problem)


def report(point: Point, targets: list[str], baseline_sha: str, provider: str = "openai") -> int:
    print()
    print(
        f"== {point.streams} concurrent streams through one server process: {point.chunks} "
        f"chunks per stream, {point.interval * 1000:.0f} ms apart, {point.rounds} rounds, "
        f"route provider {provider} =="
    )
    titles = {
        "reckon": "Reckon",
        "baseline": f"Reckon at {baseline_sha} (baseline)",
        "pinned": "Reckon pinned (--pin-ab)",
        "bare": "bare pass-through",
        "floor": "floor (uvloop byte relay)",
    }
    medians: dict[str, dict[str, float]] = {}
    for name in targets:
        phases = point.phases[name]
        figures = {
            "CPU per chunk, whole round": ([p.cpu_round for p in phases], "µs", 1),
            "CPU per chunk, steady state": (
                [p.cpu_steady for p in phases if p.cpu_steady is not None],
                "µs",
                1,
            ),
            "RSS per open stream": (
                [p.rss_per_stream for p in phases if p.rss_per_stream is not None],
                "KiB",
                1,
            ),
            "added TTFB p50": ([p.added_p50 for p in phases], "ms", 2),
            "added TTFB p99": ([p.added_p99 for p in phases], "ms", 2),
        }
        print(f"{titles[name]}:")
        for label, (values, unit, digits) in figures.items():
            print(f"  {label:29}{spread(values, unit, digits)}")
            if values:
                medians.setdefault(name, {})[label] = statistics.median(values)
        print(
            f"  {'streams complete':29}{sum(p.complete for p in phases)} of "
            f"{point.streams * len(phases)}"
        )
    if "baseline" in medians and "reckon" in medians:
        changes = [
            f"{label} {(new - medians['baseline'][label]) / abs(medians['baseline'][label]):+.1%}"
            for label, new in medians["reckon"].items()
            if label in medians["baseline"] and medians["baseline"][label]
        ]
        print(f"Reckon vs baseline {baseline_sha} (change of medians): " + "; ".join(changes))
    if "pinned" in medians and "reckon" in medians:
        changes = [
            f"{label} {(new - medians['reckon'][label]) / abs(medians['reckon'][label]):+.1%}"
            for label, new in medians["pinned"].items()
            if label in medians["reckon"] and medians["reckon"][label]
        ]
        print("Reckon pinned vs unpinned (change of medians): " + "; ".join(changes))
    reckon = point.phases["reckon"]
    print(
        target_line(
            "Reckon CPU per chunk (whole round)", [p.cpu_round for p in reckon], "<=", 15, "µs", 1
        )
    )
    print(
        target_line(
            "Reckon RSS per open stream",
            [p.rss_per_stream for p in reckon if p.rss_per_stream is not None],
            "<=",
            16,
            "KiB",
            1,
        )
    )
    print(target_line("Reckon added TTFB p99", [p.added_p99 for p in reckon], "<", 5, "ms"))
    if point.mismatches:
        for mismatch in point.mismatches:
            print(f"MISMATCH: {mismatch}")
        return 1
    end = "message_stop" if provider == "anthropic" else "data: [DONE]"
    print(
        f"records: every stream through Reckon saw {end} and the ledger gained exactly "
        f"{point.streams} records a round, tokens equal to the upstream's"
    )
    return 0


if __name__ == "__main__":
    main()
