import os

import uvicorn
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from api.proxy.server import ReckonHttpProtocol
from metering.ledger.partitions import partitions_startup_refusal


def serve_refusal(
    *,
    reckon_env: str | None,
    secret_key: str,
    development_secret_key: str,
    allowed_hosts: list[str],
) -> str | None:
    """Why the server must not start with this configuration, or None.

    `reckon_env` is RECKON_ENV as the environment gives it (None when unset): a server
    never runs on the development defaults unless someone asked for development.
    """
    if reckon_env is None:
        return (
            "RECKON_ENV is not set: set RECKON_ENV=production (behind TLS, with SECRET_KEY "
            "and ALLOWED_HOSTS) or RECKON_ENV=development (loopback, built-in secret)."
        )
    if reckon_env.strip().lower() == "development":
        return None
    if secret_key == development_secret_key:
        return "SECRET_KEY is the built-in development key: set a long random SECRET_KEY."
    if not allowed_hosts or "*" in allowed_hosts:
        return (
            "ALLOWED_HOSTS must name the host names this service answers to "
            "(comma-separated, no '*')."
        )
    return None


class Command(BaseCommand):
    help = "Run Reckon (proxy, REST API, admin) on the production ASGI server (uvicorn)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--access-log", action="store_true")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        refusal = serve_refusal(
            reckon_env=os.environ.get("RECKON_ENV"),
            secret_key=settings.SECRET_KEY,
            development_secret_key=settings.DEVELOPMENT_SECRET_KEY,
            allowed_hosts=list(settings.ALLOWED_HOSTS),
        )
        if refusal:
            raise CommandError(f"serve refuses to start: {refusal}")
        if settings.RECKON_PRODUCTION:
            # Every deployment warning (secure cookies, HSTS, redirect, key strength) stops
            # the start instead of scrolling past in a log.
            call_command("check", deploy=True, fail_level="WARNING")
        # No insert may fail for want of a ledger partition (PostgreSQL; no-op on SQLite).
        refusal = partitions_startup_refusal(ahead_months=settings.RECKON_LEDGER_PARTITIONS_AHEAD)
        connection.close()  # the workers open their own
        if refusal:
            raise CommandError(f"serve refuses to start: {refusal}")
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
