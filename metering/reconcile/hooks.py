"""The contract between reconciliation and billing: "these days' rows changed".

Metering does not import billing. Billing registers a handler at start-up (from its
AppConfig.ready) with `register_rows_changed_handler`; reconciliation calls
`rows_changed` after every run commits, with ALL the days that run reconciled, whether
their rows changed or not (the name is historical), and billing evaluates its alerts for
them. Handlers must be idempotent (billing's alerts are, through uuid5 event ids): the
same days come again every hour. With none registered nothing happens.
"""

import datetime as dt
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# (provider account id, the UTC days reconciled) -> None
RowsChangedHandler = Callable[[int, list[dt.date]], None]

_handlers: list[RowsChangedHandler] = []


def register_rows_changed_handler(handler: RowsChangedHandler) -> None:
    if handler not in _handlers:
        _handlers.append(handler)


def rows_changed(account_id: int, days: list[dt.date]) -> None:
    """Tell billing which days were reconciled; called after the rows' transaction
    committed (by the hourly sync and by `manage.py reconcile`).

    A handler's failure (or a worker killed before this runs) is logged and does not undo
    the rows: the next run that reconciles the same days calls the handlers again for
    them, changed or not, so nothing the handler would have done is lost for good.
    """
    for handler in list(_handlers):
        try:
            handler(account_id, sorted(days))
        except Exception:
            logger.exception("reconciliation rows-changed handler %r failed", handler)
