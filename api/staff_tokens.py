"""Staff API tokens: creation (shown once), revocation and lookup.

A token is `rks_` and 43 random base62 characters: a prefix distinct from tenant keys
(`rk_`), so the REST API knows which table to look in without trying both. Like tenant
keys it is stored as a SHA-256 digest: with this much entropy a slow password hash would
add cost, not safety.
"""

import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from api.models import StaffToken
from metering.keys import api_key_hash

STAFF_TOKEN_PREFIX = "rks_"
VISIBLE_PREFIX_LENGTH = 10
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class CreatedStaffToken:
    token: StaffToken
    raw_token: str  # shown once, never stored


def staff_token_generate() -> str:
    return STAFF_TOKEN_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(43))


def staff_token_looks_valid(raw_token: str) -> bool:
    return raw_token.startswith(STAFF_TOKEN_PREFIX) and 20 <= len(raw_token) <= 200


@transaction.atomic
def staff_token_create(
    *, user: User, name: str = "", expires_at: datetime | None = None
) -> CreatedStaffToken:
    raw = staff_token_generate()
    token = StaffToken.objects.create(
        user=user,
        name=name,
        prefix=raw[:VISIBLE_PREFIX_LENGTH],
        token_hash=api_key_hash(raw),
        expires_at=expires_at,
    )
    return CreatedStaffToken(token=token, raw_token=raw)


def staff_token_revoke(*, token: StaffToken) -> StaffToken:
    """Idempotent: a revoked token keeps its first revocation time."""
    StaffToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db(fields=["revoked_at"])
    return token


def staff_token_user(raw_token: str) -> User | None:
    """The active user behind a live token, or None (unknown, revoked, expired, inactive)."""
    if not staff_token_looks_valid(raw_token):
        return None
    token = (
        StaffToken.objects.select_related("user")
        .filter(token_hash=api_key_hash(raw_token), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    if token.expires_at is not None and token.expires_at <= timezone.now():
        return None
    return token.user
