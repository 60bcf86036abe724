"""Import a provider account's usage and cost reports into report buckets (decision 0116).

`provider_reports_import` reads one window, every page of every report asked for, then
replaces the window's buckets in one transaction. `provider_import_window` says which
window an hourly run should read.

Invariants:
- Every HTTP answer (each page, and each failed attempt that got a response) is stored as
  a `ProviderReportFetch` in its own transaction as it arrives: the audit log survives a
  failed run. Its query holds no credential (the key travels in a header).
- A run changes buckets only once every page of every report asked for has been read and
  parsed; a run with any failed page changes no bucket.
- Buckets are upserted on their key. A bucket whose content hash is unchanged is not
  touched, so re-importing the same report changes nothing and writes no revision. A
  changed bucket first copies its old values to `ProviderBucketRevision` ("changed"),
  then takes the new ones with `revision + 1`. A bucket of the window that the report no
  longer lists is zeroed the same way ("removed"); it is never deleted.
- Retries: a 429, a 5xx or no response at all is retried up to
  RECKON_PROVIDER_RETRY_ATTEMPTS times per page, after `retry-after` when the answer gives
  it (a wait longer than RECKON_PROVIDER_RETRY_MAX_SECONDS fails the run instead: the next
  run tries again), else after an exponential backoff with full jitter
  (RECKON_PROVIDER_RETRY_BASE_SECONDS doubling, capped at RECKON_PROVIDER_RETRY_MAX_SECONDS).
  Any other 4xx fails the run at once.
- `account.last_error` says why the last run failed, never with the key or a URL; a good
  run clears it and sets `last_import_at`. A missing key variable fails before any call.
- Runs of one account run one at a time, read to apply (`metering.providers.locks`: a run
  that finds the account busy does nothing and says so), and the account row is locked
  while applying.
- Every bucket's values are checked against their columns before any is applied; a page
  holding a NUL character or a value too long or too large fails the run cleanly.
- A page larger than RECKON_PROVIDER_MAX_PAGE_BYTES is refused (not retried).
"""

import datetime as dt
import hashlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from config.errors import ApplicationError, Conflict
from metering.models import (
    ProviderAccount,
    ProviderBucketRevision,
    ProviderCostBucket,
    ProviderReport,
    ProviderReportFetch,
    ProviderUsageBucket,
)
from metering.providers import anthropic_reports, openai_reports
from metering.providers.accounts import admin_base_url
from metering.providers.http import AdminBodyTooLarge, AdminResponse, AdminUnreachable, admin_get
from metering.providers.locks import account_run_lock
from metering.providers.reports import (
    BIGINT_MAX,
    COST,
    COST_KEY,
    USAGE,
    USAGE_KEY,
    CostRow,
    Page,
    ReportFormatError,
    UsageRow,
    canonical_order,
    content_hash,
    error_message,
    jsonable,
)

logger = logging.getLogger(__name__)

REPORTS = (USAGE, COST)
# A day stays in the re-read window until this long after its buckets last changed.
CHANGE_SETTLE = dt.timedelta(hours=48)
# Pages one report may take in one run; more means the API keeps paginating in a loop.
MAX_PAGES = 1000
# The content hash of a bucket zeroed because the report no longer lists it.
REMOVED_HASH = "removed"
WIDTH_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400}
_USAGE_FIELDS = ("requests", "input_uncached_tokens", "cache_read_tokens", "cache_write_tokens")
_USAGE_VALUES = (*_USAGE_FIELDS, "output_tokens")

# Waiting between attempts (a name tests can replace to record the waits).
sleep: Callable[[float], None] = time.sleep


class ProviderImportError(ApplicationError):
    """The import could not be done; nothing in the buckets changed."""

    status = 502
    code = "provider_import_failed"


class ProviderAccountBusy(Conflict):
    """Another run holds the account (`metering.providers.locks`); this one did nothing."""


@dataclass
class ImportResult:
    account: str
    run_id: uuid.UUID
    since: dt.datetime  # the window read: [since, until), aligned to the buckets
    until: dt.datetime
    pages: int = 0  # pages read (successful answers)
    attempts: int = 0  # HTTP requests made, retries included
    created: int = 0
    changed: int = 0  # buckets created or whose values changed
    removed: int = 0
    changed_days: set[dt.date] = field(default_factory=set)


