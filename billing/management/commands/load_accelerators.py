from django.core.management.base import BaseCommand

from billing.costs.catalogue import catalogue_load


class Command(BaseCommand):
    help = (
        "Load the accelerator catalogue (billing/data/accelerators.csv, with sources). Idempotent."
    )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        created = catalogue_load()
        self.stdout.write(f"catalogue loaded; {created} new cost basis version(s)")
