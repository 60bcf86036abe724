"""`manage.py route_set`: create or update a route (one target of an alias), say what is
doubtful, and (--check) call its upstream once."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ApplicationError
from metering.models import Route
from metering.proxy.check import route_check
from metering.services import (
    alias_target_get,
    route_provider_account_set,
    route_set,
    route_target_tune,
    route_warnings,
    tenant_allow_routes,
    tenant_get,
)


class Command(BaseCommand):
    help = (
        "Create or update the route behind a model alias (with --target, one of its "
        "targets). With --check, call the upstream once and report (alone: check the saved "
        "route)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias")
        parser.add_argument("--provider", choices=Route.Provider.values)
        parser.add_argument(
            "--base-url",
            help="openai: https://api.openai.com/v1; anthropic: https://api.anthropic.com; "
            "openai-compatible: the URL its OpenAI SDK clients use, e.g. http://HOST:8000/v1",
        )
        parser.add_argument("--upstream-model")
        parser.add_argument("--api-key-env", default="", help="env var holding the upstream key")
        parser.add_argument("--accelerator", default="", help="accelerator type label")
        parser.add_argument(
            "--provider-account",
            metavar="NAME|none",
            help="the provider account the upstream key belongs to (none: no account)",
        )
        parser.add_argument(
            "--upstream-key-id",
            metavar="ID",
            help="the provider's id of the upstream key, as its usage report names it",
        )
        parser.add_argument(
            "--target",
            metavar="NAME",
            help="the alias's target to write (default: its only one, 'default' when new)",
        )
        parser.add_argument(
            "--weight", type=int, help="share of traffic under the weighted policy (default 100)"
        )
        parser.add_argument(
            "--priority", type=int, help="lower goes first under fallback and failover (default 0)"
        )
        parser.add_argument(
            "--max-concurrent",
            type=int,
            metavar="N",
            help="calls in flight at once across all server processes (0: no limit)",
        )
        parser.add_argument(
            "--first-byte-timeout-ms",
            type=int,
            metavar="MS",
            help="fail over when no first byte arrives within MS (0: the idle read timeout)",
        )
        parser.add_argument(
            "--allow-tenant", nargs="*", default=[], metavar="TENANT", help="grant to tenants"
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="call the upstream once (one output token) and report; exit 1 if it fails",
        )
        parser.add_argument(
            "--timeout", type=float, default=10.0, help="seconds --check waits (default 10)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        defining = [options["provider"], options["base_url"], options["upstream_model"]]
        account = options["provider_account"]
        if account is not None and account.strip().lower() == "none":
            account = ""
        linking = account is not None or options["upstream_key_id"] is not None
        routing = {
            name: options[name]
            for name in ("weight", "priority", "max_concurrent", "first_byte_timeout_ms")
        }
        tuning = any(value is not None for value in routing.values())
        try:
            if not any(defining) and (linking or tuning):
                if linking:
                    route = route_provider_account_set(
                        alias=options["alias"],
                        provider_account=account,
                        upstream_key_id=options["upstream_key_id"],
                        target=options["target"],
                    )
                    self._linked(route)
                if tuning:
                    route = route_target_tune(
                        alias=options["alias"], target=options["target"], **routing
                    )
                    self.stdout.write(f"{route}: routing{_routing_facts(route, always=True)}")
            elif not any(defining) and options["check"]:
                saved = alias_target_get(alias=options["alias"], target=options["target"])
                if saved is None:
                    raise CommandError(f"No route {options['alias']!r} to check.")
                route = saved
            elif not all(defining):
                raise CommandError(
                    "--provider, --base-url and --upstream-model are required (alone, "
                    "--check checks the saved route, --provider-account/--upstream-key-id "
                    "and --weight/--priority/--max-concurrent/--first-byte-timeout-ms "
                    "change only those)."
                )
            else:
                route = route_set(
                    alias=options["alias"],
                    provider=options["provider"],
                    base_url=options["base_url"],
                    upstream_model=options["upstream_model"],
                    api_key_env=options["api_key_env"],
                    accelerator=options["accelerator"],
                    provider_account=account,
                    upstream_key_id=options["upstream_key_id"],
                    target=options["target"],
                    **routing,
                )
                self.stdout.write(
                    f"{route} -> {route.provider} {route.base_url} {route.upstream_model}"
                    f"{_routing_facts(route)}"
                )
                if linking:
                    self._linked(route)
            for ref in options["allow_tenant"]:
                tenant_allow_routes(tenant=tenant_get(ref=ref), aliases=[route.alias_id])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        for warning in route_warnings(route=route):
            self.stderr.write(self.style.WARNING(f"Warning: {warning}"))
        if options["check"]:
            self._check(route, options["timeout"])

    def _linked(self, route: Route) -> None:
        account = route.provider_account.name if route.provider_account else "none"
        key_id = route.upstream_key_id or "(not declared)"
        self.stdout.write(f"{route}: provider account {account}, upstream key id {key_id}")

    def _check(self, route: Route, timeout_s: float) -> None:  # float-ok: seconds
        result = route_check(route=route, timeout_s=timeout_s)
        status = "no answer" if result.status is None else f"HTTP {result.status}"
        latency = "" if result.latency_ms is None else f" in {result.latency_ms} ms"
        self.stdout.write(f"check: POST {result.url} -> {status}{latency}")
        if result.ok:
            self.stdout.write(self.style.SUCCESS(f"check passed: {result.diagnosis}"))
            return
        raise CommandError(f"check failed: {result.diagnosis}")


def _routing_facts(route: Route, *, always: bool = False) -> str:
    """The target's routing fields, when asked or when they differ from a lone default's."""
    if (
        not always
        and route.name == "default"
        and (route.weight, route.priority) == (100, 0)
        and route.max_concurrent is None
        and route.first_byte_timeout_ms is None
    ):
        return ""
    limits = [f"priority {route.priority}", f"weight {route.weight}"]
    if route.max_concurrent is not None:
        limits.append(f"max concurrent {route.max_concurrent}")
    if route.first_byte_timeout_ms is not None:
        limits.append(f"first byte within {route.first_byte_timeout_ms} ms")
    return f" ({', '.join(limits)})"
