"""Proxy overhead benchmark: the simulator directly vs. through Reckon, in one run.

Prints requests/s at concurrency 32 and latency percentiles at concurrency 1, for
(a) the simulator directly, (b) Reckon with durable metering on PostgreSQL, and for scale
(c) the thinnest possible Python pass-through (bench/bare_passthrough.py), plus the
ratios the targets are stated in. Uses `wrk` (Debian package; installed if missing).

    make bench            # or: .venv/bin/python bench/proxy_bench.py [--duration 5 --rounds 3]

Every figure is the median over the interleaved rounds with its min and max; the targets
are judged on the median of per-round ratios to the bare pass-through of the same round
(bench/stats.py), so the machine's drift between rounds cancels out. The run also times
tiny durable commits (INSERT + COMMIT) on the same PostgreSQL, to show how much of the
latency tail is the commit that "nothing lost" requires.

Every request through Reckon must leave exactly one usage record: the run checks the
ledger against what the simulators served and fails loudly if they differ.

The "routed" column calls an alias with three weighted targets on three more simulators
(decision 0117) through the same Reckon server as the single-target "Reckon" column.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stats import add_database_url, machine_banner, spread, target_line  # noqa: E402 - bench/ on the path

BENCH_DB = os.environ.get("RECKON_BENCH_DB", "reckon_bench")  # its own database, dropped first
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


def wait_up(url: str, timeout: float = 120) -> None:  # a loaded machine starts slowly
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
    # RECKON_BENCH_TEMPLATE (tests only, unset by default): an already-migrated database on
    # the same server to copy, so the `migrate` in seed() has nothing left to do
    template = os.environ.get("RECKON_BENCH_TEMPLATE")
    create = f"CREATE DATABASE {BENCH_DB}" + (f" TEMPLATE {template}" if template else "")
    subprocess.run(["psql", admin, "-qc", create], check=True)
    return base_url.rsplit("/", 1)[0] + "/" + BENCH_DB


def django_env(database_url: str) -> dict[str, str]:
    # a local benchmark on loopback: development mode (serve refuses to guess the mode)
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        SIM_KEY_ENV: "bench-key",
        "RECKON_ENV": "development",
    }


# migrate, the route, the tenant and its key: the same management commands as the CLI's, in
# one Django boot instead of four (a boot is seconds on a loaded machine)
SEED = """
import io
from django.core.management import call_command

def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()

call_command("migrate", verbosity=0)
run("route_set", "bench-reasoner", "--provider", "openai", "--base-url", {base_url!r},
    "--upstream-model", "sim-reasoner", "--api-key-env", {key_env!r})
run("tenant_create", "bench", "--allow", "bench-reasoner")
print(run("apikey_create", "bench"))
"""


def seed(database_url: str, sim_url: str) -> str:
    code = SEED.format(base_url=sim_url + "/v1", key_env=SIM_KEY_ENV)
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
        cwd=ROOT,
        env=django_env(database_url),
        check=True,
        stdout=subprocess.PIPE,  # the key; errors go to stderr, as the migrate's did
        text=True,
    )
    return out.stdout.strip()


CONTROLLED = """
from datetime import UTC, datetime
from decimal import Decimal
from billing.plans import plan_create, plan_version_create, plan_version_publish, subscription_create
from metering.models import RateLimit, ReasoningPolicy, SpendLimit, Route
from metering.services import api_key_create, tenant_allow_routes, tenant_create
t0 = datetime(2026, 1, 1, tzinfo=UTC)
tenant = tenant_create(name="bench-controlled")
tenant_allow_routes(tenant=tenant, aliases=["bench-reasoner"])
version = plan_version_publish(version=plan_version_create(plan=plan_create(code="bench", name="Bench"),
    currency="USD", effective_from=t0, components=[
        {"token_class": "input", "charge_model": "per_unit", "unit_price": Decimal("1.10")},
        {"token_class": "output", "charge_model": "per_unit", "unit_price": Decimal("4.40")}]))
subscription_create(tenant=tenant, plan_version=version, starts_at=t0)
created = api_key_create(tenant=tenant)
# limits far above what the run spends: every call pays for admission and settlement
SpendLimit.objects.create(tenant=tenant, window="month", amount_usd=Decimal("1000000"))
SpendLimit.objects.create(tenant=tenant, api_key=created.api_key, window="total", amount_usd=Decimal("1000000"))
RateLimit.objects.create(tenant=tenant, requests_per_minute=2_000_000_000, tokens_per_minute=2_000_000_000)
RateLimit.objects.create(tenant=tenant, api_key=created.api_key, requests_per_minute=2_000_000_000)
ReasoningPolicy.objects.create(api_key=created.api_key, max_output_tokens=100000)
print(created.raw_key)
"""


ROUTED_TARGETS = (("t0", 50), ("t1", 30), ("t2", 20))  # name, weight
ROUTED = """
from metering.models import Alias, Route, Tenant
alias = Alias.objects.create(name="bench-routed", policy="weighted", max_attempts=2)
for (name, weight), base_url in zip(%r, %r):
    Route.objects.create(alias=alias, name=name, weight=weight, provider="openai",
        base_url=base_url, upstream_model="sim-reasoner", api_key_env=%r)
