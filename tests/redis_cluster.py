"""A real 3-node Redis Cluster on loopback for the tests that need one: three
`redis-server --cluster-enabled yes` in a temporary directory, joined by
`redis-cli --cluster create`, stopped afterwards. Needs redis-server and redis-cli
(package redis-server / redis-tools; `.ci/services` installs them when absent)."""

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

NODES = 3


def _free_port() -> int:
    """A port free on loopback whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextmanager
def redis_cluster(directory: Path) -> Iterator[list[int]]:
    """Start the cluster; yields the nodes' ports once every slot is served."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: run `make services`")
    ports = [_free_port() for _ in range(NODES)]
    servers = []
    try:
        for port in ports:
            servers.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--dir",
                        str(directory),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],  # fmt: skip
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        clients = [redis.Redis(port=port) for port in ports]
        deadline = time.monotonic() + 10
        for client in clients:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],  # fmt: skip
            check=True,
            capture_output=True,
            timeout=30,
        )
        for client in clients:  # every node must know every slot before a test runs
            while client.cluster("info")["cluster_state"] != "ok":
                if time.monotonic() > deadline + 20:
                    raise RuntimeError("the test Redis Cluster did not come up")
                time.sleep(0.05)
        yield ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