def _api(account: ProviderAccount) -> ModuleType:
    if account.provider == ProviderAccount.Provider.OPENAI:
        return openai_reports
    if account.provider == ProviderAccount.Provider.ANTHROPIC:
        return anthropic_reports
    raise ProviderImportError(f"Account {account.name!r} has an unknown provider.")


# ---- the window ---------------------------------------------------------------------------------


def provider_import_window(
    *, account: ProviderAccount, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """[since, until) an hourly run reads: the last RECKON_PROVIDER_REPORT_SETTLE_DAYS
    closed UTC days plus today, reaching back to the earliest day with a bucket that
    changed in the last 48 hours (a bucket that keeps changing keeps being read; a new
    bucket is not a change)."""
    now = now.astimezone(dt.UTC)
    today = _day_start(now)
    since = today - dt.timedelta(days=max(0, int(settings.RECKON_PROVIDER_REPORT_SETTLE_DAYS)))
    # Only a bucket that CHANGED (revised or removed: revision > 1) extends the window; a
    # bucket merely created (a backfill, a new day) does not.
    recent = Q(account=account, changed_at__gte=now - CHANGE_SETTLE, revision__gt=1)
    for model in (ProviderUsageBucket, ProviderCostBucket):
        earliest = model.objects.filter(recent).aggregate(first=Min("bucket_start"))["first"]
        if earliest is not None:
            since = min(since, _day_start(earliest))
    return since, now


def _day_start(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _align(moment: dt.datetime, width: str, *, up: bool) -> dt.datetime:
    seconds = WIDTH_SECONDS[width]
    unix = int(moment.timestamp())
    if moment.microsecond and up:
        unix += 1
    floor = unix - unix % seconds
    if up and floor < unix:
        floor += seconds
    return dt.datetime.fromtimestamp(floor, dt.UTC)


# ---- the import --------------------------------------------------------------------------------


def provider_reports_import(
    *,
    account: ProviderAccount,
    since: dt.datetime,
    until: dt.datetime,
    reports: Sequence[str] = REPORTS,
) -> ImportResult:
    """Read `reports` of `account` for [since, until) and replace that window's buckets.

    Raises ProviderImportError (with `account.last_error` set and committed) when the key
    variable is missing, a page cannot be fetched after its retries, the API refuses the
    request, or a page does not have the documented shape; then no bucket has changed.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ApplicationError("since and until must be timezone-aware.")
    unknown = [r for r in reports if r not in REPORTS]
    if unknown or not reports:
        raise ApplicationError(f"reports must be among {', '.join(REPORTS)}.")
    if until <= since:
        raise ApplicationError("until must be after since.")
    api = _api(account)
    with account_run_lock(account_id=account.pk) as held:
        if not held:
            raise ProviderAccountBusy(
                f"Account {account.name!r} is being imported by another run (the hourly "
                "sync or another import); try again when it has finished."
            )
        return _import(account, api, since, until, reports)


def _import(
    account: ProviderAccount,
    api: ModuleType,
    since: dt.datetime,
    until: dt.datetime,
    reports: Sequence[str],
) -> ImportResult:
    run_id = uuid.uuid4()
    result = ImportResult(account=account.name, run_id=run_id, since=since, until=until)
    try:
        admin_key = _admin_key(account)
        read: list[_Read] = []
        for report in reports:
            width = api.USAGE_WIDTH if report == USAGE else api.COST_WIDTH
            start = _align(since, width, up=False)
            end = _align(until, width, up=True)
            rows, last_fetch = _read_report(
                account, api, admin_key, report, start, end, run_id, result
            )
            merged = _merge_usage(rows) if report == USAGE else _merge_cost(rows)
            _check_storable(account, report, merged)
            read.append(_Read(report, start, end, merged, last_fetch))
        result.since = min(r.start for r in read)
        result.until = max(r.end for r in read)
        _apply(account, read, result)
    except ProviderImportError as exc:
        _record_failure(account, exc.message)
        logger.warning("provider report import of %s failed: %s", account.name, exc.message)
        raise
    return result


@dataclass(frozen=True)
class _Read:
    """One report read whole: its aligned window and its buckets' values by key."""

    report: str
    start: dt.datetime
    end: dt.datetime
    merged: dict[tuple[Any, ...], dict[str, Any]]
    last_fetch: ProviderReportFetch


def _check_storable(
    account: ProviderAccount, report: str, merged: dict[tuple[Any, ...], dict[str, Any]]
) -> None:
    """Every bucket's values fit their columns (text lengths, bigint counts, the amount's
    digits), checked against the model's own fields before anything is applied: a value
    that does not fit fails the run cleanly (ProviderImportError) instead of a DB error."""
    kind = _KINDS[report]
    for key, values in merged.items():
        for name, value in [*zip(kind.key, key, strict=True), *values.items()]:
            problem = _unstorable(kind.model, name, value)
            if problem:
                raise ProviderImportError(
                    f"The {report} report of {account.name!r} has a value Reckon cannot "
                    f"store: {problem}; it is stored as fetch {values['fetch'].pk}."
                )


def _unstorable(model: type[Any], name: str, value: Any) -> str:
    if name in ("fetch", "raw") or value is None:
        return ""
    field_ = model._meta.get_field(name)
    if isinstance(value, str) and field_.max_length is not None and len(value) > field_.max_length:
        return f"`{name}` is longer than {field_.max_length} characters"
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= BIGINT_MAX:
        return f"`{name}` is out of range (0..{BIGINT_MAX})"
    if isinstance(value, Decimal):
        integer_digits = field_.max_digits - field_.decimal_places
        if value != 0 and value.adjusted() >= integer_digits:
            return f"`{name}` has more than {integer_digits} digits before the decimal point"
    return ""


def _admin_key(account: ProviderAccount) -> str:
    key = os.environ.get(account.admin_key_env, "")
    if not key.strip():
        raise ProviderImportError(
            f"The admin key for account {account.name!r} is missing: set the environment "
            f"variable ${account.admin_key_env} (no request was made)."
        )
    return key.strip()


def _record_failure(account: ProviderAccount, message: str) -> None:
    account.last_error = message[:500]
    ProviderAccount.objects.filter(pk=account.pk).update(last_error=account.last_error)


def _read_report(
    account: ProviderAccount,
    api: ModuleType,
    admin_key: str,
    report: str,
    start: dt.datetime,
    end: dt.datetime,
    run_id: uuid.UUID,
    result: ImportResult,
) -> tuple[list[tuple[Any, ProviderReportFetch]], ProviderReportFetch]:
    """Every page of one report for [start, end): its rows, each with the fetch (page) it
    came from, and the last page's fetch."""
    base = admin_base_url(account)
    rows: list[tuple[Any, ProviderReportFetch]] = []
    page_token: str | None = None
    seen_tokens: set[str] = set()
    for _ in range(MAX_PAGES):
        path, query = api.request(report, start=start, end=end, page=page_token)
        target = f"{path}?{urlencode(query)}"
        response, fetch = _get_page(account, api, admin_key, report, base, target, run_id, result)
        try:
            page: Page[Any] = api.parse(report, response.text)
        except ReportFormatError as exc:
            raise ProviderImportError(
                f"The {report} report of {account.name!r} answered a page Reckon cannot "
                f"read ({exc}); it is stored as fetch {fetch.pk}."
            ) from None
        result.pages += 1
        rows.extend((row, fetch) for row in page.rows)
        if not page.has_more:
            return rows, fetch
        assert page.next_page is not None  # checked when parsed
        if page.next_page in seen_tokens:
            raise ProviderImportError(
                f"The {report} report of {account.name!r} returned the same next_page twice."
            )
        seen_tokens.add(page.next_page)
        page_token = page.next_page
    raise ProviderImportError(
        f"The {report} report of {account.name!r} had more than {MAX_PAGES} pages."
    )


def _get_page(
    account: ProviderAccount,
    api: ModuleType,
    admin_key: str,
    report: str,
    base: str,
    target: str,
    run_id: uuid.UUID,
    result: ImportResult,
) -> tuple[AdminResponse, ProviderReportFetch]:
    attempts = max(1, int(settings.RECKON_PROVIDER_RETRY_ATTEMPTS))
    base_s = float(settings.RECKON_PROVIDER_RETRY_BASE_SECONDS)  # float-ok: seconds
    cap_s = float(settings.RECKON_PROVIDER_RETRY_MAX_SECONDS)  # float-ok: seconds
    timeout_s = float(settings.RECKON_PROVIDER_HTTP_TIMEOUT_SECONDS)  # float-ok: seconds
    problem = ""
    for attempt in range(1, attempts + 1):
        result.attempts += 1
        retry_after: float | None = None  # float-ok: seconds
        try:
            response = admin_get(
                base + target,
                headers=api.headers(admin_key),
                timeout_s=timeout_s,
                max_bytes=int(settings.RECKON_PROVIDER_MAX_PAGE_BYTES),
            )
        except AdminBodyTooLarge:
            raise ProviderImportError(
                f"The {report} report of {account.name!r} answered a page larger than "
                f"RECKON_PROVIDER_MAX_PAGE_BYTES ({settings.RECKON_PROVIDER_MAX_PAGE_BYTES} "
                "bytes); nothing was stored. Import fewer days at a time, or raise the limit."
            ) from None
        except AdminUnreachable as exc:
            problem = f"the admin API could not be reached ({exc})"
        else:
            fetch = _store_fetch(account, report, run_id, target, response)
            if response.status == 200:
                return response, fetch
            detail = _scrub(error_message(response.text), admin_key)
            problem = f"the admin API answered {response.status}" + (
                f": {detail}" if detail else ""
            )
            if response.status != 429 and response.status < 500:
                hint = ""
                if response.status in (401, 403):
                    hint = f"; check the key in ${account.admin_key_env}"
                raise ProviderImportError(
                    f"The {report} report of {account.name!r} failed: {problem}{hint}."
                )
            retry_after = _retry_after(response.headers.get("retry-after"))
            if retry_after is not None and retry_after > cap_s:
                raise ProviderImportError(
                    f"The {report} report of {account.name!r} failed: {problem}, asking to "
                    f"retry after {retry_after:g} s (more than {cap_s:g} s); the next run "
                    "tries again."
                )
        if attempt == attempts:
            break
        delay = (
            retry_after
            if retry_after is not None
            else random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))  # noqa: S311 - jitter
        )
        sleep(delay)
    raise ProviderImportError(
        f"The {report} report of {account.name!r} failed after {attempts} attempts: {problem}."
    )


