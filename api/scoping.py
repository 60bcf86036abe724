"""Every REST query is scoped to one tenant: the key's own, or (staff only) the one asked for."""

import uuid

from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request

from api.authentication import TenantPrincipal
from metering.models import Tenant


def tenant_id_for(request: Request) -> uuid.UUID:
    principal = request.user
    if isinstance(principal, TenantPrincipal):
        return principal.tenant.pk  # a tenant key never reads another tenant, whatever it asks
    if getattr(principal, "is_staff", False):
        requested = request.query_params.get("tenant")
        if not requested:
            raise ValidationError({"tenant": "Staff requests name a tenant id."})
        try:
            tenant_id = uuid.UUID(requested)
        except ValueError:
            raise ValidationError({"tenant": "Not a tenant id."}) from None
        if not Tenant.objects.filter(pk=tenant_id).exists():
            raise NotFound("No such tenant.")
        return tenant_id
    raise PermissionDenied("A tenant API key or a staff session is required.")
