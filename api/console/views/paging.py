"""Newest-first pages of a console list: PAGE_SIZE rows, then an "older" link that
continues before the last row's id (as the REST API's cursor pages by id)."""

from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest

PAGE_SIZE = 50


def before_of(request: HttpRequest) -> int | None:
    """The `before` id of an "older" link (rows with a smaller id), or None."""
    value = request.GET.get("before", "")
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise Http404("No such page.")
    return int(value)


def newest_page(
    qs: QuerySet[Any], request: HttpRequest, size: int = PAGE_SIZE
) -> tuple[list[Any], int | None]:
    """Up to `size` rows newest first, and the id to continue before (None: no more)."""
    before = before_of(request)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    rows = list(qs.order_by("-pk")[: size + 1])
    more = rows[size - 1].pk if len(rows) > size else None
    return rows[:size], more
