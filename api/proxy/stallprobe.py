"""An opt-in probe of the event loop's stalls: where a server process's latency tail goes.

Off by default and absent when off (nothing is installed, nothing runs). With
RECKON_LOOP_PROBE=<path> in the environment, the server's lifespan start-up installs it
and its shutdown writes a JSON summary to `<path>.<pid>.json` (and one log line).

How it measures: a loop callback every PERIOD_S (1 ms) notes the time. A gap between two
ticks longer than STALL_S (3 ms: libuv's timers have millisecond resolution, so an idle
loop's gap is 1-2 ms) is a stall: something kept the loop from running its callbacks. Each
stall's wall time is split, from the loop thread's own counters over the gap, into

- `own_cpu`: the loop thread ran (time.thread_time): a long callback, or run of callbacks,
  of ours, uvicorn's or uvloop's; of which `gc` is the collector (gc.callbacks);
- `run_queue`: the loop thread was ready but waited for a CPU (the kernel's schedstat for
  this thread): other processes, or this process's other threads, on the CPUs;
- `blocked`: the rest: the loop thread was neither running nor runnable, i.e. waiting for
  the GIL held by another thread, or in a blocking call.

Besides, the CPU time each other thread of the process used during stalls (schedstat,
by thread name) says which thread held the GIL or the CPU, and a sampler thread notes the
loop thread's stack while a stall lasts (what ran). The probe costs a few µs per tick
while on: it is for attribution, not for the figures a benchmark reports.
"""

import gc
import json
import logging
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any

logger = logging.getLogger(__name__)

ENV = "RECKON_LOOP_PROBE"
PERIOD_S = 0.001
STALL_S = 0.003
SAMPLE_S = 0.001  # the sampler's period while the loop is healthy
BUCKETS_MS = (3, 5, 10, 20, 50, 100, 200)
WORST_KEPT = 20
_IDLE_FRAMES = {
    "wait",
    "_worker",
    "select",
    "poll",
    "sleep",
    "run_forever",
    "_wait_for_tstate_lock",
}


def _schedstat_fd(tid: int) -> int | None:
    try:
        return os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
    except OSError:
        return None


