"""The embedded default in one command: SQLite, in-process tasks, the simulator upstream."""

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from metering.models import Tenant
from metering.services import api_key_create, route_set, tenant_allow_routes, tenant_create

DEMO_TENANT = "demo"
# The simulator wants a credential like any provider; routes name this variable.
SIMULATOR_KEY_ENV = "RECKON_SIMULATOR_API_KEY"


class Command(BaseCommand):
    help = "Migrate, seed a demo tenant and routes, start the simulator, and serve Reckon."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--simulator-port", type=int, default=8100)
        parser.add_argument("--no-serve", action="store_true", help="seed only")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        # The quick start is development by definition: loopback, the built-in secret.
        os.environ.setdefault("RECKON_ENV", "development")
        call_command("migrate", verbosity=0)
        os.environ.setdefault(SIMULATOR_KEY_ENV, "sim-local-key")
        sim_url = f"http://127.0.0.1:{options['simulator_port']}"
        aliases = self._seed_routes(sim_url)
        tenant = Tenant.objects.filter(name=DEMO_TENANT).first() or tenant_create(name=DEMO_TENANT)
        tenant_allow_routes(tenant=tenant, aliases=aliases)
        key = api_key_create(tenant=tenant, name="quickstart").raw_key
        admin_password = self._ensure_admin()
        base = f"http://{options['host']}:{options['port']}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Reckon is starting (embedded mode: SQLite, in-process tasks, simulator upstream).",
                    f"  API key for tenant '{DEMO_TENANT}' (shown once): {key}",
                    f"  OpenAI base URL:    {base}/v1     models: {', '.join(aliases)}",
                    f"  Anthropic base URL: {base}",
                    f"  Usage API:          {base}/api/v1/usage/summary",
                    f"  Admin:              {base}/admin/  "
                    + (
                        f"(user admin, password {admin_password})"
                        if admin_password
                        else "(user admin)"
                    ),
                    "",
                ]
            )
        )
        if options["no_serve"]:
            return
        simulator = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_simulator",
                "--port",
                str(options["simulator_port"]),
            ],
            cwd=Path(settings.BASE_DIR),
            env=os.environ.copy(),
        )
        try:
            self._wait(sim_url + "/_sim/health")
            call_command("serve", host=options["host"], port=options["port"])
        finally:
            simulator.terminate()
            simulator.wait(timeout=10)

    def _seed_routes(self, sim_url: str) -> list[str]:
        routes = [
            ("sim-reasoner", "openai", sim_url + "/v1", "sim-reasoner", "nvidia-h100-sxm"),
            ("sim-thinker", "anthropic", sim_url + "/v1", "sim-thinker", "nvidia-h200-sxm"),
            (
                "sim-vllm-r1",
                "openai-compatible",
                sim_url + "/quirks/vllm/v1",
                "sim-r1",
                "amd-mi300x",
            ),
        ]
        for alias, provider, base_url, upstream, accelerator in routes:
            route_set(
                alias=alias,
                provider=provider,
                base_url=base_url,
                upstream_model=upstream,
                api_key_env=SIMULATOR_KEY_ENV,
                accelerator=accelerator,
            )
        return [r[0] for r in routes]

    def _ensure_admin(self) -> str | None:
        user_model = get_user_model()
        if user_model.objects.filter(username="admin").exists():
            return None
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser("admin", "admin@example.com", password)
        return password

    def _wait(self, url: str) -> None:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback URL we built
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the simulator did not come up at {url}")
