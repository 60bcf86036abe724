"""A real Celery worker that kills itself with SIGKILL at a named invoicing checkpoint
(`RECKON_CHAOS_KILL_AT`), the moment a close has done its work but not committed it:
`python -m tests.chaos.crashing_worker worker ...` takes the `celery` command's arguments."""

import os
import signal
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from celery.bin.celery import main  # noqa: E402

from billing.invoicing import close as invoicing  # noqa: E402

KILL_AT = os.environ["RECKON_CHAOS_KILL_AT"]
_checkpoint = invoicing.checkpoint


def checkpoint(name: str) -> None:
    if name == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    _checkpoint(name)


invoicing.checkpoint = checkpoint

if __name__ == "__main__":
    sys.argv = ["celery", "-A", "config", *sys.argv[1:]]
    sys.exit(main())
