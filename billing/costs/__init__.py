"""What a token costs us to serve, and the margins above it.

formulas.py (pure: hourly cost, cost per 1M tokens per class, floor prices) ·
catalogue.py (accelerators, versioned cost bases and deployments, the serving cost rates
the proxy stamps on records) · margins.py (margin policies; price floors plan validation
checks) · calibration.py (measuring a deployment's throughput against a live upstream).
"""
