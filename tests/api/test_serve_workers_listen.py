"""`serve --workers N`'s listening sockets (api.listeners): each worker gets a socket of
its own on the same port, the kernel spreads connections over the ones that listen, and
the supervisor's reservation (bound, never listening) is given none."""

import io
import pickle
import socket
from multiprocessing.reduction import ForkingPickler

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from api.listeners import WorkerListener, reuse_port_socket
from api.management.commands.serve import serve_reuse_port, workers_default


def _through_spawn(listener: WorkerListener) -> socket.socket:
    """What a spawned worker gets: the listener as multiprocessing pickles it."""
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump([listener])
    (sock,) = pickle.loads(buffer.getvalue())  # noqa: S301 - the bytes pickled just above
    return sock


def _accepted(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_each_worker_unpickles_a_socket_of_its_own_on_the_same_port() -> None:
    reserved = reuse_port_socket("127.0.0.1", 0, listen=False)
    port = reserved.getsockname()[1]
    listener = WorkerListener("127.0.0.1", port)
    first, second = _through_spawn(listener), _through_spawn(listener)
    try:
        assert first.fileno() != second.fileno()
        assert first.getsockname() == second.getsockname() == ("127.0.0.1", port)
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        # not listening yet: the worker's server listens once its application started
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    finally:
        for sock in (reserved, first, second):
            sock.close()


def test_connections_spread_over_the_listening_workers_and_never_reach_the_reservation() -> None:
    reserved = reuse_port_socket("127.0.0.1", 0, listen=False)
    port = reserved.getsockname()[1]
    workers = [reuse_port_socket("127.0.0.1", port, listen=True) for _ in range(2)]
    clients = []
    try:
        for _ in range(64):
            # every connect completes: none is hashed to the reservation, which has no queue
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        counts = [_accepted(w) for w in workers]
        assert sum(counts) == 64
        assert all(counts), counts  # all 64 on one of two: a 2 in 2**63 chance
    finally:
        for sock in (reserved, *workers, *clients):
            sock.close()


def test_a_port_taken_without_reuseport_is_refused_before_any_worker_starts() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(CommandError, match="cannot bind"):
            serve_reuse_port(None, "127.0.0.1", taken.getsockname()[1])  # type: ignore[arg-type]
    finally:
        taken.close()


@pytest.mark.parametrize(("value", "workers"), [(None, 1), ("", 1), ("3", 3)])
def test_the_worker_count_defaults_to_reckon_workers(
    monkeypatch: pytest.MonkeyPatch, value: str | None, workers: int
) -> None:
    if value is None:
        monkeypatch.delenv("RECKON_WORKERS", raising=False)
    else:
        monkeypatch.setenv("RECKON_WORKERS", value)
    assert workers_default() == workers


def test_a_worker_count_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECKON_WORKERS", "two")
    with pytest.raises(CommandError, match="RECKON_WORKERS"):
        workers_default()


def test_fewer_than_one_worker_is_refused() -> None:
    with pytest.raises(CommandError, match="at least 1"):
        call_command("serve", workers=0)


def test_a_port_another_reuseport_server_listens_on_is_refused() -> None:
    """A second `serve --workers N` on the port of one still running (an old version left
    up in a deploy) must not share its connections: it is refused before any worker."""
    running = reuse_port_socket("127.0.0.1", 0, listen=True)
    try:
        with pytest.raises(CommandError, match="cannot bind"):
            serve_reuse_port(None, "127.0.0.1", running.getsockname()[1])  # type: ignore[arg-type]
    finally:
        running.close()


def test_workers_given_on_the_command_line_win_over_a_bad_reckon_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECKON_WORKERS", "two")
    with pytest.raises(CommandError, match="at least 1"):  # --workers was read, not the env
        call_command("serve", workers=0)
