"""The console: server-rendered pages for tenant members (overview, usage, keys,
invoices) and for staff (margins, limits, plan warnings, reconciliation).

Invariants:
- Pages call the same selectors and serializers as the REST API (`api/views/`), so a
  chart and the API answer for the same window always agree.
- A member reads exactly one tenant, their own (`metering.TenantMember`); every object
  looked up by id is filtered by that tenant first, so another tenant's id is a 404.
- What a member may do is `access.CAPABILITIES[role]`; staff pages check the staff
  roles' Django permissions (`api.permissions.may`), exactly as the REST API does.
"""