alias.tenants.add(Tenant.objects.get(name="bench"))
"""


def seed_routed(database_url: str, sim_urls: list[str]) -> None:
    """An alias with three weighted targets, one per simulator, granted to the bench
    tenant (the "routed" column)."""
    code = ROUTED % (ROUTED_TARGETS, [u + "/v1" for u in sim_urls], SIM_KEY_ENV)
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=django_env(database_url),
        check=True,
        capture_output=True,
        text=True,
    )


def seed_controlled(database_url: str) -> str:
    """A second tenant whose calls go through spend holds, rate limits and governance."""
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", CONTROLLED],
        cwd=ROOT,
        env=django_env(database_url),
        check=True,
        stdout=subprocess.PIPE,  # the key; errors go to stderr, as the migrate's did
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def stop_all(procs: "list[subprocess.Popen]", timeout: float = 30) -> None:
    """Stop these processes: all asked to terminate first, then each waited for (killed
    past `timeout`), so one that hangs does not leave the others running."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bare_passthrough(
    port: int, env: dict[str, str], upstream: str, python: list[str] | None = None, *extra: str
) -> subprocess.Popen:
    """The thinnest Python pass-through (bench/bare_passthrough.py) on uvicorn with uvloop
    and httptools, as Reckon's server runs, relaying to `upstream`."""
    return subprocess.Popen(
        [
            *(python or [sys.executable]),
            "-m",
            "uvicorn",
            "bench.bare_passthrough:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
        env={**env, "RECKON_BARE_UPSTREAM": upstream},
    )


def baseline_tree(rev: str, scratch: Path) -> tuple[Path, str]:
    """A temporary detached worktree of `rev` (removed by `remove_tree`), and its short sha."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = scratch / f"baseline-{sha}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), sha],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return tree, sha


def remove_tree(tree: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def serve(
    port: int, workers: int, env: dict[str, str], tree: Path | None = None
) -> subprocess.Popen:
    """Reckon's production server (`manage.py serve`) on `port`: this checkout's, or the
    one in `tree` (a `baseline_tree`)."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=tree or ROOT,
        env={**env, "LOG_LEVEL": "WARNING"},
        stderr=subprocess.DEVNULL,
    )


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


