"""Throughput with 1 and 2 server processes (`serve --workers N`), in one interleaved run.

    make bench-workers    # or: .venv/bin/python bench/workers_bench.py [--duration 5 --rounds 3]

Three Reckon servers run side by side on one simulator and one PostgreSQL database:
1 worker, 2 workers (each on its own SO_REUSEPORT socket, the default) and 2 workers on
uvicorn's one shared socket (`--listen shared`). Every round runs wrk at c=32 with
non-streaming calls against each of them, plain and with every control on (spend holds,
two spend limits, two rate limits, reasoning governance; leases at their default), the
servers in a different order each round. It prints req/s and the servers' CPU per call
(utime + stime of all their processes, from /proc) as median (min, max), the 2w/1w ratio
per round, how wrk's connections were spread over the workers, and checks the ledger
against what the simulator served.

On a machine with few cores, wrk, the simulator and PostgreSQL take CPU from the same
cores as the workers: 2 workers cannot double 1 there. CPU per call shows what a second
process costs or saves independent of how busy the machine was. A process's CPU per
call falls as more calls are in flight in it (its event loop, group commit and Redis
pipeline batch more), so two workers sharing c connections each pay about the cost of
one process at c/2: `--connections 16` shows 1 worker's figure there.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RECKON_BENCH_DB", "reckon_bench_workers")

from proxy_bench import (  # noqa: E402 - the path above
    django_env,
    ensure_wrk,
    free_port,
    get_json,
    ledger_totals,
    seed,
    seed_controlled,
    setup_database,
    wrk,
)
from stats import add_database_url, machine_banner, spread  # noqa: E402

SERVERS = (("1w", 1, "reuseport"), ("2w", 2, "reuseport"), ("2w-shared", 2, "shared"))
TICKS = os.sysconf("SC_CLK_TCK")


def wait_up(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Wait for `url` to answer (a loaded machine starts a Django process slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not come up in {timeout:.0f}s")


def serve(port: int, workers: int, listen: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--listen",
            listen,
        ],
        cwd=ROOT,
        env={**env, "LOG_LEVEL": "WARNING"},
        stderr=subprocess.DEVNULL,
    )


def server_pids(parent: int) -> list[int]:
    """The server's processes: the parent and the workers it spawned."""
    pids = [parent]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def connections_per_process(port: int, pids: list[int]) -> list[int]:
    """Established connections to `port` held by each process in `pids` (sorted, largest
    first; processes holding none left out)."""
    owners: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = pid
        except OSError:
            continue
    counts: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                pid = owners.get(fields[9])
                if pid is not None:
                    counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def measured(
    binary: str, url: str, key: str, duration: int, port: int, parent: int, connections: int
) -> tuple[float, float, int, list[int]]:
    """(req/s, server CPU us per call, requests, connections per worker mid-run)."""
    pids = server_pids(parent)
    spread_seen: list[int] = []

    def sample() -> None:
        time.sleep(duration / 2)
        spread_seen.extend(connections_per_process(port, pids))

    sampler = threading.Thread(target=sample)
    before = cpu_seconds(pids)
    sampler.start()
    result = wrk(binary, url, key, "bench-reasoner", connections, duration)
    cpu = cpu_seconds(pids) - before
    sampler.join()
    return result["rps"], cpu * 1e6 / result["requests"], int(result["requests"]), spread_seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    add_database_url(parser)
    args = parser.parse_args()
    print(machine_banner(), flush=True)
    binary = ensure_wrk()
    database_url = setup_database(args.database_url)
    env = django_env(database_url)
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    keys = {"plain": seed(database_url, sim_url), "+controls": seed_controlled(database_url)}
    ports = {name: free_port() for name, _, _ in SERVERS}
    simulator = subprocess.Popen(
        [sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)],
        cwd=ROOT,
        env=env,
    )
    procs = [simulator]
    servers: dict[str, subprocess.Popen] = {}
    # (server, mode) -> per round: req/s, CPU us per call; connections seen mid-run
    rps: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    seen: dict[str, list[list[int]]] = {name: [] for name, _, _ in SERVERS}
    try:
        wait_up(sim_url + "/_sim/health", simulator)
        for name, workers, listen in SERVERS:  # one at a time: a loaded machine starts slowly
            servers[name] = serve(ports[name], workers, listen, env)
            procs.append(servers[name])
            wait_up(f"http://127.0.0.1:{ports[name]}/v1/models", servers[name])
            deadline = time.monotonic() + 60
            while workers > 1 and len(server_pids(servers[name].pid)) <= workers:
                if time.monotonic() > deadline:
                    sys.exit(f"{name}: the workers did not start")
                time.sleep(0.2)
        time.sleep(3)  # every worker has finished its start-up
        for name, _, _ in SERVERS:  # warm pools, caches, connections
            for key in keys.values():
                wrk(binary, f"http://127.0.0.1:{ports[name]}", key, "bench-reasoner", 32, 2)
        time.sleep(0.5)
        urllib.request.urlopen(urllib.request.Request(sim_url + "/_sim/reset", method="POST"))
        baseline = ledger_totals(database_url)
        for round_no in range(args.rounds):
            order = SERVERS[round_no % len(SERVERS) :] + SERVERS[: round_no % len(SERVERS)]
            for name, _, _ in order:
                for mode, key in keys.items():
                    rate, per_call, _, connections = measured(
                        binary,
                        f"http://127.0.0.1:{ports[name]}",
                        key,
                        args.duration,
                        ports[name],
                        servers[name].pid,
                        args.connections,
                    )
                    rps.setdefault((name, mode), []).append(rate)
                    cpu.setdefault((name, mode), []).append(per_call)
                    seen[name].append(connections)
                    print(
                        f"round {round_no + 1} {name:10} {mode:10} {rate:8.0f} req/s "
                        f"{per_call:6.0f} us CPU/call  connections per worker {connections}",
                        flush=True,
                    )
        time.sleep(1)
        served = get_json(sim_url + "/_sim/totals")
        after = ledger_totals(database_url)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)

    print()
    print(
        f"Workers benchmark: wrk -t1 -c{args.connections} non-streaming chat completions, {args.rounds} "
        f"interleaved rounds x {args.duration}s, simulator at zero delay; median (min, max)."
    )
    print(
        f"This machine has {os.cpu_count()} cores shared by wrk, the simulator, PostgreSQL, "
        "Redis and the servers (nothing pinned): 2 workers cannot double 1 here."
    )
    for mode in keys:
        print(f"\n{mode}:")
        for name, _, _ in SERVERS:
            print(f"  {name:10} req/s {spread(rps[(name, mode)], digits=0)}")
            print(f"  {'':10} server CPU per call {spread(cpu[(name, mode)], 'us', 0)}")
        for name in ("2w", "2w-shared"):
            ratios = [
                two / one for two, one in zip(rps[(name, mode)], rps[("1w", mode)], strict=True)
            ]
            print(
                f"  {name}/1w req/s per round: {', '.join(f'{r:.2f}' for r in ratios)}"
                f" -> {spread(ratios)}"
            )
    print(f"\nconnections per worker, sampled mid-run (wrk opens all {args.connections} at once):")
    for name, _, _ in SERVERS[1:]:
        print(f"  {name:10} {seen[name]}")
    rows, reasoning = after[0] - baseline[0], after[1] - baseline[1]
    print(
        f"\nledger: {rows} usage records, {reasoning} reasoning tokens; the upstream served "
        f"{served['requests']} requests, {served['reasoning_tokens']} reasoning tokens."
    )
    if (rows, reasoning) != (served["requests"], served["reasoning_tokens"]):
        sys.exit("MISMATCH between the ledger and the upstream: a record was lost or counted twice")
    print("ledger == upstream: every request served through Reckon has exactly one record.")


if __name__ == "__main__":
    main()
