"""Cursor pagination over primary keys (or days, then primary keys). A cursor is opaque to
callers; a forged or damaged one is a 404 "Invalid cursor", never a server error."""

from datetime import date

from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from api.serializers.fields import MAX_BIGINT


class IdCursorPagination(CursorPagination):
    """Newest first by primary key: stable under concurrent inserts."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF checks a cursor's encoding and offset; the position, a primary key here,
        goes into the query as it came, so it must be one."""
        cursor = super().decode_cursor(request)
        position = cursor.position if cursor is not None else None
        if position is not None and not (
            position.isascii() and position.isdigit() and int(position) <= MAX_BIGINT
        ):
            raise NotFound(self.invalid_cursor_message)
        return cursor


class DayCursorPagination(CursorPagination):
    """Oldest day first, then by primary key (rows listed per day, e.g. reconciliation):
    the position is a day, which goes into the query only if it is one."""

    ordering = ("day", "id")
    page_size = 500
    page_size_query_param = "limit"
    max_page_size = 5000

    def decode_cursor(self, request: Request) -> Cursor | None:
        cursor = super().decode_cursor(request)
        position = cursor.position if cursor is not None else None
        if position is not None:
            try:
                date.fromisoformat(position)
            except ValueError:
                raise NotFound(self.invalid_cursor_message) from None
            if len(position) != len("YYYY-MM-DD"):
                raise NotFound(self.invalid_cursor_message)
        return cursor
