"""The server process's garbage collector policy (config.asgi.collector_configure)."""

import gc

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
