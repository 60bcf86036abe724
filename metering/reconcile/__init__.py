"""Reconciliation: the ledger against the providers' own usage reports (decision 0116)."""
