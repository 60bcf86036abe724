"""The listening sockets of `manage.py serve --workers N` (N > 1, `--listen reuseport`).

Nothing here imports Django: a worker unpickles its `WorkerListener` (and so imports
this module) when multiprocessing spawns it, before the application sets Django up.
"""

import socket
from typing import Any


def reuse_port_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT: every worker's own listening
    socket (`listen=False`: the server starts listening once the worker's application
    has started, so the kernel gives a starting worker no connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    if listen:
        sock.listen()
    return sock


def port_is_free(host: str, port: int) -> None:
    """Bind (host, port) without SO_REUSEPORT and let it go: OSError if any socket holds
    it, a reuse-port listener of another server included."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


class WorkerListener:
    """What uvicorn's supervisor hands each worker in place of its one shared socket.

    The supervisor pickles the sockets it is given into every worker it spawns (and into
    every replacement). Unpickled in the worker, this becomes a socket of that worker's
    own, bound with SO_REUSEPORT to the same address (`reuse_port_socket`)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, ...]:
        return (_worker_socket, (self.host, self.port))


def _worker_socket(host: str, port: int) -> socket.socket:
    return reuse_port_socket(host, port, listen=False)
