"""The ledger's group-commit shape, A/B in one run: Reckon servers that differ only in
their ledger settings, against the bare pass-through, in interleaved rounds.

    .venv/bin/python bench/commit_shape_bench.py [--rounds 5] [--duration 5]
        [--variant 'label:NAME=VALUE,NAME=VALUE' ...] [--c1]

Each variant is one `manage.py serve` process (one worker) with its environment extended
by the variant's settings (the default variant, `main`, adds nothing). One simulator
serves every Reckon server (the ledger is checked against what it served), another one
the bare pass-through. Each round runs wrk at c=32 on the bare pass-through and on every
variant, in an order rotated round by round; per variant it prints req/s, the share of
the same round's bare req/s, the server's CPU per call and the CPU per call of the bench
database's PostgreSQL backends (bench/cpu_bench.py), each as median (min, max) over the
rounds, and each variant's per-round ratio to the first variant. With `--c1` every round
also measures latency at c=1 (p50, p99) on every variant.
"""

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cpu_bench  # noqa: E402 - bench/ on the path
import proxy_bench as pb  # noqa: E402
from stats import add_database_url, machine_banner  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, settings = text.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return label, env


def spread(values: list[float], digits: int = 0) -> str:
    return (
        f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-"
        f"{max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--variant", action="append", default=[], help="label:NAME=VALUE,...")
    parser.add_argument("--c1", action="store_true", help="also latency at c=1 per variant")
    add_database_url(parser)
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["main:"])]
    print(machine_banner(), flush=True)
    binary = pb.ensure_wrk()
    database_url = pb.setup_database(args.database_url)
    ports = {name: pb.free_port() for name in ("sim", "sim_reckon", "bare")}
    ports |= {label: pb.free_port() for label, _ in variants}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = pb.django_env(database_url)
    key = pb.seed(database_url, url["sim_reckon"])
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_simulator", "--port", str(ports[name])],
            cwd=ROOT,
            env=env,
        )
        for name in ("sim", "sim_reckon")
    ]
    procs.append(pb.bare_passthrough(ports["bare"], env, url["sim"]))
    servers = {label: pb.serve(ports[label], 1, {**env, **extra}) for label, extra in variants}
    procs += servers.values()
    names = ["bare", *(label for label, _ in variants)]
    c32: dict[str, list[cpu_bench.Run]] = {name: [] for name in names}
    c1: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
    try:
        for name in ("sim", "sim_reckon"):
            pb.wait_up(url[name] + "/_sim/health")
        pb.wait_up(url["bare"] + "/")
        for label, _ in variants:
            pb.wait_up(url[label] + "/v1/models")
        for name in names:  # warm pools, caches, connections
            pb.wrk(
                binary, url[name], key, "sim-reasoner" if name == "bare" else "bench-reasoner", 8, 2
            )
        time.sleep(0.5)
        urllib.request.urlopen(
            urllib.request.Request(url["sim_reckon"] + "/_sim/reset", method="POST")
        )
        baseline, _ = pb.ledger_totals(database_url)
        for number in range(args.rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            for name in order:
                pid = procs[2].pid if name == "bare" else servers[name].pid
                model = "sim-reasoner" if name == "bare" else "bench-reasoner"
                c32[name].append(
                    cpu_bench.drive(binary, url[name], key, args.duration, pid, database_url, model)
                )
            if args.c1:
                for name in (n for n in order if n != "bare"):
                    c1[name].append(
                        pb.wrk(binary, url[name], key, "bench-reasoner", 1, args.duration)
                    )
            print(
                f"round {number + 1}: " + ", ".join(f"{n} {c32[n][-1].rps:.0f}" for n in names),
                flush=True,
            )
        time.sleep(1)
        served = pb.get_json(url["sim_reckon"] + "/_sim/totals")
        after, _ = pb.ledger_totals(database_url)
    finally:
        pb.stop_all(procs)
    print(f"\nc=32, {args.rounds} rounds of {args.duration} s: median (min-max)")
    print(f"{'':14}{'req/s':>22}{'share of bare':>22}{'server µs/call':>22}{'PG µs/call':>22}")
    bare = [r.rps for r in c32["bare"]]
    first = variants[0][0]
    for name in names:
        runs = c32[name]
        share = [r.rps / b for r, b in zip(runs, bare, strict=True)]
        print(
            f"{name:14}{spread([r.rps for r in runs]):>22}{spread(share, 3):>22}"
            f"{spread([r.us for r in runs], 1):>22}"
            + (f"{spread([r.pg_us for r in runs], 1):>22}" if name != "bare" else "")
        )
    for label, _ in variants[1:]:
        ratio = [r.rps / f.rps for r, f in zip(c32[label], c32[first], strict=True)]
        pg = [r.pg_us / f.pg_us for r, f in zip(c32[label], c32[first], strict=True)]
        wins = sum(x > 1 for x in ratio)
        print(
            f"{label} / {first}: req/s {spread(ratio, 3)}, higher in {wins} of {len(ratio)};"
            f" PG µs/call {spread(pg, 3)}"
        )
    if args.c1:
        print("\nc=1 latency, ms: p50 and p99, median (min-max)")
        for label, _ in variants:
            print(
                f"{label:14} p50 {spread([r['p50_ms'] for r in c1[label]], 3)}"
                f"  p99 {spread([r['p99_ms'] for r in c1[label]], 3)}"
            )
    records = after - baseline
    print(f"\nledger: {records} records, simulator served {served.get('requests')}")
    if records != served.get("requests"):
        sys.exit("the ledger does not match what the simulator served")


if __name__ == "__main__":
    main()
