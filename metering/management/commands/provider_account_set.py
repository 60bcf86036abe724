"""`manage.py provider_account_set`: create or update a provider account (idempotent)."""

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ApplicationError
from metering.models import ProviderAccount
from metering.providers.accounts import admin_base_url, provider_account_set


class Command(BaseCommand):
    help = (
        "Create or update a provider account whose admin API reports usage and cost. The "
        "admin key is named by its environment variable, never given on the command line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--provider", required=True, choices=ProviderAccount.Provider.values)
        parser.add_argument(
            "--admin-key-env", required=True, metavar="VAR", help="env var holding the admin key"
        )
        parser.add_argument(
            "--admin-base-url",
            default="",
            metavar="URL",
            help="admin API base with its version (default: https://api.openai.com/v1 or "
            "https://api.anthropic.com/v1)",
        )
        parser.add_argument(
            "--model-map",
            nargs="*",
            default=[],
            metavar="REPORT_NAME=UPSTREAM_MODEL",
            help="report model names that differ from the routes' upstream models",
        )
        parser.add_argument("--inactive", action="store_true", help="do not import this account")

    def handle(self, *args: Any, **options: Any) -> None:
        model_map: dict[str, str] = {}
        for pair in options["model_map"]:
            report_name, sep, upstream = pair.partition("=")
            if not sep or not report_name.strip() or not upstream.strip():
                raise CommandError(
                    f"--model-map takes REPORT_NAME=UPSTREAM_MODEL pairs; got {pair!r}."
                )
            model_map[report_name.strip()] = upstream.strip()
        try:
            account = provider_account_set(
                name=options["name"],
                provider=options["provider"],
                admin_key_env=options["admin_key_env"],
                admin_base_url=options["admin_base_url"],
                model_map=model_map,
                is_active=not options["inactive"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        mapped = f", {len(account.model_map)} model name(s) mapped" if account.model_map else ""
        state = "active" if account.is_active else "inactive"
        self.stdout.write(
            f"{account.name}: {account.provider} at {admin_base_url(account)}, admin key from "
            f"${account.admin_key_env}{mapped}, {state}"
        )
        if not os.environ.get(account.admin_key_env):
            self.stderr.write(
                self.style.WARNING(
                    f"Warning: ${account.admin_key_env} is not set here; the worker that "
                    "imports reports needs it."
                )
            )