def _retry_after(value: str | None) -> float | None:  # float-ok: seconds
    """Seconds from a `retry-after` header (delta-seconds form); None if absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())  # float-ok: seconds
    except ValueError:
        return None
    return max(0.0, seconds) if seconds == seconds else None


def _scrub(message: str, admin_key: str) -> str:
    return message.replace(admin_key, "***") if admin_key else message


def _store_fetch(
    account: ProviderAccount,
    report: str,
    run_id: uuid.UUID,
    target: str,
    response: AdminResponse,
) -> ProviderReportFetch:
    """The answer, verbatim, committed at once (even inside a caller's transaction it is
    its own savepoint; the command and the task call this outside any transaction). A NUL
    character, which a text column cannot hold, is stored as U+FFFD (as undecodable bytes
    are); `body_sha256` is of the text as received. Such a page then fails to parse."""
    with transaction.atomic():
        return ProviderReportFetch.objects.create(
            account=account,
            report=report,
            run_id=run_id,
            query=target[:2000],
            http_status=max(0, min(response.status, 32767)),
            body=response.text.replace("\x00", "\ufffd"),
            body_sha256=hashlib.sha256(response.text.encode()).hexdigest(),
            fetched_at=timezone.now(),
        )


# ---- applying a complete read -------------------------------------------------------------------


def _apply(account: ProviderAccount, read: Iterable[_Read], result: ImportResult) -> None:
    now = timezone.now()
    with transaction.atomic():
        locked = ProviderAccount.objects.select_for_update().get(pk=account.pk)
        for r in read:
            kind = _KINDS[r.report]
            _apply_buckets(kind, locked, r.start, r.end, r.merged, r.last_fetch, now, result)
        locked.last_import_at = now
        locked.last_error = ""
        locked.save(update_fields=["last_import_at", "last_error", "updated_at"])
    account.last_import_at, account.last_error = now, ""


def _usage_values(row: UsageRow) -> dict[str, Any]:
    return {
        "requests": row.requests,
        "input_uncached_tokens": row.input_uncached,
        "cache_read_tokens": row.cache_read,
        "cache_write_tokens": row.cache_write,
        "output_tokens": row.output,
        "raw": jsonable(row.raw),
    }


def _merge_usage(
    rows: Iterable[tuple[UsageRow, ProviderReportFetch]],
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Values by bucket key, with the page (`fetch`) they came from. Rows sharing a key
    (split by a field Reckon does not key on) are summed, their raw results kept as a list
    in canonical order (the same rows in any order give the same bucket)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    raws: dict[tuple[Any, ...], list[Any]] = {}
    for row, fetch in rows:
        values = _usage_values(row)
        existing = merged.get(row.key)
        if existing is None:
            merged[row.key] = {**values, "fetch": fetch}
            raws[row.key] = [values["raw"]]
            continue
        existing["fetch"] = fetch
        for name in _USAGE_VALUES:
            a, b = existing[name], values[name]
            existing[name] = None if a is None and b is None else (a or 0) + (b or 0)
        raws[row.key].append(values["raw"])
    for key, parts in raws.items():
        if len(parts) > 1:
            merged[key]["raw"] = {"merged": canonical_order(parts)}
    return merged


def _cost_values(row: CostRow) -> dict[str, Any]:
    return {
        "amount_text": row.amount_text,
        "amount_usd": row.amount_usd,
        "currency": row.currency,
        "raw": jsonable(row.raw),
    }


def _merge_cost(
    rows: Iterable[tuple[CostRow, ProviderReportFetch]],
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """As `_merge_usage`; summed amounts are exact and `amount_text` joins the parts (in
    canonical order), or is their exact sum when the joined text would not fit."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    parts: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
    for row, fetch in rows:
        values = _cost_values(row)
        existing = merged.get(row.key)
        if existing is None:
            merged[row.key] = {**values, "fetch": fetch}
            parts[row.key] = [(row.amount_text, values["raw"])]
            continue
        existing["fetch"] = fetch
        with localcontext() as context:
            context.prec = 100  # exact for any amount Reckon stores
            existing["amount_usd"] = existing["amount_usd"] + values["amount_usd"]
        parts[row.key].append((row.amount_text, values["raw"]))
    for key, key_parts in parts.items():
        if len(key_parts) == 1:
            continue
        texts = sorted(text for text, _ in key_parts)
        joined = "+".join(texts)
        if len(joined) > 100:  # the field's size: the exact sum in the report's own unit
            with localcontext() as context:
                context.prec = 100
                joined = format(sum((Decimal(t) for t in texts), Decimal(0)), "f")
        merged[key]["amount_text"] = joined
        merged[key]["raw"] = {"merged": canonical_order([raw for _, raw in key_parts])}
    return merged


