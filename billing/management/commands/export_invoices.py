from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from billing.invoicing.documents import invoice_lines_csv, invoices_csv
from billing.models import Invoice
from billing.pricing.periods import calendar_month


class Command(BaseCommand):
    help = (
        "Write invoices-YYYY-MM.csv and invoice-lines-YYYY-MM.csv for periods starting in a month."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--period", required=True, help="YYYY-MM")
        parser.add_argument("--out", default=".", help="directory to write into")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            month = calendar_month(options["period"])
        except ValueError as exc:
            raise CommandError(f"--period: {exc}") from exc
        invoices = (
            Invoice.objects.filter(period_start__gte=month.start, period_start__lt=month.end)
            .select_related("tenant")
            .prefetch_related("credit_notes")
            .order_by("number", "id")
        )
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        period = options["period"]
        (out / f"invoices-{period}.csv").write_text(invoices_csv(invoices))
        (out / f"invoice-lines-{period}.csv").write_text(invoice_lines_csv(invoices))
        self.stdout.write(
            f"{invoices.count()} invoices written to {out}/invoices-{period}.csv and invoice-lines-{period}.csv"
        )
