"""Routing one alias across several targets (decision 0117): the pure choice of targets
(`policies`), the shared circuit breaker (`breaker`), the process's live routing state
(`state`) and the expectations the `cheapest` policy ranks by (`learn`)."""
