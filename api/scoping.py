"""Every REST query is scoped to one tenant: the key's own, or the one asked for by staff
whom the view's permission class checked (`api.permissions`): `is_staff` alone reads nothing."""

import uuid

from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request

from api.authentication import TenantPrincipal
from api.permissions import staff_permission_granted
from metering.models import Tenant


def tenant_id_for(request: Request) -> uuid.UUID:
    principal = request.user
    if isinstance(principal, TenantPrincipal):
        return principal.tenant.pk  # a tenant key never reads another tenant, whatever it asks
    if staff_permission_granted(request):
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
    raise PermissionDenied(
        "A tenant API key or a staff user with this view's permission is required."
    )


def tenant_or_404(tenant_id: uuid.UUID) -> Tenant:
    """The tenant a staff operation names (in its path or body)."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise NotFound("No such tenant.")
    return tenant
