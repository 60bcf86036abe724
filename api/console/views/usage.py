"""Console page: the tenant's usage over time, by token class, alias and API key, with the
table behind each chart and its CSV.

The page reads exactly what `GET /api/v1/usage/series` answers for the same query: the
query goes through the REST API's own input serializer (`UsageSeriesQuery`, so the same
limits and errors apply), the rows come from the same selector (`usage_series`, one
call per grouping, as the API answers one query per grouping) through the same output
serializer (`UsageSeriesRowSerializer`), and every chart is built from those serialized
rows. The page names the REST query each chart equals.

Defaults: daily buckets over the last 30 UTC days (today included), hourly buckets over
the last 48 UTC hours (the current one included). The window's ends fall on whole hours,
so the series is served from the hourly rollups alone.
"""

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from rest_framework.exceptions import ErrorDetail, ValidationError

from api.console.access import USAGE_VIEW, member_page
from api.console.charts import Chart, Series, pivot
from api.console.views.common import page
from api.serializers.usage import UsageSeriesQuery, UsageSeriesRowSerializer
from config.db_router import reporting_reads
from metering.models import ApiKey, TenantMember
from metering.selectors import UsageFilter, usage_series
from metering.usage import LEDGER_FIELDS, TOKEN_CLASS_LABELS, TOKEN_CLASSES

SERIES_ENDPOINT = "/api/v1/usage/series"
# The window shown when none is asked for (ending at the end of today / this hour), and
# the span before an `until` given alone.
DEFAULT_SPAN = {"day": timedelta(days=30), "hour": timedelta(hours=48)}
# The granularities the page offers (the API's month buckets are left to the API).
PAGE_GRANULARITIES = ("day", "hour")
# The most keys the page's key filter lists: the chosen key, the keys with usage in the
# window, then the tenant's unrevoked keys, most recently used first. Any key of the tenant
# can still be asked for by id (`api_key=`, as in the REST API).
KEY_OPTIONS_MAX = 100
REASONING_LABEL = f"{TOKEN_CLASS_LABELS['reasoning']} (hidden)"
REASONING_NOTE = (
    "Reasoning tokens are hidden: the model spends them before answering, they are "
    "billed as output and never appear in the response. The hatched series."
)


@dataclass(frozen=True)
class SeriesWindow:
    """A validated usage series query of one tenant."""

    tenant_id: uuid.UUID
    granularity: str
    since: datetime
    until: datetime
    alias: str | None
    api_key_id: int | None

    @property
    def filters(self) -> UsageFilter:
        return UsageFilter(
            tenant_id=self.tenant_id,
            since=self.since,
            until=self.until,
            api_key_id=self.api_key_id,
            alias=self.alias,
        )

    def api_params(self, group_by: str | None = None) -> dict[str, str]:
        """The REST query string (as parameters) that answers the same numbers."""
        params = {
            "granularity": self.granularity,
            "since": instant_text(self.since),
            "until": instant_text(self.until),
        }
        if self.alias:
            params["alias"] = self.alias
        if self.api_key_id is not None:
            params["api_key"] = str(self.api_key_id)
        if group_by:
            params["group_by"] = group_by
        return params

    def api_query(self, group_by: str | None = None) -> str:
        return f"{SERIES_ENDPOINT}?{urlencode(self.api_params(group_by), safe=':')}"


class QueryInvalid(Exception):
    """The page's query failed the REST API's validation: one message per problem."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def instant_text(at: datetime) -> str:
    """An instant as the API writes it (ISO 8601, UTC as Z)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def default_window(granularity: str, now: datetime) -> tuple[datetime, datetime]:
    """The last 30 days / 48 hours, ending at the end of the current UTC day / hour."""
    now = now.astimezone(UTC)
    if granularity == "hour":
        until = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    else:
        until = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return until - DEFAULT_SPAN[granularity], until


