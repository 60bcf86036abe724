"""ASGI entry point: the proxy's lean hot path for /v1/*, Django for everything else."""

import asyncio
import gc
import logging
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from api.proxy import stallprobe  # noqa: E402
from api.proxy.app import ProxyApp  # noqa: E402 - needs Django set up first

logger = logging.getLogger(__name__)

proxy_application = ProxyApp()
# The collector's policy (CPython 3.11's collector is not incremental: collecting a
# generation pauses the event loop for every object in it and in the younger ones).
# Young collections every GC_YOUNG_THRESHOLD net allocations of container objects. A new
# stream leaves about 120 of them alive (coroutines, transports, protocols, closures)
# until it ends, so while streams open every young object survives: the young pause is
# about GC_YOUNG_THRESHOLD objects long (20,000: 4-5 ms of CPU).
GC_YOUNG_THRESHOLD = 5_000
# The middle generation is collected at every other collection (threshold 0: whenever a
# young collection came before), so a survivor is scanned once more and moves on to the
# old generation; the middle pause stays about 2 x GC_YOUNG_THRESHOLD objects long. With
# 20 young collections between middle ones the middle generation held up to 440,000
# survivors while streams opened: 138-168 ms pauses, one or two of them in a 9,900-stream
# ramp, the TTFB p99 tail (decision 0120).
GC_MIDDLE_THRESHOLD = 0
# A full collection scans every object the process holds (9,900 open streams: over a
# million, a few hundred ms), so it stays as rare as before: once per about 40 million
# net allocations (besides CPython's own rule: only when a quarter more objects reached
# the old generation since the last full one).
GC_FULL_EVERY_ALLOCATIONS = 40_000_000
# The longest a thread holding the GIL keeps the event loop waiting (CPython: 5 ms). The
# lookup thread runs Django queries (a caller's context: ~15 ms of Python) beside the loop:
# at 5 ms every call the loop served meanwhile waited up to 5 ms, the c=1 p99 tail.
GIL_SWITCH_INTERVAL_S = 0.0005


def collector_configure() -> None:
    """The garbage collector's policy for a server process, set once at startup."""
    # Everything loaded so far lives as long as the process: keep it out of the
    # collector's way, so collections only look at what requests allocate.
    gc.freeze()
    # A request allocates a few hundred objects and nearly all die with it: at the default
    # threshold (700) the youngest generation is scanned every few requests, with the
    # objects of every call in flight in it (CPU per controlled call at c=32: 149 us at
    # 700, 139 us at 20,000; 5,000 measured no worse than 20,000, decision 0120).
    # A middle collection comes every GC_MIDDLE_THRESHOLD + 2 collections, a full one
    # after the third threshold's count of middle ones.
    full_every = GC_FULL_EVERY_ALLOCATIONS // (GC_YOUNG_THRESHOLD * (GC_MIDDLE_THRESHOLD + 2))
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, full_every)


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    kind = scope["type"]
    if kind == "http" and scope["path"].startswith("/v1/"):
        await proxy_application(scope, receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_application(scope, receive, send)


async def _lifespan(receive, send):  # type: ignore[no-untyped-def]
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            collector_configure()
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
            # The ledger (loading what an earlier process spooled) and the routing state
            # start now, not when the first request comes.
            await proxy_application.startup()
            # RECKON_LOOP_PROBE=<path>: the event loop's stalls, attributed (opt-in)
            stallprobe.start_from_env(asyncio.get_running_loop())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # The ledger's flush first: the opt-in probe's summary (a diagnostic) must never
            # keep the proxy from shutting down (usage records queued in memory).
            await proxy_application.shutdown()
            try:
                stallprobe.stop()
            except Exception:
                logger.exception("loop probe: the summary could not be written")
            await send({"type": "lifespan.shutdown.complete"})
            return
