"""`manage.py deployment_set`: record how fast an alias's target runs on an accelerator
type, and publish the serving cost rate that follows (deployment x cost basis)."""

from dataclasses import fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing.costs import formulas
from billing.costs.catalogue import accelerator_get, deployment_set
from config.errors import ApplicationError
from metering.models import ServingCostRate


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    return value


class Command(BaseCommand):
    help = (
        "Record a deployment of ALIAS (of one --target; default its only one) on an "
        "accelerator type, with its throughput, and publish its serving cost rate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias")
        parser.add_argument("--accelerator", required=True, help="accelerator type key")
        parser.add_argument("--target", metavar="NAME", help="the alias's target it serves")
        parser.add_argument(
            "--decode-tokens-per-s", type=_decimal, required=True, help="per accelerator"
        )
        parser.add_argument(
            "--prefill-tokens-per-s", type=_decimal, required=True, help="per accelerator"
        )
        parser.add_argument(
            "--utilization", type=_decimal, default=formulas.DEFAULT_UTILIZATION, help="(0, 1]"
        )
        parser.add_argument("--cache-read-factor", type=_decimal, default=Decimal("0.1"))
        parser.add_argument("--cache-write-factor", type=_decimal, default=Decimal("1.25"))
        parser.add_argument(
            "--effective-from",
            metavar="ISO",
            help="in force from this instant (UTC; default now), e.g. 2026-11-01T00:00:00Z",
        )

    def handle(self, *args: Any, **o: Any) -> None:
        at = timezone.now()
        if o["effective_from"]:
            try:
                at = datetime.fromisoformat(o["effective_from"].replace("Z", "+00:00"))
            except ValueError as exc:
                raise CommandError(f"--effective-from: {exc}") from exc
            if at.tzinfo is None:
                raise CommandError("--effective-from needs a time zone (e.g. a trailing Z).")
        throughput = {field.name: o[field.name] for field in fields(formulas.Throughput)}
        try:
            formulas.Throughput(**throughput)  # the cost model's checks, before storing
            deployment = deployment_set(
                alias=o["alias"],
                target=o["target"],
                accelerator=accelerator_get(o["accelerator"]),
                effective_from=at,
                **throughput,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        target = f"/{deployment.route.name}" if deployment.route else ""
        rate = (
            ServingCostRate.objects.filter(alias=deployment.alias, route=deployment.route)
            .order_by("-effective_from", "-id")
            .first()
        )
        self.stdout.write(
            f"deployment {deployment.alias}{target} v{deployment.version} on "
            f"{deployment.accelerator.key} from {at:%Y-%m-%d %H:%M} UTC"
        )
        if rate is not None:
            self.stdout.write(
                f"serving cost rate #{rate.pk} published: output {rate.output_usd:.6f} USD/M, "
                f"input {rate.input_usd:.6f} USD/M"
            )