def series_window(member: TenantMember, params: Mapping[str, str], now: datetime) -> SeriesWindow:
    """The page's GET parameters, defaulted, through the REST API's `UsageSeriesQuery`.
    Raises QueryInvalid with the serializer's messages, Http404 for an API key that is
    not the member's tenant's."""
    data = {
        k: params.get(k, "").strip() for k in ("granularity", "since", "until", "alias", "api_key")
    }
    data = {k: v for k, v in data.items() if v}
    data.setdefault("granularity", "day")
    if data["granularity"] not in PAGE_GRANULARITIES:
        raise QueryInvalid([f"granularity: choose one of {', '.join(PAGE_GRANULARITIES)}."])
    default_since, default_until = default_window(data["granularity"], now)
    if "until" in data and "since" not in data:  # the default span, ending there
        try:
            until = UsageSeriesQuery().fields["until"].run_validation(data["until"])
        except ValidationError as exc:
            raise QueryInvalid(_messages({"until": exc.detail})) from None
        default_since = until - DEFAULT_SPAN[data["granularity"]]
    data.setdefault("until", instant_text(default_until))
    data.setdefault("since", instant_text(default_since))
    query = UsageSeriesQuery(data=data)
    if not query.is_valid():
        raise QueryInvalid(_messages(query.errors))
    valid = query.validated_data
    api_key_id = valid.get("api_key")
    if (
        api_key_id is not None
        and not ApiKey.objects.filter(tenant_id=member.tenant_id, pk=api_key_id).exists()
    ):
        raise Http404("No such API key.")
    return SeriesWindow(
        tenant_id=member.tenant_id,
        granularity=valid["granularity"],
        since=valid["since"],
        until=valid["until"],
        alias=valid.get("alias"),
        api_key_id=api_key_id,
    )


def _messages(errors: Any, field: str = "") -> list[str]:
    """A serializer's errors as "field: message" lines."""
    if isinstance(errors, dict):
        return [m for name, errs in errors.items() for m in _messages(errs, str(name))]
    if isinstance(errors, list):
        return [m for e in errors for m in _messages(e, field)]
    text = str(errors) if isinstance(errors, ErrorDetail | str) else repr(errors)
    return [f"{field}: {text}" if field and field != "non_field_errors" else text]


def grouped_series_rows(
    window: SeriesWindow, group_bys: list[str | None]
) -> dict[str | None, list[dict[str, Any]]]:
    """What `GET /api/v1/usage/series` returns in `data` for the window under each
    grouping (its serializer; read where the API reads: the replica when configured)."""
    with reporting_reads():
        return {
            g: list(
                UsageSeriesRowSerializer(
                    usage_series(
                        filters=window.filters, granularity=window.granularity, group_by=g
                    ),
                    many=True,
                ).data
            )
            for g in group_bys
        }


def series_rows(window: SeriesWindow, group_by: str | None = None) -> list[dict[str, Any]]:
    """`GET /api/v1/usage/series`'s `data` for the window under one grouping."""
    return grouped_series_rows(window, [group_by])[group_by]


# --- charts, each from the serialized rows of one REST query -----------------------------


def chart_by_class(window: SeriesWindow, rows: list[dict[str, Any]]) -> Chart:
    """Stacked tokens per bucket, one series per token class; reasoning hatched."""
    return Chart(
        id="usage-by-class",
        title="Tokens by class",
        labels=[r["start"] for r in rows],
        series=[
            Series(
                key=name,
                label=REASONING_LABEL if name == "reasoning" else TOKEN_CLASS_LABELS[name],
                values=[r[LEDGER_FIELDS[name]] for r in rows],
                style="hidden" if name == "reasoning" else "default",
            )
            for name in TOKEN_CLASSES
        ],
        unit="tokens",
        label_header="Bucket start (UTC)",
        notes=(REASONING_NOTE, f"Same numbers as GET {window.api_query()}"),
    )


