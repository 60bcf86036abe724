from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.costs.calibration import calibrate
from billing.costs.catalogue import (
    accelerator_get,
    deployment_in_force,
    deployment_set,
    deployment_target,
)
from config.errors import ApplicationError
from metering.proxy.upstream import UpstreamError


class Command(BaseCommand):
    help = "Measure decode and prefill throughput of an OpenAI-compatible server; optionally apply it to a deployment."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
        parser.add_argument("--model", required=True)
        parser.add_argument("--concurrency", type=int, default=8)
        parser.add_argument("--duration", type=Decimal, default=Decimal(10), help="seconds")
        parser.add_argument("--api-key", default="calibration")
        parser.add_argument(
            "--accelerators", type=int, default=1, help="accelerators behind the server"
        )
        parser.add_argument(
            "--apply-to", metavar="ALIAS", help="record a new deployment of ALIAS with the figures"
        )
        parser.add_argument(
            "--target",
            metavar="NAME",
            help="the alias's target the deployment serves (default: its only one)",
        )
        parser.add_argument(
            "--accelerator", help="accelerator type of that deployment (default: the current one)"
        )
        parser.add_argument(
            "--prefill-tokens-per-s",
            type=Decimal,
            help="prefill figure when the server is too fast to measure it and no deployment has one",
        )

    def handle(self, *args, **o):  # type: ignore[no-untyped-def]
        try:
            run = calibrate(
                base_url=o["base_url"],
                model=o["model"],
                api_key=o["api_key"],
                concurrency=o["concurrency"],
                duration_s=o["duration"],
                accelerators=o["accelerators"],
            )
        except UpstreamError as exc:
            raise CommandError(f"calibration failed: {exc}") from exc
        self.stdout.write(
            f"calibration #{run.pk}: {run.requests} requests in {run.duration_s}s, "
            f"decode {run.decode_tokens_per_s} tokens/s per accelerator, "
            f"prefill {run.prefill_tokens_per_s or 'not measurable'} tokens/s, TTFT p50 {run.ttft_p50_ms} ms"
        )
        if not o["apply_to"]:
            return
        now = timezone.now()
        try:
            route = deployment_target(alias=o["apply_to"], target=o["target"])
            # a target's own deployment, else one made before any route served the alias
            current = deployment_in_force(alias=o["apply_to"], at=now, route=route) or (
                deployment_in_force(alias=o["apply_to"], at=now, route=None) if route else None
            )
            accelerator = (
                accelerator_get(o["accelerator"])
                if o["accelerator"]
                else (current.accelerator if current else None)
            )
            if accelerator is None:
                raise CommandError("--accelerator is required for an alias with no deployment yet")
            deployment = deployment_set(
                alias=o["apply_to"],
                accelerator=accelerator,
                effective_from=now,
                decode_tokens_per_s=run.decode_tokens_per_s,
                prefill_tokens_per_s=run.prefill_tokens_per_s
                or (current.prefill_tokens_per_s if current else None)
                or o["prefill_tokens_per_s"],
                utilization=current.utilization if current else Decimal("0.6"),
                calibration=run,
                target=o["target"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"deployment {deployment} recorded and its serving cost rate published")
