"""`manage.py route_target_remove`: deactivate one target of an alias (never its last)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ApplicationError
from metering.services import route_target_remove


class Command(BaseCommand):
    help = (
        "Deactivate one target of an alias: calls stop going to it within seconds. Refused "
        "for the alias's last active target and for a target its effort rules name."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias")
        parser.add_argument("target")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            route = route_target_remove(alias=options["alias"], target=options["target"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{route.alias_id}/{route.name}: inactive")
