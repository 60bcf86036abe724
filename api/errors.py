"""One stable JSON error shape for the REST API: {"error": {"code", "message", "detail"}}.

DRF views answer through `exception_handler`. What Django itself refuses before or around
a view (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, a disallowed Host, an unknown path, an
unhandled error) goes through the `handler400/403/404/500` below, named in config.urls:
under /api/ and /webhooks/ they answer the same JSON shape (a 500 names no exception);
elsewhere (the admin) Django's own pages."""

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from api.console.views.auth import forbidden as console_forbidden
from api.console.views.auth import not_found as console_not_found
from config.errors import ApplicationError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(
            {"error": {"code": exc.code, "message": exc.message, "detail": exc.extra}},
            status=exc.status,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        code, message, detail = "invalid_request", "The request is invalid.", response.data
    else:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        code = codes if isinstance(codes, str) else "error"
        data = response.data if isinstance(response.data, dict) else {}
        message, detail = str(data.get("detail", exc)), None
    response.data = {"error": {"code": code, "message": message, "detail": detail}}
    return response


# Paths whose callers are programs: they get JSON errors, never an HTML page.
JSON_PATH_PREFIXES = ("/api/", "/webhooks/")


def _wants_json(request: HttpRequest) -> bool:
    return f"{request.path}/".startswith(JSON_PATH_PREFIXES)  # "/api" itself too


def json_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "message": message, "detail": None}}, status=status
    )


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not _wants_json(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return json_error(400, "request_too_large", "The request body is larger than allowed.")
    if isinstance(exception, TooManyFieldsSent):
        return json_error(400, "too_many_fields", "The request has more fields than allowed.")
    return json_error(400, "bad_request", "The request is malformed.")


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/console/"):
        return console_forbidden(request, exception)
    if not _wants_json(request):
        return defaults.permission_denied(request, exception)
    return json_error(403, "permission_denied", "You may not do this.")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/console/"):
        return console_not_found(request, exception)
    if not _wants_json(request):
        return defaults.page_not_found(request, exception)
    return json_error(404, "not_found", "No such endpoint.")


def server_error(request: HttpRequest) -> HttpResponse:
    if not _wants_json(request):
        return defaults.server_error(request)
    return json_error(500, "internal_error", "The server failed to answer; the error is logged.")
