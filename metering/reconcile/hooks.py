"""The contract between reconciliation and billing: "these days' rows changed".

Metering does not import billing. Billing registers a handler at start-up (from its
AppConfig.ready) with `register_rows_changed_handler`; reconciliation calls
`rows_changed` after it commits new or changed rows for an account's days, and billing
evaluates its alerts and actual costs for them. With none registered nothing happens.
"""

import datetime as dt
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# (provider account id, the UTC days whose rows changed) -> None
RowsChangedHandler = Callable[[int, list[dt.date]], None]

_handlers: list[RowsChangedHandler] = []


def register_rows_changed_handler(handler: RowsChangedHandler) -> None:
    if handler not in _handlers:
        _handlers.append(handler)


def rows_changed(account_id: int, days: list[dt.date]) -> None:
    """Tell billing which days changed; called after the rows' transaction committed.

    A handler's failure is logged and does not undo the rows: the handlers are
    idempotent and the next run calls them again for the same days.
    """
    for handler in list(_handlers):
        try:
            handler(account_id, sorted(days))
        except Exception:
            logger.exception("reconciliation rows-changed handler %r failed", handler)
