"""`manage.py tenant_member_set`: give a person console access to a tenant, with a role.

A new member, or `--reset-password`, gets a generated password printed once (the console
has no e-mail password reset: this command is it)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ApplicationError
from metering.models import TenantMember
from metering.services import tenant_get, tenant_member_set


class Command(BaseCommand):
    help = "Make USERNAME a console member of a tenant (id or name) with a role; prints a new password once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant")
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=TenantMember.Role.values)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--reset-password", action="store_true", help="set a new generated password"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = tenant_member_set(
                tenant=tenant_get(ref=options["tenant"]),
                username=options["username"],
                role=options["role"],
                email=options["email"],
                reset_password=options["reset_password"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        member = result.member
        self.stdout.write(f"{member.user.get_username()} is {member.role} of {member.tenant.name}")
        if result.password:
            self.stdout.write(f"password (shown once): {result.password}")