def _schedstat(fd: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting for one) of one thread, re-read from an open file."""
    fields = os.pread(fd, 100, 0).split()
    return int(fields[0]), int(fields[1])


def _stack(frame: Any, depth: int = 4) -> str:
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        parts.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
        frame = frame.f_back
    return " < ".join(parts)


class LoopStallProbe:
    def __init__(self, path: str) -> None:
        self.path = path
        self.loop: Any = None
        self.loop_ident = threading.get_ident()
        self.own_fd = _schedstat_fd(threading.get_native_id())
        self.started = time.perf_counter()
        self.ticks = 0
        self.beat = 0  # ticks so far, read by the sampler
        self.stalls = 0
        self.errors = 0  # ticks whose measuring failed (counted, never raised)
        self.buckets = Counter[int]()
        self.own_stalls = Counter[int]()  # stalls mostly of own CPU (< 20% queued or blocked)
        self.totals: defaultdict[str, float] = defaultdict(float)
        self.threads_cpu: defaultdict[str, float] = defaultdict(float)  # others' CPU in stalls
        self.stacks = Counter[str]()  # the loop thread's, sampled while stalled
        self.others = Counter[str]()  # other threads' busy stacks, sampled while stalled
        self.worst: list[dict[str, Any]] = []
        self.gc_total = 0.0
        self.gc_count = Counter[int]()
        self.gc_longest = 0.0
        self.gc_collected = 0
        self.gc_longest_collected = 0
        self._gc_start = 0.0
        self._thread_fds: dict[int, tuple[str, int]] = {}
        self._threads_seen_at = 0.0
        self._last = self._snapshot()
        self._stop = threading.Event()
        self._timer: Any = None  # the next tick's TimerHandle
        self._sampler = threading.Thread(target=self._sample, name="loop-probe", daemon=True)

    # --- lifecycle ----------------------------------------------------------------

    def start(self, loop: Any) -> None:
        self.loop = loop
        gc.callbacks.append(self._on_gc)
        self._refresh_threads()
        self._last = self._snapshot()
        self._timer = loop.call_later(PERIOD_S, self._tick)
        self._sampler.start()

    def stop(self) -> dict[str, Any]:
        """Stop measuring (no tick, no sampler, no open file is left) and write the summary.
        Called on the loop; writing can raise (OSError: the path's directory is missing or
        read-only), after everything is stopped."""
        self._stop.set()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sampler.is_alive():
            self._sampler.join(0.1)
        self._close_fds()
        summary = self.summary()
        target = f"{self.path}.{os.getpid()}.json"
        with open(target, "w") as out:
            json.dump(summary, out, indent=1)
        logger.warning(
            "loop probe: %d stalls over %.1f s, %s (written to %s)",
            self.stalls,
            summary["seconds"],
            {k: round(v, 4) for k, v in summary["stall_seconds"].items()},
            target,
        )
        return summary

    def _close_fds(self) -> None:
        for _name, fd in self._thread_fds.values():
            os.close(fd)
        self._thread_fds = {}
        if self.own_fd is not None:
            os.close(self.own_fd)
            self.own_fd = None

    # --- measuring ----------------------------------------------------------------

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_start = now
        elif self._gc_start:
            spent = now - self._gc_start
            self.gc_total += spent
            self.gc_count[info["generation"]] += 1
            self.gc_collected += info.get("collected", 0)  # cyclic garbage found (objects)
            if spent > self.gc_longest:
                self.gc_longest = spent
                self.gc_longest_collected = info.get("collected", 0)
            self._gc_start = 0.0

    def _snapshot(self) -> tuple[float, float, int, float]:
        run_queue = _schedstat(self.own_fd)[1] if self.own_fd is not None else 0
        return time.perf_counter(), time.thread_time(), run_queue, self.gc_total

    def _threads(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for name, fd in self._thread_fds.values():
            try:
                cpu[name] = cpu.get(name, 0.0) + _schedstat(fd)[0] / 1e9
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended (its file reads empty)
        return cpu

    def _refresh_threads(self) -> None:
        for _name, fd in self._thread_fds.values():
            os.close(fd)
        self._thread_fds = {}
        own = threading.get_native_id()
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None or tid == own or thread is self._sampler:
                continue
            opened = _schedstat_fd(tid)
            if opened is not None:
                name = thread.name.split("_")[0].rstrip("-0123456789") or thread.name
                self._thread_fds[tid] = (name, opened)
        self._threads_seen_at = time.perf_counter()
        self._threads_cpu = self._threads()

    def _tick(self) -> None:
        try:
            self._measure()
        except Exception:  # noqa: BLE001 - the probe must never stop measuring nor break the loop
            self.errors += 1
            self._last = self._snapshot()
        if not self._stop.is_set():
            self._timer = self.loop.call_later(PERIOD_S, self._tick)

    def _measure(self) -> None:
        now = self._snapshot()
        threads = self._threads() if self._thread_fds else {}
        wall = now[0] - self._last[0]
        self.ticks += 1
        self.beat += 1
        if wall > STALL_S:
            own = now[1] - self._last[1]
            queued = (now[2] - self._last[2]) / 1e9
            spent_gc = now[3] - self._last[3]
            blocked = max(0.0, wall - own - queued)
            self.stalls += 1
            self.buckets[next((b for b in BUCKETS_MS[::-1] if wall * 1000 >= b), 0)] += 1
            if queued < 0.2 * wall and blocked < 0.2 * wall:  # the loop thread's own doing
                self.own_stalls[next((b for b in BUCKETS_MS[::-1] if wall * 1000 >= b), 0)] += 1
                self.totals["own_stalls_wall"] += wall
            for part, seconds in (
                ("wall", wall),
                ("own_cpu", own),
                ("gc", spent_gc),
                ("run_queue", queued),
                ("blocked", blocked),
            ):
                self.totals[part] += seconds
            others = {
                name: used - self._threads_cpu.get(name, 0.0)
                for name, used in threads.items()
                if used - self._threads_cpu.get(name, 0.0) > 0
            }
            for name, used in others.items():
                self.threads_cpu[name] += used
            entry = {
                "at_s": round(now[0] - self.started, 3),
                "wall_ms": round(wall * 1000, 2),
                "own_cpu_ms": round(own * 1000, 2),
                "gc_ms": round(spent_gc * 1000, 2),
                "run_queue_ms": round(queued * 1000, 2),
                "blocked_ms": round(blocked * 1000, 2),
                "other_threads_ms": {k: round(v * 1000, 2) for k, v in others.items()},
            }
            self.worst.append(entry)
            if len(self.worst) > 4 * WORST_KEPT:
                self.worst.sort(key=lambda e: -e["wall_ms"])
                del self.worst[WORST_KEPT:]
        self._threads_cpu = threads
        if now[0] - self._threads_seen_at > 1.0:
            self._refresh_threads()
            now = self._snapshot()
        self._last = now

    def _sample(self) -> None:
        """While a stall lasts (no tick for STALL_S), note the loop thread's stack and the
        busy stacks of the other threads, once per stall period."""
        seen, since = self.beat, time.perf_counter()
        while not self._stop.wait(SAMPLE_S):
            beat = self.beat
            now = time.perf_counter()
            if beat != seen:
                seen, since = beat, now
                continue
            if now - since < STALL_S:
                continue
            since = now  # next sample after another stall period
            frames = sys._current_frames()
            loop_frame = frames.get(self.loop_ident)
            self.stacks[_stack(loop_frame) if loop_frame is not None else "(none)"] += 1
            for ident, frame in frames.items():
                if ident in (self.loop_ident, threading.get_ident()):
                    continue
                if frame.f_code.co_name not in _IDLE_FRAMES:
                    self.others[_stack(frame, 3)] += 1

    # --- the summary --------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        worst = sorted(self.worst, key=lambda e: -e["wall_ms"])[:WORST_KEPT]
        return {
            "seconds": round(seconds, 3),
            "ticks": self.ticks,
            "errors": self.errors,
            "stalls": self.stalls,
            "stalls_by_ms": {f">={b}": n for b, n in sorted(self.buckets.items())},
            "own_stalls_by_ms": {f">={b}": n for b, n in sorted(self.own_stalls.items())},
            "stall_seconds": {k: round(v, 4) for k, v in self.totals.items()},
            "other_threads_cpu_in_stalls_s": {
                k: round(v, 4) for k, v in sorted(self.threads_cpu.items(), key=lambda kv: -kv[1])
            },
            "gc": {
                "seconds": round(self.gc_total, 4),
                "collections": dict(self.gc_count),
                "longest_ms": round(self.gc_longest * 1000, 2),
                "collected": self.gc_collected,
                "longest_collected": self.gc_longest_collected,
            },
            "loop_stacks_in_stalls": dict(self.stacks.most_common(12)),
            "other_stacks_in_stalls": dict(self.others.most_common(8)),
            "worst": worst,
        }


_probe: LoopStallProbe | None = None


def start_from_env(loop: Any) -> LoopStallProbe | None:
    """Install the probe on `loop` if RECKON_LOOP_PROBE names a path (else nothing)."""
    global _probe
    path = os.environ.get(ENV, "").strip()
    if not path or _probe is not None:
        return None
    _probe = LoopStallProbe(path)
    _probe.start(loop)
    return _probe


def stop() -> None:
    """Write the probe's summary, if one runs."""
    global _probe
    if _probe is not None:
        probe, _probe = _probe, None
        probe.stop()
