"""Proxy overhead benchmark: the simulator directly vs. through Reckon, in one run.

Prints requests/s at concurrency 32 and latency percentiles at concurrency 1, for
(a) the simulator directly and (b) Reckon with durable metering on PostgreSQL, plus the
ratios the targets are stated in. Uses `wrk` (Debian package; installed if missing).

    make bench            # or: .venv/bin/python bench/proxy_bench.py [--duration 10]

Every request through Reckon must leave exactly one usage record: the run checks the
ledger against what the simulator served and fails loudly if they differ.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DB = "reckon_bench"
SIM_KEY_ENV = "RECKON_SIMULATOR_API_KEY"
BODY = (
    '{"model":"%s","messages":[{"role":"user","content":"Why is the sky blue?"}],'
    '"reasoning_effort":"low"}'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("installing wrk (Debian package)...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("wrk is required")


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def setup_database(base_url: str) -> str:
    admin = base_url.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {BENCH_DB}"], check=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {BENCH_DB}"], check=True)
    return base_url.rsplit("/", 1)[0] + "/" + BENCH_DB


def django_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, SIM_KEY_ENV: "bench-key"}


def seed(database_url: str, sim_url: str) -> str:
    env = django_env(database_url)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [
            *manage,
            "route_set",
            "bench-reasoner",
            "--provider",
            "openai",
            "--base-url",
            sim_url + "/v1",
            "--upstream-model",
            "sim-reasoner",
            "--api-key-env",
            SIM_KEY_ENV,
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*manage, "tenant_create", "bench", "--allow", "bench-reasoner"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [*manage, "apikey_create", "bench"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def wrk(
    binary: str, url: str, key: str, model: str, connections: int, duration: int
) -> dict[str, float]:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY % model}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    script.close()
    out = subprocess.run(
        [
            binary,
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            script.name,
            url + "/v1/chat/completions",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit("wrk saw errors:\n" + out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": to_ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": to_ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
    }


def to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def ledger_totals(database_url: str) -> tuple[int, int]:
    out = subprocess.run(
        [
            "psql",
            database_url,
            "-tAc",
            "select count(*), coalesce(sum(reasoning_tokens),0) from metering_usagerecord",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows, reasoning = out.split("|")
    return int(rows), int(reasoning)


def get_json(url: str) -> dict:
    import json

    return json.loads(urllib.request.urlopen(url).read())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=1, help="Reckon server processes")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    binary = ensure_wrk()
    database_url = setup_database(args.database_url)
    sim_port, reckon_port = free_port(), free_port()
    sim_url, reckon_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{reckon_port}"
    env = django_env(database_url)
    key = seed(database_url, sim_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "serve",
                "--port",
                str(reckon_port),
                "--workers",
                str(args.workers),
            ],
            cwd=ROOT,
            env={**env, "LOG_LEVEL": "WARNING"},
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_up(sim_url + "/_sim/health")
        wait_up(reckon_url + "/v1/models")
        time.sleep(1)
        # warm both paths (connection pools, key cache, DB connections)
        wrk(binary, sim_url, key, "sim-reasoner", 8, 2)
        wrk(binary, reckon_url, key, "bench-reasoner", 8, 2)
        results = {}
        for name, url, model in (
            ("direct", sim_url, "sim-reasoner"),
            ("reckon", reckon_url, "bench-reasoner"),
        ):
            if (
                name == "reckon"
            ):  # from here on, everything the simulator serves came through Reckon
                time.sleep(0.5)
                urllib.request.urlopen(
                    urllib.request.Request(sim_url + "/_sim/reset", method="POST")
                )
                baseline = ledger_totals(database_url)
            results[name] = {
                "c32": wrk(binary, url, key, model, 32, args.duration),
                "c1": wrk(binary, url, key, model, 1, args.duration),
            }
        time.sleep(1)
        served = get_json(sim_url + "/_sim/totals")
        after = ledger_totals(database_url)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)

    d, r = results["direct"], results["reckon"]
    ratio = r["c32"]["rps"] / d["c32"]["rps"]
    added_p50 = r["c1"]["p50_ms"] - d["c1"]["p50_ms"]
    added_p99 = r["c1"]["p99_ms"] - d["c1"]["p99_ms"]
    rows, reasoning = after[0] - baseline[0], after[1] - baseline[1]
    print()
    print(
        f"Proxy benchmark: non-streaming chat completions, simulator at zero delay, wrk -t1, {args.duration}s per run,"
    )
    print(
        f"Reckon with {args.workers} worker process(es), durable metering on PostgreSQL, {os.cpu_count()} cores."
    )
    print(f"{'':24}{'direct':>12}{'via Reckon':>14}{'ratio/added':>14}")
    print(f"{'req/s at c=32':24}{d['c32']['rps']:>12.0f}{r['c32']['rps']:>14.0f}{ratio:>13.1%} ")
    print(
        f"{'p50 latency at c=1 (ms)':24}{d['c1']['p50_ms']:>12.3f}{r['c1']['p50_ms']:>14.3f}{added_p50:>+13.3f} "
    )
    print(
        f"{'p99 latency at c=1 (ms)':24}{d['c1']['p99_ms']:>12.3f}{r['c1']['p99_ms']:>14.3f}{added_p99:>+13.3f} "
    )
    print(f"{'req/s at c=1':24}{d['c1']['rps']:>12.0f}{r['c1']['rps']:>14.0f}")
    print(
        f"targets: throughput >= 35% of direct -> {'MET' if ratio >= 0.35 else 'MISSED'}; "
        f"added p50 <= 1.5 ms -> {'MET' if added_p50 <= 1.5 else 'MISSED'}"
    )
    print(
        f"ledger during the Reckon runs: {rows} usage records, {reasoning} reasoning tokens; "
        f"simulator served {served['requests']} requests, {served['reasoning_tokens']} reasoning tokens."
    )
    if (rows, reasoning) != (served["requests"], served["reasoning_tokens"]):
        sys.exit("MISMATCH between the ledger and the upstream: a record was lost or counted twice")
    print("ledger == upstream: every request served through Reckon has exactly one record.")


if __name__ == "__main__":
    main()
