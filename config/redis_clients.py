"""One way to open a redis-py client for REDIS_URL, a single Redis or a Redis Cluster.

`REDIS_URL=redis-cluster://host:port` names one node of a Redis Cluster (any node: the
client learns the others from it); `redis://…` a single Redis, as before. Everything but
the proxy's hot path (metering.control.redis_pipe, which reads the same URL) opens its
client here, so a deployment switches to a cluster by its URL alone.

On a cluster, a multi-key command or script must name keys of one hash slot: the spend
control keys carry their tenant as a hash tag (metering.control.scopes.tenant_tag).
"""

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

CLUSTER_SCHEME = "redis-cluster"


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def node_url(url: str) -> str:
    """The URL of the seed node itself (`redis://`; a cluster has only database 0)."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return url
    return urlunsplit(("redis", parts.netloc, "", parts.query, ""))


def redis_client(url: str, **options: Any) -> "redis.Redis | RedisCluster":
    """A redis-py client for `url`: a cluster client for `redis-cluster://`, else a plain
    one. `options` go to the client (timeouts)."""
    if is_cluster(url):
        return RedisCluster.from_url(node_url(url), **options)
    return redis.Redis.from_url(url, **options)


def mget(client: "redis.Redis | RedisCluster", keys: list[str]) -> list[Any]:
    """MGET of keys that may live in different slots (one round trip per node on a
    cluster; not atomic there, which no caller needs)."""
    if isinstance(client, RedisCluster):
        return client.mget_nonatomic(keys)
    return client.mget(keys)
