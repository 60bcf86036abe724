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

Redis Cluster (`REDIS_URL=redis-cluster://host:port`, config.redis_clients): `ClusterPipe`
learns the slot map from `CLUSTER SLOTS` and keeps one such pipelined connection per
node; a script goes to the node serving the slot of its first key (every key of one
script shares a hash tag: metering.control.scopes.tenant_tag). MOVED reloads the map
and retries there; ASK retries once on the named node after ASKING. The failure model is
the same: a node out of reach fails its commands with `RedisUnavailable`, and the next
call reloads the map (a replica may have taken over).
"""

import asyncio
import hashlib
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from config.redis_clients import is_cluster

MAX_REDIRECTS = 5  # MOVED/ASK answers one cluster call may follow


class RedisUnavailable(Exception):
    pass


class Redirect(RedisUnavailable):
    """A Redis Cluster node answered MOVED or ASK: the key's slot is served elsewhere.
    Never seen from a single Redis, where it stays an unavailable store."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        kind, slot, address = message.split()[:3]
        self.ask = kind == "ASK"
        self.slot = int(slot)
        host, _, port = address.rpartition(":")
        self.address = (host.strip("[]"), int(port))


class _ReplyError(Exception):
    pass


def _script_failed(exc: _ReplyError) -> RedisUnavailable:
    message = str(exc)
    if message.startswith(("MOVED ", "ASK ")):
        return Redirect(message)
    return RedisUnavailable(f"script failed: {message}")


def key_slot_of(key: str) -> int:
    """The Redis Cluster hash slot of `key` (its hash tag's, when it has one)."""
    return key_slot(key.encode())


def _ignore(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed ASKING shows in the command after it


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
    cluster = False  # one Redis: a script's keys may hash anywhere

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

    async def run(
        self,
        script: Script,
        keys: list[str],
        args: list[int] | list[int | str],
        *,
        asking: bool = False,
    ) -> Any:
        """EVALSHA the script (EVAL once if Redis does not have it cached). `asking`: a
        cluster node named by an ASK redirection, which runs it only after ASKING."""
        if self._protocol is None:
            await self._connection()
        if asking:
            self._send(encode(b"ASKING")).add_done_callback(_ignore)
        command = encode(b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._send(command)
        except _ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise _script_failed(exc) from exc
        if asking:
            self._send(encode(b"ASKING")).add_done_callback(_ignore)
        try:
            return await self._send(encode(b"EVAL", script.source, len(keys), *keys, *args))
        except _ReplyError as exc:
            raise _script_failed(exc) from exc

    async def command(self, *parts: bytes | str | int) -> Any:
        """Any other command (CLUSTER SLOTS): its reply, or RedisUnavailable."""
        if self._protocol is None:
            await self._connection()
        try:
            return await self._send(encode(*parts))
        except _ReplyError as exc:
            raise RedisUnavailable(f"command refused: {exc}") from exc

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
                result.set_exception(_script_failed(exc))
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


Address = tuple[str, int]


class ClusterPipe:
    """The hot path's client for a Redis Cluster: one `RedisPipe` per node, a script sent
    to the node serving its keys' slot (see the module docstring)."""

    cluster = True  # a script's keys must share one slot

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:  # float-ok: seconds
        parts = urlsplit(url)
        self._credentials = parts.netloc.rpartition("@")[0]  # "user:password" or ""
        self._seed: Address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._timeout = timeout
        self._slots: list[Address | None] | None = None  # the primary serving each slot
        self._nodes: dict[Address, RedisPipe] = {}
        self._refreshing: asyncio.Future[None] | None = None

    def _node(self, address: Address) -> RedisPipe:
        pipe = self._nodes.get(address)
        if pipe is None:
            host, port = address
            netloc = f"{self._credentials}@" if self._credentials else ""
            netloc += f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            pipe = self._nodes[address] = RedisPipe(f"redis://{netloc}/0", timeout=self._timeout)
        return pipe

    async def _refresh(self) -> None:
        """Reload the slot map (concurrent callers share one CLUSTER SLOTS)."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._load_slots())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _load_slots(self) -> None:
        failure: RedisUnavailable | None = None
        for address in dict.fromkeys([*self._nodes, self._seed]):
            try:
                reply = await self._node(address).command(b"CLUSTER", b"SLOTS")
            except RedisUnavailable as exc:
                failure = exc
                continue
            slots: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            for start, end, primary, *_ in reply:
                host = primary[0].decode() if primary[0] else address[0]
                served = (host, int(primary[1]))
                slots[start : end + 1] = [served] * (end + 1 - start)
            self._slots = slots
            return
        raise RedisUnavailable(f"no cluster node answers CLUSTER SLOTS: {failure}")

    def _pipe_for(self, keys: list[str]) -> RedisPipe | None:
        if self._slots is None:
            return None
        address = self._slots[key_slot_of(keys[0]) if keys else 0]  # keyless: any node
        return None if address is None else self._node(address)

    async def run(self, script: Script, keys: list[str], args: list[int] | list[int | str]) -> Any:
        asking: Address | None = None
        for _ in range(MAX_REDIRECTS):
            pipe = self._node(asking) if asking is not None else self._pipe_for(keys)
            if pipe is None:
                await self._refresh()
                pipe = self._pipe_for(keys)
                if pipe is None:
                    raise RedisUnavailable("no cluster node serves the slot")
            try:
                return await pipe.run(script, keys, args, asking=asking is not None)
            except Redirect as redirect:
                asking = redirect.address if redirect.ask else None
                if not redirect.ask:  # the slot moved for good: learn the new map
                    await self._refresh()
            except RedisUnavailable:
                self._slots = None  # a node is gone: the next call reloads the map
                raise
        raise RedisUnavailable(f"more than {MAX_REDIRECTS} cluster redirections")

    def run_nowait(self, script: Script, keys: list[str], args: list[int]) -> "asyncio.Future[Any]":
        """Like `RedisPipe.run_nowait`: written before this returns when the node is
        connected (a script of the same slot sent later runs after it)."""
        pipe = self._pipe_for(keys)
        if pipe is None:
            return asyncio.ensure_future(self.run(script, keys, args))
        first = pipe.run_nowait(script, keys, args)
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def copy(done: "asyncio.Future[Any]") -> None:
            if result.done():
                return
            if done.cancelled():
                result.cancel()
            elif done.exception() is not None:
                result.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                result.set_result(done.result())

        def settle(done: "asyncio.Future[Any]") -> None:
            if not done.cancelled() and isinstance(done.exception(), Redirect):
                # not run where it was sent: run it where the cluster says
                asyncio.ensure_future(self.run(script, keys, args)).add_done_callback(copy)
                return
            if not done.cancelled() and done.exception() is not None:
                self._slots = None
            copy(done)

        first.add_done_callback(settle)
        return result

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for pipe in nodes:
            await pipe.close()


def control_client(
    url: str, *, timeout: float = 1.0
) -> RedisPipe | ClusterPipe:  # float-ok: seconds
    """The hot path's client for REDIS_URL: a cluster's for `redis-cluster://`."""
    if is_cluster(url):
        return ClusterPipe(url, timeout=timeout)
    return RedisPipe(url, timeout=timeout)
