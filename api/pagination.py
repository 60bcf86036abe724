"""Cursor pagination over primary keys. A cursor is opaque to callers; a forged or
damaged one is a 404 "Invalid cursor", never a server error."""

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
