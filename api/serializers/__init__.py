"""Input and output serializers of the REST API, one module per area (usage, plans,
balances, invoices, finance); `fields` holds what every area shares."""
