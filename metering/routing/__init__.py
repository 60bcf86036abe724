"""Routing across an alias's targets (decision 0117)."""