def chart_reasoning_share(window: SeriesWindow, rows: list[dict[str, Any]]) -> Chart:
    """Reasoning / (visible output + reasoning) per bucket, the API's 6-decimal share."""
    return Chart(
        id="usage-reasoning-share",
        title="Reasoning share of output",
        labels=[r["start"] for r in rows],
        series=[
            Series(
                key="reasoning_share_of_output",
                label="Reasoning share of output",
                values=[r["reasoning_share_of_output"] for r in rows],  # the API's own text
                style="line",
            )
        ],
        unit="fraction of output tokens",
        kind="line",
        stacked=False,
        label_header="Bucket start (UTC)",
        notes=(
            "Hidden reasoning as a fraction of all output tokens (visible output + "
            "reasoning); empty where the bucket has no output.",
            f"Same numbers as GET {window.api_query()} (reasoning_share_of_output)",
        ),
    )


def chart_by_alias(window: SeriesWindow, rows: list[dict[str, Any]]) -> Chart:
    labels, groups = pivot(rows, label_key="start", group_key="alias", value_key="total_tokens")
    return Chart(
        id="usage-by-alias",
        title="Tokens by alias",
        labels=labels,
        # aliases in the API's order: by Unicode code point
        series=[Series(key=alias, label=alias, values=groups[alias]) for alias in sorted(groups)],
        unit="tokens",
        label_header="Bucket start (UTC)",
        notes=(
            "All five token classes, reasoning included; empty: no usage of that alias.",
            f"Same numbers as GET {window.api_query('alias')} (total_tokens)",
        ),
    )


def chart_by_key(window: SeriesWindow, rows: list[dict[str, Any]]) -> Chart:
    labels, groups = pivot(
        rows, label_key="start", group_key="api_key_id", value_key="total_tokens"
    )
    names = {
        str(pk): f"{prefix}… {name}".strip()
        for pk, prefix, name in ApiKey.objects.filter(
            tenant_id=window.tenant_id, pk__in=[int(k) for k in groups]
        ).values_list("pk", "prefix", "name")
    }
    return Chart(
        id="usage-by-key",
        title="Tokens by API key",
        labels=labels,
        # keys in the API's order: by id
        series=[
            Series(key=key, label=names.get(key, key), values=groups[key])
            for key in sorted(groups, key=int)
        ],
        unit="tokens",
        label_header="Bucket start (UTC)",
        notes=(
            "All five token classes, reasoning included; empty: no usage by that key.",
            f"Same numbers as GET {window.api_query('api_key')} (total_tokens)",
        ),
    )


# chart id -> (group_by of its REST query, builder)
CHARTS: dict[str, tuple[str | None, Callable[[SeriesWindow, list[dict[str, Any]]], Chart]]] = {
    "usage-by-class": (None, chart_by_class),
    "usage-reasoning-share": (None, chart_reasoning_share),
    "usage-by-alias": ("alias", chart_by_alias),
    "usage-by-key": ("api_key", chart_by_key),
}


def usage_charts(window: SeriesWindow, only: str | None = None) -> dict[str, Chart]:
    """The page's charts (or just `only`), each from its REST query's rows."""
    wanted = {chart_id: spec for chart_id, spec in CHARTS.items() if only in (None, chart_id)}
    rows = grouped_series_rows(window, list(dict.fromkeys(g for g, _ in wanted.values())))
    return {chart_id: build(window, rows[g]) for chart_id, (g, build) in wanted.items()}


# --- views -------------------------------------------------------------------------------


