"""`manage.py serve`: Reckon on uvicorn, in one process or in N worker processes.

With `--workers N` (N > 1) uvicorn's supervisor runs the workers: it starts them, pings
them, replaces one that dies (a `kill -9` included) and, on SIGTERM, stops each
gracefully (in-flight calls finish, then each worker's lifespan shutdown flushes its
ledger). What differs from `uvicorn --workers` is the listening socket. uvicorn binds
one socket in the supervisor and every worker accepts from that one queue: whichever
worker wakes first may take most of a burst, so a client that opens its connections
together (a load balancer's pool, wrk) may find most of them on one worker (seen by
hand with wrk at c=32 on two workers: 32/0 in one of five tries, 30/2 in two). By default
(`--listen reuseport`) each worker instead listens on a socket of its own bound with
SO_REUSEPORT, and the kernel spreads new connections over the workers by a hash of
their addresses. The supervisor keeps a socket bound to the port (not listening, so it
is given no connections) to refuse a port that is taken before any worker starts.

Every worker is a whole server of its own (ledger writer, spool, control store, routing
state, caller cache); what must hold across them is in PostgreSQL and Redis, never in
one worker's memory. A worker's listening socket goes with it: connections the kernel
had queued for a worker that is killed (not yet accepted by it) are reset, where with
`--listen shared` another worker would accept them.
"""

import logging
import os
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from uvicorn.supervisors import Multiprocess

from api.listeners import WorkerListener, port_is_free, reuse_port_socket
from api.proxy.server import ReckonHttpProtocol
from metering.ledger.partitions import partitions_startup_refusal

logger = logging.getLogger("uvicorn.error")
LISTEN_MODES = ("reuseport", "shared")


def workers_default() -> int:
    """The worker count when `--workers` is not given: RECKON_WORKERS, else 1."""
    value = os.environ.get("RECKON_WORKERS", "").strip()
    if not value:
        return 1
    if not value.isdigit():
        raise CommandError(f"RECKON_WORKERS must be a whole number of processes, not {value!r}.")
    return int(value)


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
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="server processes (default: RECKON_WORKERS, else 1)",
        )
        parser.add_argument(
            "--listen",
            choices=LISTEN_MODES,
            default="reuseport",
            help="with several workers: a socket per worker with SO_REUSEPORT (the kernel "
            "spreads connections), or uvicorn's one socket all workers accept from",
        )
        parser.add_argument("--access-log", action="store_true")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        if options["workers"] is None:
            options["workers"] = workers_default()
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1.")
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
        config = dict(
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
        host, port, workers = options["host"], options["port"], options["workers"]
        if workers == 1 or options["listen"] == "shared":
            uvicorn.run("config.asgi:application", host=host, port=port, workers=workers, **config)
            return
        serve_reuse_port(
            uvicorn.Config("config.asgi:application", workers=workers, **config), host, port
        )


def serve_reuse_port(config: uvicorn.Config, host: str, port: int) -> None:
    """Run `config.workers` workers under uvicorn's supervisor, each listening on a
    SO_REUSEPORT socket of its own (module docstring)."""
    try:
        if port:  # a plain bind first: SO_REUSEPORT alone would share a port another
            port_is_free(host, port)  # serve (an old version left running) holds
        reserved = reuse_port_socket(host, port, listen=False)
    except OSError as exc:
        raise CommandError(f"serve cannot bind {host}:{port}: {exc}") from exc
    try:
        port = reserved.getsockname()[1]  # the one a port 0 was given
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "Uvicorn running on http://%s:%d (Press CTRL+C to quit); %d workers, each on "
            "its own SO_REUSEPORT socket",
            shown,
            port,
            config.workers,
        )
        listeners: Any = [WorkerListener(host, port)]  # each worker unpickles its own socket
        Multiprocess(config, sockets=listeners).run()
    finally:
        reserved.close()
