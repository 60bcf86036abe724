"""Where a call's time goes at c=1: timestamps per phase inside one Reckon server.

Starts a simulator and ONE Reckon server whose process wraps a few functions of the hot
path with timestamps (this script's own wrappers: production code has no probe in it),
drives it with wrk at c=1 for `--duration` seconds, and prints per phase the median, p90
and p99 over the calls:

    asgi in -> upstream sent -> upstream head -> upstream body -> record built and handed
    to the writer -> writer task picks the batch up -> statement sent -> statement returned
    -> writer wakes the caller -> response written -> asgi out

    .venv/bin/python bench/commit_probe.py [--duration 10] [--env NAME=VALUE ...]

With `--env` the server runs with extra settings (e.g. RECKON_LEDGER_CONNECTIONS=1), so two
runs of this script compare two shapes; the phases are for reading, the A/B of the
end-to-end figures belongs to bench/proxy_bench.py.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stats import add_database_url  # noqa: E402 - bench/ on the path

PHASES = (
    ("asgi_in", "upstream_sent"),
    ("upstream_sent", "upstream_head"),
    ("upstream_head", "upstream_body"),
    ("upstream_body", "write_in"),
    ("write_in", "batch_taken"),
    ("batch_taken", "stmt_sent"),
    ("stmt_sent", "stmt_back"),
    ("stmt_sent", "stmt_cpu_end"),
    ("stmt_sent", "stmt_runq_end"),
    ("stmt_back", "write_out"),
    ("write_out", "response_sent"),
    ("response_sent", "asgi_out"),
    ("asgi_in", "asgi_out"),
)


def serve_probed(port: int, out: str) -> None:
    """In the server's process: wrap the hot path's steps, then run `manage.py serve`."""
    import atexit

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.core.management import call_command

    import api.proxy.app as app_module
    import api.proxy.call as call_module
    import metering.ledger.postgres as postgres
    import metering.ledger.writer as writer
    import metering.proxy.upstream as upstream

    now = time.perf_counter_ns
    # one call at a time (c=1): the warm-up's concurrent calls share `current` and give
    # spans that mean nothing; they are dropped by their start time
    calls: list[dict[str, int]] = []
    current: dict[str, int] = {}

    def mark(name: str) -> None:
        current.setdefault(name, now())

    def around(owner, name, before, after):  # type: ignore[no-untyped-def]
        original = getattr(owner, name)

        async def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            if before:
                mark(before)
            result = await original(*args, **kwargs)
            if after:
                mark(after)
            return result

        setattr(owner, name, wrapped)

    original_call = app_module.ProxyApp.__call__

    async def asgi(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or not scope["path"].startswith("/v1/chat"):
            return await original_call(self, scope, receive, send)
        current.clear()
        current["asgi_in"] = now()
        await original_call(self, scope, receive, send)
        current["asgi_out"] = now()
        calls.append(dict(current))

    app_module.ProxyApp.__call__ = asgi
    around(upstream.UpstreamClient, "post", "upstream_sent", "upstream_head")
    around(upstream.UpstreamResponse, "read", None, "upstream_body")
    around(writer.LedgerWriter, "write", "write_in", "write_out")
    around(writer.LedgerWriter, "_commit", "batch_taken", None)
    around(call_module, "send_response", None, "response_sent")

    original_statement = postgres.pg_insert_statement

    def statement(*args, **kwargs):  # type: ignore[no-untyped-def]
        built = original_statement(*args, **kwargs)
        mark("stmt_sent")
        return built

    postgres.pg_insert_statement = statement
    around(postgres.PostgresLedgerSink, "write", None, "stmt_back")
    sink_write = postgres.PostgresLedgerSink.write

    def backend_cpu_ns(sink) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
        """The CPU so far, and the time spent runnable waiting for a CPU, of the backend of
        the connection the sink uses next."""
        if not sink._idle:
            return None
        with open(f"/proc/{sink._idle[-1][0].info.backend_pid}/schedstat") as stats:
            on_cpu, waiting, _ = stats.read().split()
        return int(on_cpu), int(waiting)

    async def measured_write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        before = backend_cpu_ns(self)
        await sink_write(self, *args, **kwargs)
        after = backend_cpu_ns(self)
        if before is not None and after is not None and "stmt_sent" in current:
            # a pseudo-timestamp: the statement's backend CPU, as a span from stmt_sent
            current["stmt_cpu_end"] = current["stmt_sent"] + (after[0] - before[0])
            current["stmt_runq_end"] = current["stmt_sent"] + (after[1] - before[1])

    postgres.PostgresLedgerSink.write = measured_write

    def dump() -> None:
        Path(out).write_text(json.dumps(calls))
        print(f"probe: {len(calls)} calls written to {out}", file=sys.stderr)

    atexit.register(dump)
    # uvicorn raises the SIGTERM it caught again after its shutdown, with the handler it
    # found installed: exit normally then, so that `dump` runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    call_command("serve", "--port", str(port), "--workers", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    add_database_url(parser)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_probed(int(args.serve[0]), args.serve[1])
        return

    from proxy_bench import (
        commit_latencies,
        django_env,
        ensure_wrk,
        free_port,
        percentile,
        seed,
        setup_database,
        stop_all,
        wait_up,
        wrk,
    )
    from stats import machine_banner

    print(machine_banner(), flush=True)
    binary = ensure_wrk()
    database_url = setup_database(args.database_url)
    sim_port, port = free_port(), free_port()
    env = django_env(database_url)
    key = seed(database_url, f"http://127.0.0.1:{sim_port}")
    extra = dict(item.split("=", 1) for item in args.env)
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen(
            [sys.executable, "bench/commit_probe.py", "--serve", str(port), out],
            cwd=ROOT,
            env={**env, **extra, "LOG_LEVEL": "WARNING"},
            stderr=open(out + ".log", "w"),  # noqa: SIM115 - read after the run
        ),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(f"http://127.0.0.1:{sim_port}/_sim/health")
        wait_up(url + "/v1/models")
        wrk(binary, url, key, "bench-reasoner", 4, 2)  # warm
        time.sleep(0.5)
        began = time.perf_counter_ns()  # CLOCK_MONOTONIC: the server's clock too
        result = wrk(binary, url, key, "bench-reasoner", 1, args.duration)
        commits = commit_latencies(database_url)
    finally:
        stop_all(procs)
    log = Path(out + ".log")
    try:
        calls = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        sys.exit(f"the probed server wrote no phases; its log ({log}):\n{log.read_text()[-2000:]}")
    os.unlink(out)
    calls = [c for c in calls if c["asgi_in"] > began]  # not the warm-up's
    if not calls:
        sys.exit(f"no calls probed (is the path filter right?); the server's log: {log}")
    log.unlink()
    print(
        f"wrk c=1: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.3f} ms,"
        f" p99 {result['p99_ms']:.3f} ms; {len(calls)} calls probed; server env {extra}"
    )
    print(
        "tiny durable commits right after (INSERT + COMMIT, ms): p50"
        f" {percentile(commits, 50):.3f}, p90 {percentile(commits, 90):.3f},"
        f" p99 {percentile(commits, 99):.3f}"
    )
    print(
        "stmt_sent -> stmt_cpu_end / stmt_runq_end: the ledger backend's CPU for the"
        " statement, and its time runnable but waiting for a CPU (/proc/<pid>/schedstat)"
    )
    print(f"{'phase (µs)':34}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}")
    for start, end in PHASES:
        spans = sorted((c[end] - c[start]) / 1000 for c in calls if start in c and end in c)
        if not spans:
            continue

        def pct(p: float, spans: list[float] = spans) -> float:
            return spans[min(len(spans) - 1, round(p / 100 * (len(spans) - 1)))]

        print(
            f"{start + ' -> ' + end:34}{pct(50):8.0f}{pct(90):8.0f}{pct(99):8.0f}"
            f"{statistics.mean(spans):8.0f}"
        )


if __name__ == "__main__":
    main()
