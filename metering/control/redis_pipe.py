"""A lean asyncio Redis client for the proxy's hot path: Lua scripts over one pipelined
connection per process, replies parsed by hiredis (C).

Why not redis-py's asyncio client here: per call it acquires a pooled connection, packs
the command in Python, arms a timeout and parses in Python, which measured about a third
of the proxy's CPU with spend control on (py-spy, `make bench`). Here every call writes
one pre-encoded command on a shared connection and waits for its reply in order (Redis
answers a connection's commands in the order sent), so concurrent calls pipeline for free;
the commands of one event-loop turn leave in a single write.
Everything else (loading, tests, tools) keeps using redis-py.

Failure model: a command not answered within `timeout` seconds, or any connection error,
fails every command in flight with `RedisUnavailable` and drops the connection; the next
call reconnects. Scripts run by EVALSHA; on NOSCRIPT (a restarted or flushed Redis) the
script is sent once with EVAL, which also caches it again.
"""

import asyncio
import hashlib
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis


class RedisUnavailable(Exception):
    pass


class _ReplyError(Exception):
    pass


def encode(*parts: bytes | str | int) -> bytes:
    """One command in RESP (packed by hiredis, in C)."""
    return hiredis.pack_command(parts)  # type: ignore[arg-type]  # the stub says one item


class Script:
    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()  # noqa: S324 - Redis's script id


class _Protocol(asyncio.Protocol):
    def __init__(self, client: "RedisPipe") -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=_ReplyError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.client._pending
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.client._fail(f"protocol error: {exc}")
                return
            if reply is False:
                return
            if not pending:  # a reply nobody waits for: the stream is out of step
                self.client._fail("unexpected reply")
                return
            future = pending.popleft()[1]
            if not future.done():
                if isinstance(reply, _ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client._protocol is self:  # a connection already replaced fails nothing
            self.client._fail(f"connection lost: {exc}" if exc else "connection closed")


class RedisPipe:
    def __init__(self, url: str, *, timeout: float = 1.0) -> None:  # float-ok: seconds
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._db = int(parts.path.strip("/") or 0)
        self._password = unquote(parts.password) if parts.password else None
        self._username = unquote(parts.username) if parts.username else None
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._outgoing: list[bytes] = []

    # --- connection ----------------------------------------------------------------

    async def _connection(self) -> _Protocol:
        if self._protocol is not None:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self._host, self._port),
                self._timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to Redis: {exc!r}") from exc
        self._protocol = protocol
        setup = []
        if self._password is not None:
            auth = [self._username, self._password] if self._username else [self._password]
            setup.append(self._send(encode("AUTH", *auth)))
        if self._db:
            setup.append(self._send(encode("SELECT", self._db)))
        try:
            await asyncio.gather(*setup)
        except _ReplyError as exc:
            self._fail(f"setup refused: {exc}")
            raise RedisUnavailable(str(exc)) from exc
        return protocol

    def _send(self, command: bytes) -> "asyncio.Future[Any]":
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            raise RedisUnavailable("not connected")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((time.monotonic(), future))
        # Commands sent in one turn of the event loop leave in one write (one syscall).
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        if self._watchdog is None:
            self._arm_watchdog()
        return future

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.write(data)

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._timeout / 2, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        if time.monotonic() - self._pending[0][0] > self._timeout:
            self._fail(f"no reply within {self._timeout}s")
            return
        self._arm_watchdog()

    def _fail(self, reason: str) -> None:
        protocol, self._protocol = self._protocol, None
        pending, self._pending = self._pending, deque()
        self._outgoing = []
        for _, future in pending:
            if not future.done():
                future.set_exception(RedisUnavailable(reason))
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    # --- commands --------------------------------------------------------------------

    async def run(self, script: Script, keys: list[str], args: list[int] | list[int | str]) -> Any:
        """EVALSHA the script (EVAL once if Redis does not have it cached)."""
        if self._protocol is None:
            await self._connection()
        command = encode(b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._send(command)
        except _ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise RedisUnavailable(f"script failed: {exc}") from exc
        try:
            return await self._send(encode(b"EVAL", script.source, len(keys), *keys, *args))
        except _ReplyError as exc:
            raise RedisUnavailable(f"script failed: {exc}") from exc

    def run_nowait(self, script: Script, keys: list[str], args: list[int]) -> "asyncio.Future[Any]":
        """Like `run`, but the command is written before this returns when connected (so
        this process's later commands run after it); the result comes in the future."""
        if self._protocol is None:
            return asyncio.ensure_future(self.run(script, keys, args))
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(future: "asyncio.Future[Any]", retried: bool) -> None:
            if result.done():
                return
            exc = future.exception()
            if exc is None:
                result.set_result(future.result())
            elif isinstance(exc, _ReplyError) and str(exc).startswith("NOSCRIPT") and not retried:
                try:
                    again = self._send(encode(b"EVAL", script.source, len(keys), *keys, *args))
                except RedisUnavailable as failed:
                    result.set_exception(failed)
                    return
                again.add_done_callback(lambda f: settle(f, True))
            elif isinstance(exc, _ReplyError):
                result.set_exception(RedisUnavailable(f"script failed: {exc}"))
            else:
                result.set_exception(exc)

        try:
            first = self._send(encode(b"EVALSHA", script.sha, len(keys), *keys, *args))
        except RedisUnavailable as failed:
            result.set_exception(failed)
            return result
        first.add_done_callback(lambda f: settle(f, False))
        return result

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