def _usage_hash(values: dict[str, Any]) -> str:
    return content_hash([values[name] for name in _USAGE_VALUES] + [values["raw"]])


def _cost_hash(values: dict[str, Any]) -> str:
    return content_hash(
        [values["amount_text"], values["amount_usd"], values["currency"], values["raw"]]
    )


@dataclass(frozen=True)
class _BucketKind:
    """What differs between applying usage buckets and cost buckets; the rest is one path."""

    report: str
    model: type[ProviderUsageBucket] | type[ProviderCostBucket]
    key: tuple[str, ...]
    digest: Callable[[dict[str, Any]], str]
    snapshot: Callable[[Any], dict[str, Any]]
    zero: Callable[[Any], None]  # a removed bucket's values (its raw is emptied too)


def _apply_buckets(
    kind: _BucketKind,
    account: ProviderAccount,
    start: dt.datetime,
    end: dt.datetime,
    incoming: dict[tuple[Any, ...], dict[str, Any]],
    last_fetch: ProviderReportFetch,
    now: dt.datetime,
    result: ImportResult,
) -> None:
    width = _width_of(account, kind.report)
    existing: dict[tuple[Any, ...], ProviderUsageBucket | ProviderCostBucket] = {
        tuple(getattr(b, name) for name in kind.key): b
        for b in kind.model.objects.select_for_update().filter(
            account=account, bucket_width=width, bucket_start__gte=start, bucket_start__lt=end
        )
    }
    for key, values in incoming.items():
        digest = kind.digest(values)
        bucket = existing.pop(key, None)
        fetch = values.pop("fetch")
        if bucket is None:
            kind.model.objects.create(
                account=account,
                **dict(zip(kind.key, key, strict=True)),
                fetch=fetch,
                revision=1,
                content_hash=digest,
                changed_at=now,
                **values,
            )
            result.created += 1
        elif bucket.content_hash != digest:
            _revise(account, kind.report, bucket, kind.snapshot(bucket), now, "changed")
            for name, value in values.items():
                setattr(bucket, name, value)
            bucket.fetch, bucket.content_hash, bucket.changed_at = fetch, digest, now
            bucket.revision += 1
            bucket.save()
        else:
            continue
        result.changed += 1
        result.changed_days.add(key[0].astimezone(dt.UTC).date())
    for bucket in existing.values():
        if bucket.content_hash == REMOVED_HASH:
            continue
        _revise(account, kind.report, bucket, kind.snapshot(bucket), now, "removed")
        kind.zero(bucket)
        bucket.raw = {}
        bucket.fetch, bucket.content_hash, bucket.changed_at = last_fetch, REMOVED_HASH, now
        bucket.revision += 1
        bucket.save()
        result.removed += 1
        result.changed_days.add(bucket.bucket_start.astimezone(dt.UTC).date())


