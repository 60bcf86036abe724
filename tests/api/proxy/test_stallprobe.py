"""The opt-in loop-stall probe: absent unless asked for; when on, a blocked loop and a
collection show up in its summary, split by what kept the loop."""

import asyncio
import gc
import json
import os
import time
from pathlib import Path

import pytest
import uvloop

from api.proxy import stallprobe


def test_off_by_default_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stallprobe.ENV, raising=False)
    callbacks = list(gc.callbacks)

    async def main() -> None:
        assert stallprobe.start_from_env(asyncio.get_running_loop()) is None
        assert gc.callbacks == callbacks

    asyncio.run(main())
    stallprobe.stop()  # nothing to write


def test_a_blocked_loop_is_a_stall_of_its_own_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(stallprobe.ENV, str(tmp_path / "probe"))
    callbacks = list(gc.callbacks)

    async def main() -> None:
        probe = stallprobe.start_from_env(asyncio.get_running_loop())
        assert probe is not None
        await asyncio.sleep(0.02)
        spin_until = time.perf_counter() + 0.05  # one callback that keeps the loop 50 ms
        while time.perf_counter() < spin_until:
            pass
        gc.collect()
        await asyncio.sleep(0.02)
        stallprobe.stop()

    uvloop.run(main())
    (written,) = tmp_path.glob("probe.*.json")
    summary = json.loads(written.read_text())
    assert summary["stalls"] >= 1
    split = summary["stall_seconds"]
    assert split["wall"] >= 0.05
    assert set(split) >= {"own_cpu", "gc", "run_queue", "blocked"}
    assert summary["gc"]["collections"].get("2", 0) >= 1  # the full collection was seen
    assert max(w["wall_ms"] for w in summary["worst"]) >= 50
    assert gc.callbacks == callbacks  # removed when it stopped


def test_stop_leaves_no_tick_no_sampler_and_no_open_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(stallprobe.ENV, str(tmp_path / "probe"))

    async def main() -> None:
        probe = stallprobe.start_from_env(asyncio.get_running_loop())
        assert probe is not None
        await asyncio.sleep(0.01)
        fds = [fd for _name, fd in probe._thread_fds.values()]
        if probe.own_fd is not None:
            fds.append(probe.own_fd)
        stallprobe.stop()
        ticks = probe.ticks
        await asyncio.sleep(0.01)
        assert probe.ticks == ticks  # the pending tick was cancelled
        assert not probe._sampler.is_alive()
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)

    uvloop.run(main())
