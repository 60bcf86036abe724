"""Domain errors, for every package: `ApplicationError` and its kinds. The REST API maps
them to its JSON error shape (`api.errors`), the proxy to the caller's wire format."""

from typing import Any


class ApplicationError(Exception):
    """A failure the caller can act on. `code` is stable; `message` is for humans."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class NotFound(ApplicationError):
    status = 404
    code = "not_found"


class Conflict(ApplicationError):
    status = 409
    code = "conflict"
