"""REST authentication: a tenant's API key (read-only access to its own data), or a
staff session (operators and finance)."""

from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

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


class TenantApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        api_key = (
            ApiKey.objects.select_related("tenant")
            .filter(key_hash=api_key_hash(token.strip()))
            .first()
        )
        if (
            api_key is None
            or api_key.revoked_at is not None
            or not api_key.tenant.is_active
            or (api_key.expires_at is not None and api_key.expires_at <= timezone.now())
        ):
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return TenantPrincipal(tenant=api_key.tenant, api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="reckon"'
