"""CPU per proxied call of one Reckon server process, by what the caller's tenant has on.

Throughput shares (bench/proxy_bench.py) move with everything else on the machine; the
Reckon process's own CPU time per call moves less. This runs one Reckon server and one
simulator, drives each of three tenants in turn with wrk at c=32 (interleaved rounds)
and prints the server's user+system CPU (from /proc) divided by the calls served:

- plain: a tenant without a plan (the record carries no price);
- priced: a tenant on a plan (each record priced at list price);
- controls: the priced tenant's plan plus a spend hold, two spend limits, two rate limits
  and reasoning governance on every call (bench/proxy_bench.py's +controls tenant).

    make bench-cpu        # or: .venv/bin/python bench/cpu_bench.py [--rounds 3 --lease-calls 32]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import proxy_bench as pb  # noqa: E402 - the same seeding and servers as the proxy bench
from stats import machine_banner, spread  # noqa: E402

BENCH_DB = os.environ.get("RECKON_BENCH_DB", "reckon_cpu_bench")  # dropped first

PRICED = """
from datetime import UTC, datetime
from billing.models import PlanVersion
from billing.plans import subscription_create
from metering.services import api_key_create, tenant_allow_routes, tenant_create
tenant = tenant_create(name="bench-priced")
tenant_allow_routes(tenant=tenant, aliases=["bench-reasoner"])
version = PlanVersion.objects.get(plan__code="bench")
subscription_create(tenant=tenant, plan_version=version, starts_at=datetime(2026, 1, 1, tzinfo=UTC))
print(api_key_create(tenant=tenant).raw_key)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(binary: str, url: str, key: str, seconds: int, server: int) -> tuple[float, float]:
    """CPU microseconds of the server per call, and calls per second, over one wrk run."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        'wrk.method = "POST"\n'
        f"wrk.body = '{pb.BODY % 'bench-reasoner'}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    script.close()
    before = cpu_seconds(server)
    out = subprocess.run(
        [binary, "-t1", "-c32", f"-d{seconds}s", "-s", script.name, url + "/v1/chat/completions"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    after = cpu_seconds(server)
    os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit("wrk saw errors:\n" + out)
    calls = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return (after - before) / calls * 1e6, rps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--lease-calls", type=int, default=32)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    banner = machine_banner()  # how busy the machine was when the run began
    print(banner, flush=True)
    binary = pb.ensure_wrk()
    base = args.database_url.rsplit("/", 1)[0]
    admin = base + "/postgres"
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {BENCH_DB}"], check=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {BENCH_DB}"], check=True)
    database_url = f"{base}/{BENCH_DB}"
    env = pb.django_env(database_url)
    ports = {"sim": pb.free_port(), "reckon": pb.free_port()}
    sim_url = f"http://127.0.0.1:{ports['sim']}"
    url = f"http://127.0.0.1:{ports['reckon']}"
    keys = {"plain": pb.seed(database_url, sim_url), "controls": pb.seed_controlled(database_url)}
    keys["priced"] = (
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", PRICED],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_simulator", "--port", str(ports["sim"])],
            cwd=ROOT,
            env=env,
        ),
        pb.serve(ports["reckon"], 1, {**env, "RECKON_CONTROL_LEASE_CALLS": str(args.lease_calls)}),
    ]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in keys}
    try:
        pb.wait_up(sim_url + "/_sim/health")
        pb.wait_up(url + "/v1/models")
        for key in keys.values():  # warm caches, pools and slices
            drive(binary, url, key, 2, procs[1].pid)
        for _ in range(args.rounds):
            for name, key in keys.items():
                results[name].append(drive(binary, url, key, args.duration, procs[1].pid))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    print()
    print(banner)
    print(
        f"Reckon server CPU per call at c=32 (one process, leases {args.lease_calls}), "
        f"{args.rounds} interleaved rounds x {args.duration}s; median (min, max) over rounds:"
    )
    medians = {}
    for name in ("plain", "priced", "controls"):
        runs = results[name]
        medians[name] = statistics.median(u for u, _ in runs)
        print(
            f"  {name:9} median {medians[name]:6.1f} us/call   "
            f"({spread([u for u, _ in runs], 'us', 1)}; "
            f"calls/s {spread([r for _, r in runs], '', 0)})"
        )
    # per round: the kinds of one round ran seconds apart, so drift between rounds cancels
    extra = [c - p for (c, _), (p, _) in zip(results["controls"], results["priced"], strict=True)]
    print(f"  controls add {spread(extra, 'us/call', 1)} over priced (per round)")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
