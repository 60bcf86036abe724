"""CPU per proxied call of one Reckon server process, by what the caller's tenant has on.

Throughput shares (bench/proxy_bench.py) move with everything else on the machine; the
Reckon process's own CPU time per call moves less. This runs one Reckon server and one
simulator, drives each of three tenants in turn with wrk at c=32 (interleaved rounds)
and prints the server's user+system CPU (from /proc) divided by the calls served:

- plain: a tenant without a plan (the record carries no price);
- priced: a tenant on a plan (each record priced at list price);
- controls: the priced tenant's plan plus a spend hold, two spend limits, two rate limits
  and reasoning governance on every call (bench/proxy_bench.py's +controls tenant);
- bare: the thinnest Python pass-through (bench/bare_passthrough.py, uvicorn + aiohttp, no
  auth, no metering) on the same simulator and the same load, measured the same way: the
  floor any Python proxy pays here, so the gap to it is in microseconds per call.

`--baseline REV` adds a second Reckon server, served from a temporary worktree of REV on
the same database, simulator and keys, and drives plain, priced and controls against it in
the same interleaved rounds; the change of medians (and of each round's pair) is printed.
That is the A/B to judge a change by on a shared machine.

Beside each Reckon row: the CPU per call of the PostgreSQL backends connected to the
bench database (the ledger writer's connections and the caller lookups'; read from
/proc/<pid>/stat of the pids pg_stat_activity names), the other half of a metered call's
machine cost on this box. Redis is left out: other processes share it.

    make bench-cpu        # or: .venv/bin/python bench/cpu_bench.py [--rounds 3 --lease-calls 32]
    .venv/bin/python bench/cpu_bench.py --rounds 5 --baseline main
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import proxy_bench as pb  # noqa: E402 - the same seeding and servers as the proxy bench
from stats import add_database_url, machine_banner, spread  # noqa: E402

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


def backend_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends connected to the bench database (not this query's own)."""
    rows = pb.psql_rows(
        database_url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )
    return [int(row[0]) for row in rows if row and row[0].isdigit()]


