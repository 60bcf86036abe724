"""`make bench-stream` keeps working: the streaming benchmark at a tiny scale (20 streams of
5 chunks, one round, Reckon and the bare pass-through) must finish with every stream
complete and the ledger equal to what the paced upstream served."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scratch import scratch_drop

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_bench_runs_and_its_records_check_passes(
    provider: str, migrated_template: str
) -> None:
    """With anthropic: messages streams with thinking, whose thinking tokens Reckon
    estimates from the characters it counts (exact for the paced upstream's text).

    The bench's database is a copy of the session's migrated template (RECKON_BENCH_TEMPLATE)
    instead of a migrate from scratch; the bench still runs `migrate`, which finds nothing
    to do, so a template that lagged behind the migrations would be caught up, not hidden."""
    # named from this session's test database: each xdist worker has its own
    bench_db = migrated_template.removesuffix("_template") + "_stream_bench"
    try:
        result = _run_bench(provider, bench_db, migrated_template)
    finally:
        scratch_drop(os.environ["DATABASE_URL"].rsplit("/", 1)[0], bench_db)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "records check: passed" in out
    assert "round 1, reckon:" in out and "20/20 complete" in out
    assert "round 1, bare:" in out
    # the ledger line: 20 measured + 20 warm-up streams, each with one record
    assert "ledger 40 records (40 completed)" in out
    assert "target Reckon CPU per chunk (whole round) <= 15.0 µs:" in out


def _run_bench(provider: str, bench_db: str, template: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "bench/stream_bench.py",
            "--streams",
            "20",
            "--chunks",
            "5",
            "--rounds",
            "1",
            "--interval",
            "0.05",
            "--ramp",
            "200",
            "--provider",
            provider,
        ],
        cwd=ROOT,
        env={**os.environ, "RECKON_BENCH_DB": bench_db, "RECKON_BENCH_TEMPLATE": template},
        capture_output=True,
        text=True,
        timeout=300,
    )
