"""Invoices, from a period's rating to an issued document.

close.py (the steps of a period close, ending in ``invoice_finalize``: the one place an
invoice is finalized) · lines.py (invoice lines from a rating; the line field list) ·
adjustments.py (late usage, billed once on the next invoice) · numbering.py (gapless
numbers) · lifecycle.py (paid, void, uncollectible; credit notes) · recompute.py (every
line again from the raw ledger) · documents.py (PDF data, CSV exports) · pdf.py (the
renderer).
"""
