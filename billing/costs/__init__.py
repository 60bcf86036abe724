"""What a token costs us to serve, and the margins above it.

formulas.py (pure cost arithmetic: hourly cost, cost per 1M tokens per class) ·
catalogue.py (the accelerator catalogue file and its database seed, versioned cost bases
and deployments, the serving cost rates the proxy stamps on records) · margins.py (margin
arithmetic and floor prices; margin policies; the price floors plan validation checks) ·
calibration.py (measuring a deployment's throughput against a live upstream).
"""
