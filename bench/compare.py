"""Two commits side by side in one interleaved run: did a change move the figures?

The machine's speed drifts by up to 2x over minutes, so two benchmark runs an hour apart
say little. This checks both commits out into temporary worktrees (this checkout's virtual
environment runs both), gives both this checkout's benchmark scripts (the same measuring
on both sides: only the code under test differs), then runs the benchmark on them in
pairs, alternating which goes first, and prints each figure's min/median/max per commit
and the change of medians.

    .venv/bin/python bench/compare.py 0636a2f HEAD                 # proxy_bench, 3 pairs
    .venv/bin/python bench/compare.py 0636a2f HEAD --bench cpu --pairs 2
    .venv/bin/python bench/compare.py A B -- --duration 3          # after --: the bench's own flags

Figures: proxy -> req/s at c=32 and added p50 at c=1 per column (bench/proxy_bench.py);
cpu -> server CPU microseconds per call per tenant kind (bench/cpu_bench.py).
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"proxy": "bench/proxy_bench.py", "cpu": "bench/cpu_bench.py"}
# What a benchmark run imports from bench/ (copied into both trees).
HARNESS = ("bench/proxy_bench.py", "bench/cpu_bench.py", "bench/stats.py")


def figures_of(bench: str, output: str) -> dict[str, float]:
    """The figures one bench run printed, by name."""
    found: dict[str, float] = {}
    if bench == "proxy":
        header = re.search(r"^\s+direct\s+bare proxy.*$", output, re.MULTILINE)
        columns = re.split(r"\s{2,}", header.group(0).strip()) if header else []
        for label, name in (("req/s at c=32", "req/s c=32"), ("  added over direct", "added")):
            lines = [line for line in output.splitlines() if line.startswith(label)]
            if not lines:
                continue
            values = lines[0][28:].split()
            # the first "added over direct" row (p50) has no value under "direct"
            for column, value in zip(columns[-len(values) :], values, strict=True):
                unit = " ms p50 c=1" if name == "added" else ""
                found[f"{column}: {name}{unit}"] = float(value.rstrip("%"))
        # Shares within one run move far less than req/s between runs (machine drift).
        direct, bare = found.get("direct: req/s c=32"), found.get("bare proxy: req/s c=32")
        for column in columns[2:]:
            rps = found.get(f"{column}: req/s c=32")
            if rps is not None and direct and bare:
                found[f"{column}: % of direct"] = 100 * rps / direct
                found[f"{column}: % of bare proxy"] = 100 * rps / bare
    else:
        for kind, value in re.findall(r"^\s+(\w+)\s+median\s+([\d.]+) us/call", output, re.M):
            found[f"{kind}: CPU us/call"] = float(value)
    if not found:
        sys.exit(f"could not read the figures of this {bench} run:\n{output[-2000:]}")
    return found


def run(bench: str, tree: Path, extra: list[str]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, SCRIPTS[bench], *extra],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        sys.exit(f"{bench} bench failed in {tree}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return figures_of(bench, result.stdout)


def spread(values: list[float]) -> str:
    digits = 3 if max(abs(v) for v in values) < 10 else 1
    return " ".join(
        f"{v:9.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--bench", choices=sorted(SCRIPTS), default="proxy")
    parser.add_argument("--pairs", type=int, default=3, help="runs per commit, interleaved")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    shas = {}
    for name in ("old", "new"):
        rev = getattr(args, name)
        shas[name] = subprocess.run(
            ["git", "rev-parse", "--short", rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="reckon-compare-") as scratch:
        trees = {name: Path(scratch) / name for name in shas}
        for name, tree in trees.items():
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), shas[name]],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            for name in HARNESS:
                shutil.copyfile(ROOT / name, tree / name)
        try:
            for pair in range(args.pairs):
                order = ("old", "new") if pair % 2 == 0 else ("new", "old")
                for name in order:
                    print(f"pair {pair + 1}/{args.pairs}: {name} ({shas[name]})", flush=True)
                    results[name].append(run(args.bench, trees[name], extra))
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                )
    print()
    print(
        f"{args.bench} bench, {args.pairs} interleaved pairs: old {shas['old']} vs new {shas['new']}"
    )
    print(
        f"{'figure':34} {'old min':>9} {'median':>9} {'max':>9}  {'new min':>9} {'median':>9} "
        f"{'max':>9}  {'change':>8}"
    )
    for figure in results["old"][0]:
        old = [run_[figure] for run_ in results["old"]]
        new = [run_[figure] for run_ in results["new"] if figure in run_]
        if not new:
            continue
        before, after = statistics.median(old), statistics.median(new)
        change = f"{(after - before) / abs(before):+.1%}" if before else "n/a"
        print(f"{figure:34} {spread(old)}  {spread(new)}  {change:>8}")


if __name__ == "__main__":
    main()
