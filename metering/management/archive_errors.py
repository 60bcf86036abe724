"""The one way the ledger's archive commands turn a failure into a command error."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError
from django.db import DatabaseError

from config.errors import ApplicationError

logger = logging.getLogger(__name__)


@contextmanager
def archive_command_errors(action: str) -> Iterator[None]:
    """Bad input and refusals as their message (with any differences found, one a line);
    a database failure as one line, its details (and any address) in the log only."""
    try:
        yield
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    except ApplicationError as exc:
        details = (exc.extra or {}).get("differences", [])
        raise CommandError("\n".join([exc.message, *details])) from exc
    except DatabaseError as exc:
        logger.exception("ledger %s failed", action)
        raise CommandError(
            f"The database failed during the {action} ({type(exc).__name__}); see the log."
        ) from exc
