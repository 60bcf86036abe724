"""What the simulator's served log (`/_sim/served`) costs per counted generation.

The simulator is the proxy benchmarks' upstream and their "direct" baseline, so its hot
path must stay lean. This times `Totals.add` (counts + the served log's one tuple append)
against the same counting without the log (the code before the log existed), in
interleaved rounds in one process, and prints the machine (CPUs, memory, load), then
median/min/max nanoseconds per call.

    .venv/bin/python bench/sim_served_bench.py [--rounds 7 --calls 200000]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import columns, columns_header, machine_banner  # noqa: E402
from metering.simulator import engine  # noqa: E402
from metering.simulator.app import _TOTAL_FIELDS, Totals  # noqa: E402
from metering.simulator.engine import Generation  # noqa: E402


class CountsOnly:
    """`Totals.add` as it was before the served log: the baseline."""

    def __init__(self) -> None:
        self._rows: dict[str, list[int]] = {}

    def add(self, endpoint: str, generation: Generation, credential: bytes = b"") -> None:
        row = self._rows.get(endpoint)
        if row is None:
            row = self._rows[endpoint] = [0] * len(_TOTAL_FIELDS)
        row[0] += 1
        row[1] += generation.uncached_input_tokens
        row[2] += generation.cached_tokens
        row[3] += generation.cache_write_tokens
        row[4] += generation.visible_tokens
        row[5] += generation.reasoning_tokens


def per_call_ns(totals: CountsOnly | Totals, generation: Generation, calls: int) -> float:
    add = totals.add
    started = time.perf_counter_ns()
    for _ in range(calls):
        add("/v1/chat/completions", generation, b"Bearer sk-upstream")
    return (time.perf_counter_ns() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    print(machine_banner())
    generation = engine.plan_chat_completion(
        {"model": "sim-reasoner", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    )
    results: dict[str, list[float]] = {"counts only (baseline)": [], "counts + served log": []}
    for _ in range(args.rounds):
        results["counts only (baseline)"].append(per_call_ns(CountsOnly(), generation, args.calls))
        results["counts + served log"].append(per_call_ns(Totals(), generation, args.calls))
    print(f"Totals.add, ns per call, {args.rounds} rounds x {args.calls} calls")
    print(f"  {'':24}{columns_header()}")
    for name, values in results.items():
        print(f"  {name:<24}{columns(values, 0)}")
    extra = statistics.median(results["counts + served log"]) - statistics.median(
        results["counts only (baseline)"]
    )
    print(f"  served log adds {extra:.0f} ns per counted generation (median)")


if __name__ == "__main__":
    main()
