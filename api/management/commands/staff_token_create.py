from datetime import datetime

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api.staff_tokens import staff_token_create


class Command(BaseCommand):
    help = (
        "Create a personal API token for a staff user and print it (shown only once). "
        "Send it as `Authorization: Bearer rks_...`; revoke it in the admin."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("username")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--expires-at", type=datetime.fromisoformat, help="ISO 8601 with a UTC offset"
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        expires_at = options["expires_at"]
        if expires_at is not None and expires_at.tzinfo is None:
            raise CommandError("--expires-at needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00")
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None or not user.is_active:
            raise CommandError(f"no active user {options['username']!r}")
        if not user.is_staff:
            raise CommandError(f"{options['username']!r} is not staff")
        created = staff_token_create(user=user, name=options["name"], expires_at=expires_at)
        self.stdout.write(created.raw_token)
