"""Console pages for API keys: the tenant's keys with their limits and reasoning policy,
create (the raw key shown once), revoke (after a confirmation), and, for owners, a key's
monthly spend limit and reasoning policy.

Invariants:
- every key is looked up within `member.tenant`: another tenant's key id is a 404;
- the raw key exists only in the response to the create POST (rendered, never
  redirected, never put in the session or a message), sent with `Cache-Control:
  no-store`; no later page can show it, because only its digest is stored;
- each create form carries a one-time token (signed, so showing a form writes nothing;
  the session records only the used ones): a reload of the create response re-sends the
  POST, which then creates nothing and shows no key; a refused create re-renders with a
  fresh token, so the corrected form works;
- a key minted by a member whose role may not see invoices cannot read billing through
  the REST API (`ApiKey.can_read_billing` off); owners and billing members choose;
- GET never changes anything; every change is a POST with the CSRF token, through the
  metering services the admin and the REST API use."""

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.signing import BadSignature, TimestampSigner
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_http_methods

from api.console.access import (
    INVOICES_VIEW,
    KEYS_MANAGE,
    KEYS_VIEW,
    LIMITS_MANAGE,
    can,
    member_page,
)
from api.console.views.common import page
from api.console.views.paging import before_of, newest_page
from config.errors import ApplicationError
from metering.control.governance import EFFORTS
from metering.models import ApiKey, RateLimit, ReasoningPolicy, SpendLimit, TenantMember
from metering.services import (
    MAX_KEY_SPEND_LIMIT_USD,
    api_key_create,
    api_key_revoke,
    api_key_spend_limit_set,
    reasoning_policy_clear,
    reasoning_policy_set,
)

# Create-form tokens are signed with their time; a form older than this is refused (as
# used), and the session keeps the used tokens only this long.
CREATE_TOKEN_MAX_AGE = 24 * 3600
_CREATE_TOKEN_SIGNER = TimestampSigner(salt="console.key-create")
# The session's used create-form tokens (not yet expired).
USED_CREATE_TOKENS = "console_key_create_used"


class KeyCreateForm(forms.Form):
    once = forms.CharField(widget=forms.HiddenInput, max_length=100)
    name = forms.CharField(max_length=200, help_text="What the key is for, e.g. a service name.")
    expires_on = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: the key stops working at the start of this day (UTC).",
    )
    can_read_billing = forms.BooleanField(
        required=False,
        initial=True,
        label="May read billing",
        help_text="Invoices, the upcoming invoice, the balance and its alerts (REST API).",
    )

    def clean_expires_on(self) -> datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        expires_at = datetime.combine(day, time.min, tzinfo=UTC)
        if expires_at <= timezone.now():
            raise forms.ValidationError("Choose a day after today.")
        return expires_at


class SpendLimitForm(forms.Form):
    amount_usd = forms.DecimalField(
        label="Monthly spend limit (USD)",
        required=False,
        min_value=Decimal(0),
        max_value=MAX_KEY_SPEND_LIMIT_USD,
        max_digits=22,
        decimal_places=12,
        help_text="At list price, per calendar month (UTC). Empty: no limit for this key.",
    )


class ReasoningPolicyForm(forms.Form):
    remove = forms.BooleanField(
        required=False, label="No policy (any effort, no cap, no key budget)"
    )
    allowed_efforts = forms.MultipleChoiceField(
        choices=[(e, e) for e in EFFORTS],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: any effort.",
    )
    default_max_output_tokens = forms.IntegerField(
        required=False, min_value=1, help_text="Used when a call names no maximum."
    )
    max_output_tokens = forms.IntegerField(
        required=False, min_value=1, help_text="The most one call may ask for (reasoning included)."
    )
    mode = forms.ChoiceField(choices=ReasoningPolicy.Mode.choices, initial="clamp")
    monthly_reasoning_tokens = forms.IntegerField(
        required=False, min_value=1, help_text="Reasoning tokens per calendar month (UTC)."
    )


def _keys_of(member: TenantMember) -> QuerySet[ApiKey]:
    """The member's tenant's keys with their per-key controls, newest first."""
    return (
        ApiKey.objects.filter(tenant=member.tenant)
        .select_related("reasoning_policy")
        .prefetch_related(
            Prefetch("spend_limits", queryset=SpendLimit.objects.order_by("window", "pk")),
            "rate_limits",
        )
        .order_by("-created_at", "-pk")
    )