def backends_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of these backends so far, per pid (a backend already gone: absent)."""
    seen = {}
    for pid in pids:
        try:
            seen[pid] = cpu_seconds(pid)
        except (OSError, IndexError):
            pass
    return seen


def backends_cpu_since(database_url: str, before: dict[int, float]) -> float:
    """CPU seconds the bench database's backends spent since `before` was read: those
    listed then and those connected since (all of whose CPU is in the interval); a
    backend that left meanwhile counts nothing (its last figure is unknown)."""
    now = backends_cpu(sorted(set(before) | set(backend_pids(database_url))))
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())


KINDS = ("plain", "priced", "controls")  # the Reckon tenants, each driven in turn


class Run(NamedTuple):
    us: float  # server CPU microseconds per call
    rps: float
    pg_us: float  # PostgreSQL backends' CPU microseconds per call


def drive(
    binary: str,
    url: str,
    key: str,
    seconds: int,
    server: int,
    database_url: str,
    model: str = "bench-reasoner",
) -> Run:
    """CPU microseconds of the server (and of the bench database's backends) per call,
    and calls per second, over one wrk run."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        'wrk.method = "POST"\n'
        f"wrk.body = '{pb.BODY % model}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    script.close()
    before, pg_before = cpu_seconds(server), backends_cpu(backend_pids(database_url))
    out = subprocess.run(
        [binary, "-t1", "-c32", f"-d{seconds}s", "-s", script.name, url + "/v1/chat/completions"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    after, pg = cpu_seconds(server), backends_cpu_since(database_url, pg_before)
    os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit("wrk saw errors:\n" + out)
    calls = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Run((after - before) / calls * 1e6, rps, pg / calls * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--lease-calls", type=int, default=32)
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure Reckon at REV (a temporary worktree) in the same rounds",
    )
    add_database_url(parser)
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
    ports = {name: pb.free_port() for name in ("sim", "reckon", "bare", "baseline")}
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
    reckon_env = {**env, "RECKON_CONTROL_LEASE_CALLS": str(args.lease_calls)}
    # REV's tree first: a revision that cannot be checked out stops the run before any
    # server starts
    scratch = tempfile.TemporaryDirectory(prefix="cpu-bench-")
    tree, baseline_sha = None, ""
    if args.baseline:
        tree, baseline_sha = pb.baseline_tree(args.baseline, Path(scratch.name))
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_simulator", "--port", str(ports["sim"])],
            cwd=ROOT,
            env=env,
        ),
        pb.serve(ports["reckon"], 1, reckon_env),
        pb.bare_passthrough(ports["bare"], env, sim_url),
    ]
    bare_url = f"http://127.0.0.1:{ports['bare']}"
    # name -> (base url, key, model, server pid)
    targets = {name: (url, key, "bench-reasoner", procs[1].pid) for name, key in keys.items()}
    targets["bare"] = (bare_url, keys["plain"], "sim-reasoner", procs[2].pid)
    if tree is not None:  # the same kinds against REV's server, in the same rounds
        procs.append(pb.serve(ports["baseline"], 1, reckon_env, tree))
        base_url = f"http://127.0.0.1:{ports['baseline']}"
        ours = targets
        targets = {}
        for name in KINDS:  # each kind beside its baseline, seconds apart
            targets[name] = ours[name]
            targets[f"{name}@base"] = (base_url, keys[name], "bench-reasoner", procs[3].pid)
        targets["bare"] = ours["bare"]
    results: dict[str, list[Run]] = {name: [] for name in targets}
    try:
        pb.wait_up(sim_url + "/_sim/health")
        pb.wait_up(url + "/v1/models")
        pb.wait_up(bare_url + "/")
        if tree is not None:
            pb.wait_up(f"http://127.0.0.1:{ports['baseline']}/v1/models")
        for base, key, model, pid in targets.values():  # warm caches, pools and slices
            drive(binary, base, key, 2, pid, database_url, model)
        for _ in range(args.rounds):
            for name, (base, key, model, pid) in targets.items():
                results[name].append(
                    drive(binary, base, key, args.duration, pid, database_url, model)
                )
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        if tree is not None:
            pb.remove_tree(tree)
        scratch.cleanup()
    print()
    print(banner)
    print(
        f"Reckon server CPU per call at c=32 (one process, leases {args.lease_calls}), "
        f"{args.rounds} interleaved rounds x {args.duration}s; median (min, max) over rounds:"
    )
    for name in [*KINDS, "bare"] + [f"{kind}@base" for kind in KINDS if tree is not None]:
        runs = results[name]
        pg = (
            ""
            if name == "bare"
            else f"; PostgreSQL backends {spread([r.pg_us for r in runs], 'us/call', 1)}"
        )
        print(
            f"  {name:14} median {statistics.median(r.us for r in runs):6.1f} us/call   "
            f"({spread([r.us for r in runs], 'us', 1)}; "
            f"calls/s {spread([r.rps for r in runs], '', 0)}{pg})"
        )

    # per round: the kinds of one round ran seconds apart, so drift between rounds cancels
    def per_round(name: str, base: str) -> list[float]:
        return [a.us - b.us for a, b in zip(results[name], results[base], strict=True)]

    print(f"  controls add {spread(per_round('controls', 'priced'), 'us/call', 1)} over priced")
    for name in KINDS:
        print(f"  {name} over bare: {spread(per_round(name, 'bare'), 'us/call', 1)} (per round)")
    if tree is None:
        return
    print(f"Reckon vs baseline {baseline_sha}, server CPU per call (change of medians; per round):")
    for name in KINDS:
        new = statistics.median(r.us for r in results[name])
        old = statistics.median(r.us for r in results[f"{name}@base"])
        rounds = per_round(name, f"{name}@base")
        lower = sum(1 for d in rounds if d < 0)
        print(
            f"  {name:9} {old:6.1f} -> {new:6.1f} us/call ({(new - old) / old:+.1%}); "
            f"per round {spread(rounds, 'us/call', 1)}, lower in {lower} of {len(rounds)}"
        )


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