def _zero_usage(bucket: ProviderUsageBucket) -> None:
    for name in _USAGE_VALUES:
        setattr(bucket, name, 0 if getattr(bucket, name) is not None else None)


def _zero_cost(bucket: ProviderCostBucket) -> None:
    bucket.amount_text, bucket.amount_usd = "0", Decimal(0)


def _width_of(account: ProviderAccount, report: str) -> str:
    api = _api(account)
    return str(api.USAGE_WIDTH if report == USAGE else api.COST_WIDTH)


def _usage_snapshot(bucket: ProviderUsageBucket) -> dict[str, Any]:
    return {
        **{name: getattr(bucket, name) for name in _USAGE_VALUES},
        "raw": bucket.raw,
        "content_hash": bucket.content_hash,
        "changed_at": bucket.changed_at.isoformat(),
    }


def _cost_snapshot(bucket: ProviderCostBucket) -> dict[str, Any]:
    return {
        "amount_text": bucket.amount_text,
        "amount_usd": format(Decimal(bucket.amount_usd), "f"),
        "currency": bucket.currency,
        "raw": bucket.raw,
        "content_hash": bucket.content_hash,
        "changed_at": bucket.changed_at.isoformat(),
    }


_KINDS = {
    USAGE: _BucketKind(
        USAGE, ProviderUsageBucket, USAGE_KEY, _usage_hash, _usage_snapshot, _zero_usage
    ),
    COST: _BucketKind(COST, ProviderCostBucket, COST_KEY, _cost_hash, _cost_snapshot, _zero_cost),
}


def _revise(
    account: ProviderAccount,
    report: str,
    bucket: ProviderUsageBucket | ProviderCostBucket,
    values: dict[str, Any],
    now: dt.datetime,
    reason: str,
) -> None:
    ProviderBucketRevision.objects.create(
        account=account,
        report=ProviderReport(report),
        bucket_id=bucket.pk,
        bucket_start=bucket.bucket_start,
        revision=bucket.revision,
        values=values,
        fetch_id=bucket.fetch_id,
        replaced_at=now,
        reason=reason,
    )