def _key_or_404(member: TenantMember, key_id: int) -> ApiKey:
    return get_object_or_404(_keys_of(member), pk=key_id)


def _policy_of(key: ApiKey) -> ReasoningPolicy | None:
    try:
        return key.reasoning_policy
    except ReasoningPolicy.DoesNotExist:
        return None


def _state(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _row(key: ApiKey, now: datetime) -> dict[str, Any]:
    limits: list[SpendLimit] = list(key.spend_limits.all())
    rate: RateLimit | None = next(iter(key.rate_limits.all()), None)
    return {
        "key": key,
        "state": _state(key, now),
        "spend_limits": limits,
        "rate_limit": rate,
        "policy": _policy_of(key),
    }


def _no_store(response: HttpResponse) -> HttpResponse:
    patch_cache_control(response, no_store=True, no_cache=True, private=True)
    return response


def _create_token_new() -> str:
    return _CREATE_TOKEN_SIGNER.sign(secrets.token_urlsafe(12))


def _create_token_fresh(token: str) -> bool:
    try:
        _CREATE_TOKEN_SIGNER.unsign(token, max_age=CREATE_TOKEN_MAX_AGE)
    except BadSignature:  # forged, or expired (SignatureExpired is one)
        return False
    return True


def _create_form(member: TenantMember, data: Any = None) -> KeyCreateForm:
    """A create form with a fresh one-time token (a bound form keeps the one it came with).
    Issuing a token writes nothing: it is signed. A member whose role may not see
    invoices gets no billing choice (its keys never read billing)."""
    form = (
        KeyCreateForm(data)
        if data is not None
        else KeyCreateForm(initial={"once": _create_token_new()})
    )
    if not can(member, INVOICES_VIEW):
        del form.fields["can_read_billing"]
    return form


def _create_form_retry(form: KeyCreateForm) -> KeyCreateForm:
    """A refused form, re-rendered with a fresh token (the one it came with may be used)."""
    form.data = form.data.copy()
    form.data["once"] = _create_token_new()
    return form


def _create_token_take(request: HttpRequest, token: str) -> bool:
    """Use up a create form's token; False if it is not one of ours, expired or already
    used. The session keeps the used tokens until they expire."""
    if not _create_token_fresh(token):
        return False
    used = [t for t in request.session.get(USED_CREATE_TOKENS, []) if _create_token_fresh(t)]
    if token in used:
        return False
    request.session[USED_CREATE_TOKENS] = [*used, token]
    return True


def _list_context(request: HttpRequest, member: TenantMember) -> dict[str, Any]:
    now = timezone.now()
    keys, more = newest_page(_keys_of(member), request)
    return {
        "rows": [_row(k, now) for k in keys],
        "more": more,
        "first_page": before_of(request) is None,
        "may_manage": can(member, KEYS_MANAGE),
    }


@require_http_methods(["GET"])
@member_page(KEYS_VIEW)
def key_list(request: HttpRequest, member: TenantMember) -> HttpResponse:
    context = _list_context(request, member)
    if context["may_manage"]:
        context["form"] = _create_form(member)
    return page(request, "console/keys.html", context)


@require_http_methods(["GET", "POST"])
@member_page(KEYS_MANAGE)
def key_create(request: HttpRequest, member: TenantMember) -> HttpResponse:
    """GET: the form. POST: create the key and show it once on this response. A form
    already used (a reload of this response re-sends it) creates nothing."""
    if request.method != "POST":
        return page(request, "console/keys_new.html", {"form": _create_form(member)})
    form = _create_form(member, request.POST)
    if not form.is_valid():
        if form.has_error("once"):
            return _form_used(request)
        return page(
            request, "console/keys_new.html", {"form": _create_form_retry(form)}, status=400
        )
    if not _create_token_take(request, form.cleaned_data["once"]):
        return _form_used(request)
    try:
        created = api_key_create(
            tenant=member.tenant,
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_on"],
            can_read_billing=bool(form.cleaned_data.get("can_read_billing", False)),
        )
    except ApplicationError as exc:
        form.add_error(None, exc.message)
        return page(
            request, "console/keys_new.html", {"form": _create_form_retry(form)}, status=400
        )
    return _no_store(
        page(
            request,
            "console/keys_created.html",
            {"key": created.api_key, "secret": created.raw_key},
            status=201,
        )
    )


@require_http_methods(["GET", "POST"])
@member_page(KEYS_VIEW)
def key_detail(request: HttpRequest, member: TenantMember, key_id: int) -> HttpResponse:
    """A key's limits and reasoning policy; owners (LIMITS_MANAGE) change the monthly
    spend limit (`form=limit`) and the reasoning policy (`form=policy`) by POST."""
    key = _key_or_404(member, key_id)
    may_change = can(member, LIMITS_MANAGE) and key.revoked_at is None
    limit_form: SpendLimitForm | None = None
    policy_form: ReasoningPolicyForm | None = None
    status = 200
    if request.method == "POST":
        if not may_change:
            raise PermissionDenied("Your role may not change this key's limits.")
        which = request.POST.get("form")
        if which == "limit":
            limit_form = SpendLimitForm(request.POST)
            if limit_form.is_valid() and _save(
                limit_form,
                lambda d: api_key_spend_limit_set(api_key=key, amount_usd=d["amount_usd"]),
            ):
                messages.success(request, "Spend limit saved.")
                return redirect("console:key", key_id=key.pk)
        elif which == "policy":
            policy_form = ReasoningPolicyForm(request.POST)
            if policy_form.is_valid() and _save(policy_form, lambda d: _policy_save(key, d)):
                messages.success(request, "Reasoning policy saved.")
                return redirect("console:key", key_id=key.pk)
        else:
            return page(request, "console/forbidden.html", {"reason": "Unknown form."}, status=400)
        status = 400
    row = _row(key, timezone.now())
    if may_change:
        limit_form = limit_form or SpendLimitForm(initial=_limit_initial(row["spend_limits"]))
        policy_form = policy_form or ReasoningPolicyForm(initial=_policy_initial(row["policy"]))
    context = {
        **row,
        "may_change": may_change,
        "may_manage": can(member, KEYS_MANAGE),
        "limit_form": limit_form,
        "policy_form": policy_form,
    }
    return page(request, "console/keys_detail.html", context, status=status)


@require_http_methods(["GET", "POST"])
@member_page(KEYS_MANAGE)
def key_revoke(request: HttpRequest, member: TenantMember, key_id: int) -> HttpResponse:
    """GET: ask to confirm. POST: revoke (idempotent) and go back to the list."""
    key = _key_or_404(member, key_id)
    if request.method == "POST":
        api_key_revoke(api_key=key)
        messages.success(request, f"Key {key.prefix}… ({key.name or 'unnamed'}) is revoked.")
        return redirect("console:keys")
    return page(request, "console/keys_revoke.html", {"key": key})


def _form_used(request: HttpRequest) -> HttpResponse:
    messages.warning(
        request,
        "That form was already used, so no key was created now. A key is shown only once, "
        "when it is created; if you lost it, revoke it and create another.",
    )
    return redirect("console:keys", permanent=False)


def _save(form: forms.Form, write: Callable[[dict[str, Any]], object]) -> bool:
    """Run a service write with the form's data; its refusal becomes the form's error."""
    try:
        write(form.cleaned_data)
    except ApplicationError as exc:
        form.add_error(None, exc.message)
        return False
    return True


def _policy_save(key: ApiKey, data: dict[str, Any]) -> None:
    if data["remove"]:
        reasoning_policy_clear(api_key=key)
        return
    reasoning_policy_set(
        api_key=key,
        allowed_efforts=list(data["allowed_efforts"]),
        default_max_output_tokens=data["default_max_output_tokens"],
        max_output_tokens=data["max_output_tokens"],
        mode=data["mode"],
        monthly_reasoning_tokens=data["monthly_reasoning_tokens"],
    )


def _limit_initial(limits: list[SpendLimit]) -> dict[str, Any]:
    monthly = next((lim for lim in limits if lim.window == SpendLimit.Window.MONTH), None)
    return {"amount_usd": monthly.amount_usd.normalize() if monthly else None}


def _policy_initial(policy: ReasoningPolicy | None) -> dict[str, Any]:
    if policy is None:
        return {"mode": ReasoningPolicy.Mode.CLAMP}
    return {
        "allowed_efforts": policy.allowed_efforts,
        "default_max_output_tokens": policy.default_max_output_tokens,
        "max_output_tokens": policy.max_output_tokens,
        "mode": policy.mode,
        "monthly_reasoning_tokens": policy.monthly_reasoning_tokens,
    }
