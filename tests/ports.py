"""Ports for the servers and listeners the tests start.

A port the kernel picks (`bind(("127.0.0.1", 0))`) comes from its ephemeral range, the
range every outgoing connection on the machine also takes its source port from. Between
picking it and the server binding it (seconds, for a process that boots Django) an
outgoing connection may take it, and the server fails with "Address already in use":
seen while a benchmark held thousands of loopback connections open. So ports are picked
below the ephemeral range, where no outgoing connection lands; each pytest-xdist worker
picks from its own slice, and a process never hands out a port twice."""

import os
import random
import socket
from pathlib import Path

LOWEST = 20_000
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    except (OSError, IndexError):
        return 32_768  # Linux's default
    return int(low)


def _slice() -> range:
    top = max(_ephemeral_start(), LOWEST + 1_000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    workers = max(int(count) if count.isdigit() else 1, index + 1)
    width = (top - LOWEST) // workers
    start = LOWEST + width * index
    return range(start, start + width)


def port_free(port: int) -> bool:
    """Bindable the way a server binds it (SO_REUSEADDR: TIME_WAIT left by closed
    connections does not count, a listening or connected socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port no one holds now, outside the ephemeral range, not handed out
    before by this process."""
    ports = _slice()
    for _ in range(200):
        port = random.randrange(ports.start, ports.stop)  # noqa: S311 - not a secret
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")
