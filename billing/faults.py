"""Named points where a test injects a crash (settings.RECKON_FAULT_POINTS; empty in
production). Its own module so every writer that marks a point (close, the Stripe push)
can import it without importing the others."""

from django.conf import settings


class InjectedFault(RuntimeError):
    """Raised at a named checkpoint when a test asks for a crash there."""


def checkpoint(name: str) -> None:
    if name in settings.RECKON_FAULT_POINTS:
        raise InjectedFault(f"injected fault at {name}")
