"""Serializers for reconciliation against the providers' reports: the query of the list
and its CSV, and one row as the API answers it (counts as integers, ratios as strings)."""

import json
from typing import Any

from rest_framework import serializers

from api.serializers.fields import PeriodField
from metering.models import ProviderAccount, ReconciliationRow

# The columns of a row, in the order of the CSV.
RECONCILIATION_FIELDS = (
    "account",
    "day",
    "upstream_model",
    "api_key_id",
    "token_class",
    "ours",
    "theirs",
    "drift",
    "relative_drift",
    "status",
    "reasoning",
    "drift_equals_reasoning",
    "report_revision",
    "computed_at",
    "explain",
)


class ReconciliationQuery(serializers.Serializer):
    period = PeriodField(help_text="YYYY-MM: the UTC days of this month")
    account = serializers.CharField(
        max_length=100, required=False, help_text="provider account name; all when absent"
    )
    status = serializers.ChoiceField(choices=ReconciliationRow.Status.choices, required=False)
    model = serializers.CharField(max_length=200, required=False, help_text="upstream model")

    def validate_account(self, value: str) -> ProviderAccount:
        account = ProviderAccount.objects.filter(name=value).first()
        if account is None:
            raise serializers.ValidationError("No provider account has this name.")
        return account


class ReconciliationRowOutput(serializers.ModelSerializer):
    account = serializers.CharField(source="account.name")
    # drift / theirs to 12 places, as a string (null when theirs is 0 or not reported)
    relative_drift = serializers.DecimalField(
        max_digits=30, decimal_places=12, coerce_to_string=True, allow_null=True
    )

    class Meta:
        model = ReconciliationRow
        fields = RECONCILIATION_FIELDS


def reconciliation_csv_values(data: dict[str, Any]) -> list[Any]:
    """One CSV line of a row's API data (explain as compact JSON)."""
    return [
        json.dumps(data[f], separators=(",", ":"), sort_keys=True) if f == "explain" else data[f]
        for f in RECONCILIATION_FIELDS
    ]
