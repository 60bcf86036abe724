"""Scenario 4: a Celery worker killed -9 in the middle of a month close."""

import sys

import pytest

from tests.chaos.conftest import Proc, World, manage, report, wait_for

pytestmark = pytest.mark.chaos
TENANTS = 12
AS_OF = "2026-10-05T00:00:00+00:00"  # September 2026 is due
WORKER_ARGS = ["worker", "--pool", "solo", "-Q", "default,billing,webhooks"]
WORKER_ARGS += ["--loglevel", "info", "--without-gossip", "--without-mingle"]
WORKER_ARGS += ["--without-heartbeat"]
INVOICES = """
    SELECT t.name, i.period_start::date::text, i.number, i.status, i.total_minor,
           array_agg(l.kind || ':' || l.amount_minor ORDER BY l.position)::text
    FROM billing_invoice i JOIN metering_tenant t ON t.id = i.tenant_id
    LEFT JOIN billing_invoiceline l ON l.invoice_id = i.id
    GROUP BY t.name, i.period_start, i.number, i.status, i.total_minor ORDER BY t.name
"""


def worker_ready(worker: Proc) -> None:
    """On the Redis transport a message sent before a worker has bound its queues is
    dropped: send only once it says it is ready."""
    wait_for("the worker to be ready", lambda: "ready." in worker.tail(5) or not worker.alive(), 60)
    assert worker.alive(), worker.tail()


def close_due(world: World) -> None:
    """What beat does every hour, sent through the project's own Celery app."""
    send = (
        "from config.celery import app; app.send_task('billing.tasks.close_due_periods', "
        f"kwargs={{'as_of': '{AS_OF}'}}, queue='billing')"
    )
    manage(["manage.py", "shell", "-c", send], {**world.env(), "CELERY_TASK_ALWAYS_EAGER": "false"})


@pytest.mark.parametrize("kill_at", ["after_lines", "after_finalize"])
def test_worker_killed_mid_close_then_rerun_gives_the_same_invoices(
    world: World, kill_at: str
) -> None:
    world.seed("billing", "--tenants", str(TENANTS))
    reference = world.db + "_ref"
    world.pg.execute(f"CREATE DATABASE {reference} TEMPLATE {world.db}")
    # the reference: the same close with nothing killed, tasks in-process
    manage(
        [
            "manage.py",
            "shell",
            "-c",
            f"from billing.tasks import close_due_periods; close_due_periods('{AS_OF}')",
        ],
        {**world.env(), "DATABASE_URL": world.pg.url(reference), "CELERY_BROKER_URL": "memory://"},
    )
    expected = world.pg.query(INVOICES, reference)

    crashing = world.spawn(
        "worker-crashing",
        [sys.executable, "-m", "tests.chaos.crashing_worker", *WORKER_ARGS],
        RECKON_CHAOS_KILL_AT=kill_at,
        CELERY_TASK_ALWAYS_EAGER="false",
    )
    worker_ready(crashing)
    close_due(world)
    try:
        wait_for("the worker to be killed at " + kill_at, lambda: not crashing.alive(), 90)
    except AssertionError:
        raise AssertionError(f"worker not killed at {kill_at}:\n{crashing.tail()}") from None
    killed_with = crashing.popen.returncode
    left_after_kill = world.ledger("SELECT count(*) FROM billing_invoice")[0][0]

    worker = world.spawn(
        "worker",
        [sys.executable, "-m", "celery", "-A", "config", *WORKER_ARGS],
        CELERY_TASK_ALWAYS_EAGER="false",
    )
    worker_ready(worker)
    close_due(world)  # the next hourly fan-out
    wait_for(
        f"{len(expected)} invoices after the re-run",
        lambda: (
            world.ledger("SELECT count(*) FROM billing_invoice WHERE status = 'finalized'")[0][0]
            >= len(expected)
        ),
        120,
    )
    close_due(world)  # and once more: nothing new
    got = world.ledger(INVOICES)
    numbers = sorted(row[2] for row in got)
    gapless = [f"RK-2026-{n:06d}" for n in range(1, len(got) + 1)]
    report(
        f"Celery worker killed -9 at {kill_at} during a month close of {TENANTS} tenants",
        worker_exit_code=killed_with,
        invoices_left_by_the_killed_close=left_after_kill,
        invoices_reference=len(expected),
        invoices_after_rerun=len(got),
        numbers=f"{numbers[0]} .. {numbers[-1]}" if numbers else None,
        total_minor_reference=sum(r[4] for r in expected),
        total_minor_after_rerun=sum(r[4] for r in got),
    )
    assert killed_with == -9, "the worker died by SIGKILL at the checkpoint"
    assert left_after_kill == 0, "a killed close leaves nothing half-done"
    assert len(expected) == TENANTS
    assert got == expected, "same invoices, numbers, lines and totals as a close never killed"
    assert numbers == gapless, "no gap in numbering"