def psql_rows(database_url: str, sql: str) -> list[list[str]]:
    """The rows of one query, read with psql (the benchmarks' own processes never open
    the database): each row a list of its columns as text."""
    out = subprocess.run(
        ["psql", database_url, "-tAc", sql], check=True, capture_output=True, text=True
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def ledger_totals(database_url: str) -> tuple[int, int]:
    ((rows, reasoning),) = psql_rows(
        database_url, "select count(*), coalesce(sum(reasoning_tokens),0) from metering_usagerecord"
    )
    return int(rows), int(reasoning)


def routed_counts(database_url: str) -> dict[str, int]:
    """Completed records of the routed alias per target name."""
    out = psql_rows(
        database_url,
        "select r.name, count(*) from metering_usagerecord u join metering_route r"
        " on r.id = u.route_id where u.alias = 'bench-routed' and u.status = 'completed'"
        " group by r.name order by r.name",
    )
    counts = {name: 0 for name, _ in ROUTED_TARGETS}
    for name, count in out:
        counts[name] = int(count)
    return counts


def get_json(url: str) -> dict:
    import json

    return json.loads(urllib.request.urlopen(url).read())


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread_pct(values: list[float]) -> str:
    """A spread of shares, in per cent."""
    return spread([100 * v for v in values], "%", 1)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def commit_latencies(database_url: str, count: int = 500) -> list[float]:
    """Milliseconds of each of `count` tiny durable commits (INSERT of one row + COMMIT,
    the fsync a ledger batch waits for) on one connection to the bench database."""
    import psycopg

    times = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigserial, at timestamptz)")
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commit (at) VALUES (now())")
            times.append((time.perf_counter() - started) * 1000)
        conn.execute("DROP TABLE bench_commit")
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; medians reported"
    )
    parser.add_argument("--workers", type=int, default=1, help="Reckon server processes")
    parser.add_argument(
        "--routed-one-simulator",
        action="store_true",
        help="put the routed alias's three targets on the single-target column's simulator "
        "(the same number of processes as that column, for a like-for-like ratio)",
    )
    parser.add_argument(
        "--lease-calls", type=int, default=32, help="RECKON_CONTROL_LEASE_CALLS of the leased run"
    )
    add_database_url(parser)
    args = parser.parse_args()
    banner = machine_banner()  # how busy the machine was when the run began
    print(banner, flush=True)
    binary = ensure_wrk()
    database_url = setup_database(args.database_url)
    routed_sims = (
        [] if args.routed_one_simulator else [f"sim_routed{i}" for i in range(len(ROUTED_TARGETS))]
    )
    ports = {
        name: free_port()
        for name in ("sim", "sim_reckon", "bare", "reckon", "leased", *routed_sims)
    }
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = django_env(database_url)
    key = seed(database_url, url["sim_reckon"])
    controlled_key = seed_controlled(database_url)
    seed_routed(
        database_url,
        [url[name] for name in routed_sims] or [url["sim_reckon"]] * len(ROUTED_TARGETS),
    )
    python = [sys.executable]
    procs = [
        # Two identical simulators: one behind Reckon, one for the direct and bare runs, so
        # the ledger can be reconciled exactly against what Reckon's upstream served.
        subprocess.Popen(
            [*python, "manage.py", "run_simulator", "--port", str(ports["sim"])], cwd=ROOT, env=env
        ),
        subprocess.Popen(
            [*python, "manage.py", "run_simulator", "--port", str(ports["sim_reckon"])],
            cwd=ROOT,
            env=env,
        ),
        # the routed alias's three targets
        *(
            subprocess.Popen(
                [*python, "manage.py", "run_simulator", "--port", str(ports[name])],
                cwd=ROOT,
                env=env,
            )
            for name in routed_sims
        ),
        bare_passthrough(ports["bare"], env, url["sim"], python),
        # Reckon as configured by default (leases: far from every limit, calls are
        # admitted on slices of the budgets and windows this process reserved in Redis),
        # and the same Reckon checking and settling every call in Redis.
        serve(
            ports["leased"],
            args.workers,
            {**env, "RECKON_CONTROL_LEASE_CALLS": str(args.lease_calls)},
        ),
        serve(ports["reckon"], args.workers, {**env, "RECKON_CONTROL_LEASE_CALLS": "0"}),
    ]
    targets = {
        "direct": (url["sim"], "sim-reasoner", key),
        "bare": (url["bare"], "sim-reasoner", key),
        "reckon": (url["reckon"], "bench-reasoner", key),
        "controls": (url["reckon"], "bench-reasoner", controlled_key),
        "leased": (url["leased"], "bench-reasoner", controlled_key),
        "routed": (url["reckon"], "bench-routed", key),
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {t: {"c32": [], "c1": []} for t in targets}
    try:
        for name in ("sim", "sim_reckon", *routed_sims):
            wait_up(url[name] + "/_sim/health")
        wait_up(url["bare"] + "/")
        wait_up(url["reckon"] + "/v1/models")
        wait_up(url["leased"] + "/v1/models")
        for base, model, target_key in targets.values():  # warm pools, caches, connections
            wrk(binary, base, target_key, model, 8, 2)
        time.sleep(0.5)
        for name in ("sim_reckon", *routed_sims):
            urllib.request.urlopen(urllib.request.Request(url[name] + "/_sim/reset", method="POST"))
        baseline = ledger_totals(database_url)
        routed_baseline = routed_counts(database_url)
        for _ in range(args.rounds):
            for concurrency in ("c32", "c1"):
                for target, (base, model, target_key) in targets.items():
                    runs[target][concurrency].append(
                        wrk(binary, base, target_key, model, int(concurrency[1:]), args.duration)
                    )
        time.sleep(1)
        commits = commit_latencies(database_url)
        served_by = {
            name: get_json(url[name] + "/_sim/totals") for name in ("sim_reckon", *routed_sims)
        }
        after = ledger_totals(database_url)
        routed_by_target = {
            name: count - routed_baseline[name]
            for name, count in routed_counts(database_url).items()
        }
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)

    def m(target: str, concurrency: str, field: str) -> float:
        return median([r[field] for r in runs[target][concurrency]])

    def per_round(target: str, concurrency: str, field: str) -> list[float]:
        return [r[field] for r in runs[target][concurrency]]

    def added(target: str, field: str) -> list[float]:
        """Latency at c=1 over direct, per round (the two ran seconds apart)."""
        return [
            r[field] - d[field]
            for r, d in zip(runs[target]["c1"], runs["direct"]["c1"], strict=True)
        ]

    def share_of(target: str, base: str) -> list[float]:
        """req/s at c=32 as a share of `base`'s in the same round, per round."""
        return [
            r["rps"] / b["rps"] for r, b in zip(runs[target]["c32"], runs[base]["c32"], strict=True)
        ]

    direct_rps = m("direct", "c32", "rps")
    print()
    print(banner)
    print("Proxy benchmark: non-streaming chat completions, simulator at zero delay, wrk -t1,")
    print(
        f"{args.rounds} interleaved rounds x {args.duration}s per run (medians), Reckon with "
        f"{args.workers} worker"
    )
    print(
        f"process(es) and durable metering on PostgreSQL, all on this {os.cpu_count()}-core machine."
    )
    columns = [
        ("direct", "direct"),
        ("bare", "bare proxy"),
        ("reckon", "Reckon"),
        ("leased", "+controls"),
        ("controls", "+ctl exact"),
        ("routed", "routed"),
    ]

    def row(label: str, values: list[str]) -> None:
        print(f"{label:28}" + "".join(f"{v:>12}" for v in values))

    row("", [title for _, title in columns])
    row("req/s at c=32", [f"{m(t, 'c32', 'rps'):.0f}" for t, _ in columns])
    row("  share of direct", [f"{m(t, 'c32', 'rps') / direct_rps:.1%}" for t, _ in columns])
    for field, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        d = m("direct", "c1", field)
        row(f"{label} latency at c=1 (ms)", [f"{m(t, 'c1', field):.3f}" for t, _ in columns])
        row(
            "  added over direct (ms)",
            [""] + [f"{m(t, 'c1', field) - d:+.3f}" for t, _ in columns[1:]],
        )
    print("(+controls: the same Reckon with a spend hold, two spend limits, two rate limits and")
    print(
        f" reasoning governance on every call, on slices leased {args.lease_calls} calls at a time"
    )
    print(" (the default); +ctl exact: the same, each call checked and settled in Redis;")
    where = "the Reckon column's simulator" if args.routed_one_simulator else "3 simulators"
    print(f" routed: an alias with 3 weighted targets on {where}, no controls)")
    print()
    print("Each figure over the rounds: median (min, max):")
    for target, title in columns:
        print(f"  {title}")
        print(f"    req/s at c=32              {spread(per_round(target, 'c32', 'rps'), '', 0)}")
        if target != "bare":
            print(f"    share of bare proxy        {spread_pct(share_of(target, 'bare'))}")
        for field, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            print(
                f"    {label} at c=1                 {spread(per_round(target, 'c1', field), 'ms', 3)}"
            )
            if target != "direct":
                print(f"    {label} added over direct    {spread(added(target, field), 'ms', 3)}")
    print()
    print("Targets (judged on the median over rounds; shares per round, against the same round's")
    print("bare pass-through):")
    print(target_line("Reckon / bare proxy req/s at c=32", share_of("reckon", "bare"), ">=", 0.90))
    print(
        target_line("+controls / bare proxy req/s at c=32", share_of("leased", "bare"), ">=", 0.80)
    )
    print(target_line("+controls added p99 at c=1", added("leased", "p99_ms"), "<", 2.0, "ms", 3))
    print(target_line("+controls added p50 at c=1", added("leased", "p50_ms"), "<=", 1.5, "ms", 3))
    print(target_line("Reckon added p50 at c=1", added("reckon", "p50_ms"), "<=", 1.5, "ms", 3))
    print(
        target_line("routed / single-target Reckon req/s", share_of("routed", "reckon"), ">=", 0.97)
    )
    print(
        "durable commit on this PostgreSQL (INSERT + COMMIT of one row, one connection, "
        f"{len(commits)} in a row, after the rounds): p50 {percentile(commits, 50):.3f} ms, "
        f"p99 {percentile(commits, 99):.3f} ms, max {max(commits):.3f} ms"
    )
    rows, reasoning = after[0] - baseline[0], after[1] - baseline[1]
    served = {
        field: sum(totals[field] for totals in served_by.values())
        for field in ("requests", "reasoning_tokens")
    }
    print(
        f"ledger: {rows} usage records, {reasoning} reasoning tokens; Reckon's upstreams served "
        f"{served['requests']} requests, {served['reasoning_tokens']} reasoning tokens."
    )
    if (rows, reasoning) != (served["requests"], served["reasoning_tokens"]):
        sys.exit("MISMATCH between the ledger and the upstream: a record was lost or counted twice")
    if routed_sims:
        by_target = {
            name: served_by[sim]["requests"]
            for (name, _), sim in zip(ROUTED_TARGETS, routed_sims, strict=True)
        }
        print(f"routed calls per target: ledger {routed_by_target}, simulators {by_target}")
        if routed_by_target != by_target:
            sys.exit("MISMATCH between the ledger and a routed target's simulator")
    else:
        print(f"routed calls per target (all on one simulator): ledger {routed_by_target}")
    print("ledger == upstream: every request served through Reckon has exactly one record.")


if __name__ == "__main__":
    main()
