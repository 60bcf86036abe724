"""The Redis reply timeout of the tests' control stores. In production a store gives up
after 1 s (fail fast); a loaded CI machine may take that long to answer, and where the
tests are about a lost reply they lose it on purpose (`lost_replies`)."""

REDIS_TIMEOUT_S = 30.0  # float-ok: seconds
