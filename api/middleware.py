"""Django middleware that keeps two infrastructure failures in the API's JSON error shape
(`api.errors`) instead of Django's HTML pages or a 500.

- A Host header outside ALLOWED_HOSTS is a 400 before anything builds a URL from it (a
  forged Host never reaches a pagination link).
- A request that waited RECKON_DB_POOL_TIMEOUT seconds for a pooled database connection
  is a 503 with Retry-After: the pool is the bound that keeps a burst of REST calls from
  exhausting PostgreSQL's max_connections, and a caller that hits it may retry.
"""

from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from psycopg_pool import PoolTimeout

from api.errors import JSON_PATH_PREFIXES, json_error

DATABASE_BUSY_RETRY_AFTER_SECONDS = 1


class HostValidationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(JSON_PATH_PREFIXES):
            try:
                request.get_host()
            except DisallowedHost:
                # The rejected name is not echoed back.
                return json_error(400, "bad_host", "The Host header names no host served here.")
        return self.get_response(request)


def is_pool_timeout(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and isinstance(exc.__cause__, PoolTimeout)


class DatabaseBusyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_pool_timeout(exception):
            return None
        response = json_error(
            503, "database_busy", "Every database connection is busy; retry shortly."
        )
        response["Retry-After"] = str(DATABASE_BUSY_RETRY_AFTER_SECONDS)
        return response
