"""The embedded default in one command: SQLite, in-process tasks, the simulator upstream.

The simulator runs as a child process and ends with this one, whatever ends it:
- SIGTERM, SIGHUP and SIGINT end the server gracefully (uvicorn's own shutdown; SIGHUP is
  turned into SIGTERM), then the simulator is terminated (killed after 10 s);
- on Linux the child also asks the kernel for SIGKILL when its parent dies
  (`prctl(PR_SET_PDEATHSIG)`), so even `kill -9` of this process ends it;
- and this process asks for SIGTERM when its own parent dies, so `kill -9` of `make run`
  ends the server gracefully and the simulator with it.
Both ports are checked before anything starts: a taken one is named, with the option that
changes it, instead of a bind error from deep inside a server.
"""

import ctypes
import ctypes.util
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from billing.demo import DemoSeed, demo_seed
from metering.demo import (
    DEMO_TENANT,
    QUICKSTART_KEY_NAME,
    SIMULATOR_KEY_ENV,
    NotTheDemoTenant,
    demo_routes_set,
    demo_tenant_set,
)
from metering.models import Tenant
from metering.services import api_key_create, tenant_member_set

# Console members of the demo tenant: (username, role). Passwords are printed once.
DEMO_MEMBERS = (("demo", "owner"), ("demo-dev", "developer"), ("demo-billing", "billing"))
SIMULATOR_HOST = "127.0.0.1"
# Signals that end `make run` the way a terminal or a process manager sends them.
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Command(BaseCommand):
    help = (
        "Migrate, seed the demo tenant with its routes and demo data, start the simulator, "
        "and serve Reckon."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--simulator-port", type=int, default=8100)
        parser.add_argument("--no-serve", action="store_true", help="seed only")
        parser.add_argument(
            "--no-demo",
            action="store_true",
            help="skip the demo data (plan, costs, balance, limits, usage history, invoices)",
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        # The quick start is development by definition: loopback, the built-in secret.
        os.environ.setdefault("RECKON_ENV", "development")
        if not options["no_serve"]:
            _require_free_port(options["host"], options["port"], "the Reckon server", "--port")
            _require_free_port(
                SIMULATOR_HOST, options["simulator_port"], "the simulator", "--simulator-port"
            )
        call_command("migrate", verbosity=0)
        os.environ.setdefault(SIMULATOR_KEY_ENV, "sim-local-key")
        sim_url = f"http://{SIMULATOR_HOST}:{options['simulator_port']}"
        try:
            if options["no_demo"]:
                aliases = demo_routes_set(simulator_url=sim_url)
                tenant = demo_tenant_set(aliases=aliases)
                seeded = None
            else:
                seeded = demo_seed(simulator_url=sim_url)
                aliases, tenant = seeded.aliases, seeded.tenant
        except NotTheDemoTenant as exc:
            raise CommandError(exc.message) from exc
        key = api_key_create(tenant=tenant, name=QUICKSTART_KEY_NAME).raw_key
        admin_password = self._ensure_admin()
        base = f"http://{options['host']}:{options['port']}"
        lines = [
            "",
            "Reckon is starting (embedded mode: SQLite, in-process tasks, simulator upstream).",
            f"  API key for tenant '{DEMO_TENANT}' (shown once): {key}",
            f"  OpenAI base URL:    {base}/v1     models: {', '.join(aliases)}",
            f"  Anthropic base URL: {base}",
            f"  Usage API:          {base}/api/v1/usage/summary",
            f"  Admin:              {base}/admin/  "
            + (f"(user admin, password {admin_password})" if admin_password else "(user admin)"),
            f"  Console:            {base}/console/",
        ]
        lines += self._members(tenant)
        if seeded is not None:
            lines += _demo_summary(seeded)
        self.stdout.write("\n".join([*lines, ""]))
        if options["no_serve"]:
            return
        previous = {signum: signal.signal(signum, _end_gracefully) for signum in _ENDING_SIGNALS}
        _end_with_parent(signal.SIGTERM)
        simulator = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_simulator",
                "--host",
                SIMULATOR_HOST,
                "--port",
                str(options["simulator_port"]),
            ],
            cwd=Path(settings.BASE_DIR),
            env=os.environ.copy(),
            preexec_fn=_child_ends_with_us(),  # noqa: PLW1509 - no threads yet
        )
        try:
            self._wait(sim_url + "/_sim/health", simulator, options["simulator_port"])
            call_command("serve", host=options["host"], port=options["port"])
        finally:
            # A second signal must not cut the cleanup short (the kernel would still end
            # the child on Linux, but elsewhere it would be left running).
            for signum in _ENDING_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            _stop(simulator)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _members(self, tenant: Tenant) -> list[str]:
        """The demo tenant's console sign-ins: a password for each new member (shown
        once), and how to reset one for members made by an earlier run."""
        lines = []
        for username, role in DEMO_MEMBERS:
            if (
                get_user_model()
                .objects.filter(username=username)
                .exclude(tenant_member__tenant=tenant)
                .exists()
            ):
                continue  # a user of that name that is not this tenant's member: leave it
            password = tenant_member_set(tenant=tenant, username=username, role=role).password
            lines.append(
                f"  Console sign-in:    {username} ({role}), "
                + (
                    f"password {password} (shown once)"
                    if password
                    else f"reset with `manage.py tenant_member_set {DEMO_TENANT} {username} "
                    f"--role {role} --reset-password`"
                )
            )
        return lines

    def _ensure_admin(self) -> str | None:
        user_model = get_user_model()
        if user_model.objects.filter(username="admin").exists():
            return None
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", "admin@example.com", password)
        return password

    def _wait(self, url: str, simulator: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if simulator.poll() is not None:
                raise CommandError(
                    f"The simulator exited (code {simulator.returncode}) before answering on "
                    f"port {port}; its error is above. {_port_advice(port, '--simulator-port')}"
                )
            try:
                urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback URL we built
                return
            except OSError:
                time.sleep(0.1)
        raise CommandError(f"The simulator did not answer at {url} within 30 s.")


def _demo_summary(seeded: DemoSeed) -> list[str]:
    invoices = ", ".join(i.number for i in seeded.invoices) or "none due yet"
    return [
        f"  Demo data (tenant '{DEMO_TENANT}', clearly marked): usage since "
        f"{seeded.history_since:%Y-%m-%d}, {seeded.records_written} records written now; "
        f"finalized invoices: {invoices}; seeded in {seeded.seconds:.1f} s.",
    ]


def _port_advice(port: int, option: str) -> str:
    return (
        f"If a previous `make run` is still running, stop it (`fuser -v {port}/tcp` names "
        f"it), or choose another port: `manage.py quickstart {option} N` "
        f"(`make run QUICKSTART_ARGS='{option} N'`)."
    )


def _require_free_port(host: str, port: int, what: str, option: str) -> None:
    """Fail plainly if `port` cannot be bound, the way uvicorn will bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise CommandError(f"Cannot use {host}:{port} for {what}: {exc.strerror}.") from exc
            raise CommandError(
                f"Port {port} on {host}, wanted for {what}, is already in use. "
                + _port_advice(port, option)
            ) from None


def _end_gracefully(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT/SIGHUP outside uvicorn's own handling: unwind, so `finally` blocks
    stop the simulator. While uvicorn serves it handles SIGTERM and SIGINT itself (a
    graceful shutdown, then it raises the signal again, which lands here); SIGHUP, which
    it ignores, is turned into SIGTERM to take the same path."""
    if signum == signal.SIGHUP:
        signal.raise_signal(signal.SIGTERM)
        return
    raise SystemExit(128 + signum)


def _prctl() -> Any | None:
    """libc's prctl on Linux, None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl


def _end_with_parent(signum: int) -> None:
    """Have the kernel send this process `signum` when its parent dies (Linux): `make
    run` killed with -9 must not leave this process serving with both ports taken."""
    prctl = _prctl()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)


def _child_ends_with_us() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the kernel SIGKILL the child when this process dies
    (Linux); None elsewhere. The simulator keeps no state worth a graceful exit."""
    prctl = _prctl()  # looked up before the fork: the child only calls it
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
