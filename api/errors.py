"""One stable JSON error shape for the REST API: {"error": {"code", "message", "detail"}}."""

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from billing.pricing import InvalidPlanError
from metering.errors import ApplicationError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, InvalidPlanError):
        issues = [
            {"severity": i.severity, "code": i.code, "message": i.message} for i in exc.issues
        ]
        return Response(
            {"error": {"code": "plan_invalid", "message": str(exc), "detail": {"issues": issues}}},
            status=400,
        )
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
