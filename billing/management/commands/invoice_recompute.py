from django.core.management.base import BaseCommand, CommandError

from billing.invoicing.recompute import invoice_recompute
from billing.models import Invoice


class Command(BaseCommand):
    help = "Recompute invoices from the raw usage ledger and report any difference."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("invoice", nargs="+", help="invoice number or id")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        failures = 0
        for ref in options["invoice"]:
            invoice = Invoice.objects.filter(number=ref).first() or (
                Invoice.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
            )
            if invoice is None:
                raise CommandError(f"No invoice {ref}.")
            differences = invoice_recompute(invoice=invoice)
            if differences:
                failures += 1
                self.stdout.write(f"{invoice}: {len(differences)} difference(s)")
                for d in differences:
                    self.stdout.write(
                        f"  line {d.position} {d.field}: invoiced {d.invoiced}, recomputed {d.recomputed}"
                    )
            else:
                self.stdout.write(f"{invoice}: reproducible from the ledger")
        if failures:
            raise CommandError(f"{failures} invoice(s) differ from the ledger")
