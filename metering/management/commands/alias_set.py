"""`manage.py alias_set`: create or update an alias's routing (policy, effort rules,
attempts, active), print it with its targets, and say what is doubtful."""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ApplicationError
from metering.models import Alias, Route
from metering.services import alias_set, alias_warnings


class Command(BaseCommand):
    help = (
        "Create or update a model alias's routing across its targets: --policy, --rules-file "
        "(effort rules, a JSON list), --max-attempts (1: no failover), --inactive/--active."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias")
        parser.add_argument("--policy", choices=Alias.Policy.values)
        parser.add_argument(
            "--rules-file",
            metavar="PATH",
            help='effort rules, a JSON list: [{"name": "light", "efforts": ["low"], '
            '"max_input_tokens": 2000, "target": "mini"}, ...] ([] clears them)',
        )
        parser.add_argument(
            "--max-attempts", type=int, metavar="N", help="attempts per call across targets, 1-4"
        )
        state = parser.add_mutually_exclusive_group()
        state.add_argument("--inactive", action="store_true", help="stop serving the alias")
        state.add_argument("--active", action="store_true", help="serve the alias again")

    def handle(self, *args: Any, **options: Any) -> None:
        rules = None
        if options["rules_file"]:
            try:
                rules = json.loads(Path(options["rules_file"]).read_text(encoding="utf-8"))
            except OSError as exc:
                raise CommandError(f"Cannot read {options['rules_file']}: {exc.strerror}") from exc
            except (ValueError, UnicodeDecodeError) as exc:
                raise CommandError(f"{options['rules_file']} is not valid JSON: {exc}") from exc
        is_active = True if options["active"] else False if options["inactive"] else None
        try:
            alias = alias_set(
                name=options["alias"],
                policy=options["policy"],
                rules=rules,
                max_attempts=options["max_attempts"],
                is_active=is_active,
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        state = "active" if alias.is_active else "inactive"
        rules_text = f", {len(alias.rules)} rule(s)" if alias.rules else ""
        self.stdout.write(
            f"{alias.name}: policy {alias.policy}, max attempts {alias.max_attempts}"
            f"{rules_text}, {state}"
        )
        for route in Route.objects.filter(alias_id=alias.name).order_by("priority", "name"):
            flag = "" if route.is_active else " [inactive]"
            self.stdout.write(
                f"  {route.name}: priority {route.priority}, weight {route.weight}, "
                f"{route.provider} {route.upstream_model}{flag}"
            )
        for rule in alias.rules:
            efforts = ",".join(rule.get("efforts", [])) or "any effort"
            size = rule.get("max_input_tokens")
            limit = f", input <= {size} tokens" if size else ""
            self.stdout.write(f"  rule {rule['name']}: {efforts}{limit} -> {rule['target']}")
        for warning in alias_warnings(alias=alias):
            self.stderr.write(self.style.WARNING(f"Warning: {warning}"))
