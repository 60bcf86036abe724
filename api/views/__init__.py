"""REST API views, one module per area (usage, plans, balances, invoices, finance,
webhooks): HTTP only. Each view validates its input, calls one selector or service and
answers through an output serializer."""
