"""REST authentication: a tenant's API key (`Bearer rk_...`, read-only access to its own
data), a staff member's personal token (`Bearer rks_...`, acts as that Django user), or
a staff session (the admin and browsable use).

Every scheme that checks a credential first asks `api.throttling` whether the client
address is over its failure limit (429 before any lookup or hash) and counts a failure
there when the credential is bad. HTTP Basic (a password hash per attempt) is off unless
RECKON_API_BASIC_AUTH is set.
"""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.staff_tokens import STAFF_TOKEN_PREFIX, staff_token_user
from api.throttling import auth_failures_check, auth_failures_record, client_address
from metering.keys import api_key_hash
from metering.models import ApiKey, Tenant


@dataclass
class TenantPrincipal:
    """The authenticated caller when a tenant API key was used."""

    tenant: Tenant
    api_key: ApiKey
    is_authenticated: bool = True
    is_staff: bool = False
    is_active: bool = True

    @property
    def pk(self) -> Any:
        return self.api_key.pk


def bearer_token(request: Request) -> str | None:
    header = authentication.get_authorization_header(request).decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TenantApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        token = bearer_token(request)
        if token is None or token.startswith(STAFF_TOKEN_PREFIX):
            return None
        address = client_address(request)
        auth_failures_check(address)
        api_key = (
            ApiKey.objects.select_related("tenant").filter(key_hash=api_key_hash(token)).first()
        )
        if (
            api_key is None
            or api_key.revoked_at is not None
            or not api_key.tenant.is_active
            or (api_key.expires_at is not None and api_key.expires_at <= timezone.now())
        ):
            auth_failures_record(address)
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return TenantPrincipal(tenant=api_key.tenant, api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="reckon"'


class StaffTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, str] | None:
        token = bearer_token(request)
        if token is None or not token.startswith(STAFF_TOKEN_PREFIX):
            return None
        address = client_address(request)
        auth_failures_check(address)
        user = staff_token_user(token)
        if user is None:
            auth_failures_record(address)
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired staff token.")
        return user, token[:10]

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="reckon"'


class ThrottledBasicAuthentication(authentication.BasicAuthentication):
    """HTTP Basic (only with RECKON_API_BASIC_AUTH): the failure limit is checked before
    the password hash runs."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != b"basic":
            return None
        address = client_address(request)
        auth_failures_check(address)
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            auth_failures_record(address)
            raise
