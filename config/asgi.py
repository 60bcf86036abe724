"""ASGI entry point: the proxy's lean hot path for /v1/*, Django for everything else."""

import gc
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from api.proxy.app import ProxyApp  # noqa: E402 - needs Django set up first

proxy_application = ProxyApp()
GC_YOUNG_THRESHOLD = 20_000
# The longest a thread holding the GIL keeps the event loop waiting (CPython: 5 ms). The
# lookup thread runs Django queries (a caller's context: ~15 ms of Python) beside the loop:
# at 5 ms every call the loop served meanwhile waited up to 5 ms, the c=1 p99 tail.
GIL_SWITCH_INTERVAL_S = 0.0005


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
            # Everything loaded so far lives as long as the process: keep it out of the
            # collector's way, so collections only look at what requests allocate.
            gc.freeze()
            # A request allocates a few hundred objects and nearly all die with it: at the
            # default threshold (700) the youngest generation is scanned every few
            # requests, with the objects of every call in flight in it. Measured with 32
            # calls in flight: CPU per controlled call 149 -> 139 us (bench/cpu_bench.py).
            gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
            # The ledger (loading what an earlier process spooled) and the routing state
            # start now, not when the first request comes.
            await proxy_application.startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await proxy_application.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
