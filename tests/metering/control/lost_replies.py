"""A control store whose Redis runs a script but whose reply never reaches the caller."""

from typing import Any

from metering.control import store as control_store
from metering.control.store import ControlStore


def lose_replies(store: ControlStore, script: Any, message: str) -> Any:
    """From now on each run of `script` that Redis grants (reply `[1, ...]`) takes effect
    there, but the caller gets `ControlUnavailable(message)` instead of the reply. Returns
    the real runner, to put back as `store._redis.run`."""
    real = store._redis.run

    async def reply_lost(ran: Any, keys: Any, args: Any) -> Any:
        result = await real(ran, keys, args)
        if ran is script and result[0] == 1:
            raise control_store.ControlUnavailable(message)
        return result

    store._redis.run = reply_lost  # type: ignore[method-assign]
    return real
