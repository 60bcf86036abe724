"""Authentication failures per client address, counted before any credential is checked.

A client address that sent RECKON_AUTH_FAILURE_LIMIT bad credentials within
RECKON_AUTH_FAILURE_WINDOW_SECONDS gets 429 (Retry-After: the rest of the window) for
every further attempt, before any lookup or hash runs, so guessing costs the server a
counter read. The count is a fixed window: with REDIS_URL it is one Redis key per
address shared by every server process; without (embedded mode), or while Redis does not
answer, each process counts on its own.

The address is the peer, or with REST_FRAMEWORK["NUM_PROXIES"] (RECKON_TRUSTED_PROXIES)
the address that many trusted proxies in front saw (DRF's own rule), never a header a
client could set on its own.
"""

import math
import threading
import time
from functools import cache

import redis
from django.conf import settings
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from config.redis_clients import redis_client

KEY_PREFIX = "rk:authfail:"


class AuthFailuresThrottled(exceptions.Throttled):
    default_detail = "Too many failed authentication attempts from this address."
    default_code = "auth_throttled"


def client_address(request: Request) -> str:
    return BaseThrottle().get_ident(request) or "unknown"


class LocalFailureCounter:
    """Fixed windows in this process: address -> (window end, failures)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def blocked_for(self, address: str, *, limit: int) -> float:
        now = time.monotonic()
        with self._lock:
            end, failures = self._windows.get(address, (0.0, 0))
        return end - now if end > now and failures >= limit else 0.0

    def record(self, address: str, *, window: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._windows) > 100_000:  # an address flood cannot grow this forever
                self._windows = {a: w for a, w in self._windows.items() if w[0] > now}
            end, failures = self._windows.get(address, (0.0, 0))
            if end <= now:
                end, failures = now + window, 0
            self._windows[address] = (end, failures + 1)


local_counter = LocalFailureCounter()


@cache
def _redis(url: str) -> "redis.Redis | redis.RedisCluster":
    return redis_client(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def auth_failures_check(address: str) -> None:
    """Raise 429 if this address is over its failure limit."""
    limit = settings.RECKON_AUTH_FAILURE_LIMIT
    wait = local_counter.blocked_for(address, limit=limit)
    if not wait and settings.REDIS_URL:
        client = _redis(settings.REDIS_URL)
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.get(KEY_PREFIX + address)
                pipe.pttl(KEY_PREFIX + address)
                failures, ttl_ms = pipe.execute()
        except redis.RedisError:
            failures, ttl_ms = None, -2
        if failures is not None and int(failures) >= limit and ttl_ms > 0:
            wait = ttl_ms / 1000
    if wait:
        raise AuthFailuresThrottled(wait=math.ceil(wait))


def auth_failures_record(address: str) -> None:
    window = settings.RECKON_AUTH_FAILURE_WINDOW_SECONDS
    if settings.REDIS_URL:
        client = _redis(settings.REDIS_URL)
        try:
            with client.pipeline(transaction=True) as pipe:
                pipe.incr(KEY_PREFIX + address)
                pipe.expire(KEY_PREFIX + address, window, nx=True)
                pipe.execute()
            return
        except redis.RedisError:
            pass  # counted in this process instead
    local_counter.record(address, window=window)