def key_options(
    tenant_id: uuid.UUID, *, selected: str | int | None, seen: Iterable[str | int] = ()
) -> list[dict[str, Any]]:
    """The key filter's options, at most KEY_OPTIONS_MAX, by id: the `selected` key, the
    keys `seen` in the window, then unrevoked keys, most recently used first. Only keys of
    `tenant_id` (an id of another tenant's key or a non-number is left out)."""
    ids = [int(k) for k in (selected, *seen) if str(k).isdigit() and len(str(k)) <= 18]
    wanted = list(dict.fromkeys(ids))[:KEY_OPTIONS_MAX]
    mine = ApiKey.objects.filter(tenant_id=tenant_id)
    keys = list(mine.filter(pk__in=wanted)) if wanted else []
    room = KEY_OPTIONS_MAX - len(keys)
    if room > 0:
        keys += list(
            mine.filter(revoked_at__isnull=True)
            .exclude(pk__in=[k.pk for k in keys])
            .order_by(F("last_used_at").desc(nulls_last=True), "-pk")[:room]
        )
    return [
        {
            "id": str(k.pk),
            "label": f"{k.prefix}… {k.name}".strip(),
            "revoked": k.revoked_at is not None,
        }
        for k in sorted(keys, key=lambda k: k.pk)
    ]


def _form_context(
    member: TenantMember, params: Mapping[str, str], seen: Iterable[str] = ()
) -> dict[str, Any]:
    granularity = params.get("granularity") or "day"
    return {
        "granularities": PAGE_GRANULARITIES,
        "granularity": granularity,
        "api_keys": key_options(member.tenant_id, selected=params.get("api_key"), seen=seen),
        "form": {k: params.get(k, "") for k in ("since", "until", "alias", "api_key")},
    }


def _input_value(at: datetime, granularity: str) -> str:
    """A window end as the form's date (day) or datetime-local (hour) input shows it."""
    at = at.astimezone(UTC)
    return at.date().isoformat() if granularity == "day" else at.strftime("%Y-%m-%dT%H:%M")


def _bad_query(request: HttpRequest, member: TenantMember, messages: list[str]) -> HttpResponse:
    return page(
        request,
        "console/usage.html",
        {**_form_context(member, request.GET), "errors": messages},
        status=400,
    )


@require_GET
@member_page(USAGE_VIEW)
def usage(request: HttpRequest, member: TenantMember) -> HttpResponse:
    now = datetime.now(UTC)
    try:
        window = series_window(member, request.GET, now)
    except QueryInvalid as exc:
        return _bad_query(request, member, exc.messages)
    charts = usage_charts(window)
    seen = [s.key for s in charts["usage-by-key"].series]
    context = _form_context(member, request.GET, seen)
    context["form"] = {
        "since": _input_value(window.since, window.granularity),
        "until": _input_value(window.until, window.granularity),
        "alias": window.alias or "",
        "api_key": "" if window.api_key_id is None else str(window.api_key_id),
    }
    context["granularity"] = window.granularity
    aliases = charts["usage-by-alias"].series
    return page(
        request,
        "console/usage.html",
        {
            **context,
            "window": window,
            "since_text": instant_text(window.since),
            "until_text": instant_text(window.until),
            "charts": list(charts.values()),
            "alias_options": [s.key for s in aliases],
            "csv_query": urlencode(window.api_params()),
        },
    )


@require_GET
@member_page(USAGE_VIEW)
def usage_csv(request: HttpRequest, member: TenantMember) -> HttpResponse:
    chart_id = request.GET.get("chart", "")
    if chart_id not in CHARTS:
        return _bad_query(
            request,
            member,
            [f"chart: unknown chart {chart_id!r}; one of {', '.join(CHARTS)}."],
        )
    try:
        window = series_window(member, request.GET, datetime.now(UTC))
    except QueryInvalid as exc:
        return _bad_query(request, member, exc.messages)
    chart = usage_charts(window, only=chart_id)[chart_id]
    response = HttpResponse(chart.csv(), content_type="text/csv; charset=utf-8")
    since, until = window.since.astimezone(UTC), window.until.astimezone(UTC)
    stamp = f"{since:%Y%m%dT%H%MZ}-{until:%Y%m%dT%H%MZ}"
    response["Content-Disposition"] = (
        f'attachment; filename="{chart_id}-{window.granularity}-{stamp}.csv"'
    )
    return response
