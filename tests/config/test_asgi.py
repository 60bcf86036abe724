"""The server process's garbage collector policy (config.asgi.collector_configure) and its
lifespan's shutdown."""

import asyncio
import gc
import sys
from pathlib import Path

import pytest

from api.proxy import stallprobe
from config import asgi

STREAMS = 5_000
OBJECTS_PER_STREAM = 120  # container objects an open stream keeps alive (about)


def test_collections_stay_short_while_thousands_of_streams_open() -> None:
    """While streams open, every young object survives: no collection may then scan more
    than a few young generations' worth of objects (a pause of about that many objects,
    the TTFB tail of streams opening meanwhile), and none may be a full collection."""
    scanned: list[tuple[int, int]] = []

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generation = info["generation"]
            objects = sum(len(gc.get_objects(g)) for g in range(generation + 1))
            scanned.append((generation, objects))

    thresholds = gc.get_threshold()
    gc.collect()
    asgi.collector_configure()
    gc.callbacks.append(on_collection)
    try:
        streams = [[[n] for n in range(OBJECTS_PER_STREAM - 1)] for _ in range(STREAMS)]
    finally:
        gc.callbacks.remove(on_collection)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert len(streams) == STREAMS
    assert scanned, "no collection while 600,000 objects piled up"
    assert max(generation for generation, _ in scanned) < 2
    # a middle collection every other collection: about two young generations at most
    # (a middle threshold of 1, three young generations, fails this)
    assert max(objects for _, objects in scanned) <= 2.5 * asgi.GC_YOUNG_THRESHOLD


def test_a_probe_that_cannot_write_still_lets_the_proxy_shut_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The opt-in loop probe's summary goes to a path from the environment: a missing
    directory must not keep the proxy's shutdown (the ledger's flush) from running, and
    the lifespan still completes."""
    monkeypatch.setenv(stallprobe.ENV, str(tmp_path / "missing" / "probe"))
    shut_down: list[bool] = []

    async def startup() -> None:
        pass

    async def shutdown() -> None:
        shut_down.append(True)

    monkeypatch.setattr(asgi.proxy_application, "startup", startup)
    monkeypatch.setattr(asgi.proxy_application, "shutdown", shutdown)
    thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        await asyncio.sleep(0.005)  # a few probe ticks
        return next(incoming)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    try:
        asyncio.run(asgi.application({"type": "lifespan"}, receive, send))
    finally:
        stallprobe.stop()  # nothing left running, whatever happened
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(switch)
    assert shut_down == [True]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "loop probe: the summary could not be written" in caplog.text
