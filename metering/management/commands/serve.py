import uvicorn
from django.core.management.base import BaseCommand

from config.uvicorn_protocol import ReckonHttpProtocol


class Command(BaseCommand):
    help = "Run Reckon (proxy, REST API, admin) on the production ASGI server (uvicorn)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--access-log", action="store_true")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        uvicorn.run(
            "config.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            loop="uvloop",
            http=ReckonHttpProtocol,  # uvicorn's httptools protocol, one write a response
            lifespan="on",
            access_log=options["access_log"],
            log_level="info",
            timeout_graceful_shutdown=30,
            # The proxy reads no client address, so X-Forwarded-* parsing is wasted work.
            proxy_headers=False,
            server_header=False,
        )
