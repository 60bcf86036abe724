from django.core.management.base import BaseCommand, CommandError

from api.permissions import ROLES, staff_role_set
from config.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Give a staff user a role (operator, finance-read, finance-write) or take it away. "
        "A role is a Django group holding exactly its permissions; is_staff alone grants nothing."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=sorted(ROLES))
        parser.add_argument("--remove", action="store_true", help="take the role away")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            roles = staff_role_set(
                username=options["username"], role=options["role"], remove=options["remove"]
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{options['username']}: roles {', '.join(roles) or 'none'}")
