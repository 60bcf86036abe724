"""Gapless invoice and credit-note numbers: ``<prefix>-<year>-<000042>``, one counter row
per (prefix, year), taken inside the transaction that uses them (a rollback gives them
back, so a re-run issues the same numbers)."""

from django.db import connection

from billing.models import InvoiceSequence


def next_numbers(*, prefix: str, year: int, count: int) -> list[str]:
    """Take the next `count` gapless numbers in one statement. It must run inside the
    transaction that uses them: the sequence row stays locked until that transaction
    ends, and a rollback gives the numbers back."""
    assert connection.in_atomic_block, "numbers are taken inside the finalizing transaction"
    table = InvoiceSequence._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (prefix, year, last_number) VALUES (%s, %s, %s)"  # noqa: S608
            f" ON CONFLICT (prefix, year) DO UPDATE SET last_number = {table}.last_number + %s"
            " RETURNING last_number",
            [prefix, year, count, count],
        )
        (last,) = cursor.fetchone()
    return [f"{prefix}-{year}-{n:06d}" for n in range(last - count + 1, last + 1)]


def next_number(*, prefix: str, year: int) -> str:
    (number,) = next_numbers(prefix=prefix, year=year, count=1)
    return number
