"""`manage.py run_simulator`: serve the built-in reasoning-model simulator with uvicorn."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from typing import Any

import uvicorn
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run the reasoning-model simulator (OpenAI/Anthropic wire formats) as an upstream."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)
        parser.add_argument(
            "--token-delay-ms",
            default="0",
            help="Time per generated token, in milliseconds (decimal).",
        )
        parser.add_argument(
            "--tokens-per-second",
            type=int,
            default=None,
            help="Decode speed; overrides --token-delay-ms.",
        )
        parser.add_argument(
            "--workers", type=int, default=1, help="Processes; /_sim/totals is per process."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            delay_ms = Decimal(options["token_delay_ms"])
        except InvalidOperation as exc:
            raise CommandError("--token-delay-ms must be a number") from exc
        if not delay_ms.is_finite() or delay_ms < 0:
            raise CommandError("--token-delay-ms must be >= 0")
        if options["tokens_per_second"] is not None and options["tokens_per_second"] <= 0:
            raise CommandError("--tokens-per-second must be > 0")
        # The app reads its configuration from the environment so that every uvicorn
        # worker process builds the same simulator.
        os.environ["RECKON_SIM_TOKEN_DELAY_MS"] = str(delay_ms)
        if options["tokens_per_second"] is not None:
            os.environ["RECKON_SIM_TOKENS_PER_SECOND"] = str(options["tokens_per_second"])
        else:
            os.environ.pop("RECKON_SIM_TOKENS_PER_SECOND", None)
        uvicorn.run(
            "metering.simulator.app:create_app_from_env",
            factory=True,
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
        )
