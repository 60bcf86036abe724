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


def test_young_collections_stay_short_while_streams_end_as_others_open() -> None:
    """Old streams' objects (promoted long ago) freed while new streams open keep the
    young count far under the young generation's size: with 120 old objects freed for
    each 130 allocated, the count reaches the threshold only once the young generation
    holds 13 times that. The timed young collections (called here once per "period" of
    100 streams replaced, as the loop's timer would) keep every collection about a
    period's worth; without them the threshold's collection scanned 65,000 objects."""
    scanned: list[int] = []
    new_objects = OBJECTS_PER_STREAM + 10
    period = 100

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            scanned.append(sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1)))

    thresholds = gc.get_threshold()
    gc.collect()
    asgi.collector_configure()
    young = asgi.YoungCollections()
    try:
        open_streams = [[[n] for n in range(OBJECTS_PER_STREAM - 1)] for _ in range(STREAMS)]
        gc.collect()  # they are old now
        gc.callbacks.append(on_collection)
        for start in range(0, STREAMS, period):
            for i in range(start, start + period):
                open_streams[i] = [[n] for n in range(new_objects - 1)]
            young.collect()
    finally:
        if on_collection in gc.callbacks:
            gc.callbacks.remove(on_collection)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert len(open_streams) == STREAMS
    assert len(scanned) >= STREAMS // period
    assert max(scanned) <= 2.5 * period * new_objects
