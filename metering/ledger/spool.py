"""The ledger's spool: where a batch goes when the database stays unreachable.

Invariants:
- a spool file is named by its writer: host, pid and a random boot id
  (`ledger-<host>-<pid>-<boot>.jsonl`, one JSON object per line, fsync'd before the
  callers are answered), so writers sharing a volume never share a file;
- a live writer holds its file under an exclusive flock; a file nobody holds belongs to
  a dead writer (or a failed replay) and any process may load it: lock, check it is
  still linked, insert (idempotent), unlink. Pids are never used to judge liveness;
- while records stay unreplayed, `rk:spool:<writer>` in Redis holds their count (indexed
  in the set `rk:spool-writers`), and `spool_guard` makes a period close refuse while any
  is reported or the local spool directory holds records, or while Redis does not answer;
- a record whose month was archived and dropped is set aside at replay into a
  `dropped-*.jsonl` file (logged as an ERROR), never retried forever: one such record
  must not keep the rest of its file, and every period close, waiting.
"""

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from config.errors import ApplicationError
from config.redis_clients import mget, redis_client
from metering.calendar import month_start
from metering.ledger.archive_months import months_dropped
from metering.ledger.orm import usage_records_write

logger = logging.getLogger(__name__)

_DATETIME_FIELDS = ("started_at", "finished_at")
_DECIMAL_FIELDS = ("serving_cost_usd", "reasoning_cost_usd", "spend_usd")


def _encode(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for name in _DECIMAL_FIELDS:
        if out.get(name) is not None:
            out[name] = str(out[name])
    out["request_id"] = str(record["request_id"])
    out["tenant_id"] = str(record["tenant_id"])
    for name in _DATETIME_FIELDS:
        out[name] = record[name].isoformat()
    return out


def _decode(line: dict[str, Any]) -> dict[str, Any]:
    out = dict(line)
    for name in _DECIMAL_FIELDS:
        if out.get(name) is not None:
            out[name] = Decimal(out[name])
    out["request_id"] = uuid.UUID(line["request_id"])
    out["tenant_id"] = uuid.UUID(line["tenant_id"])
    for name in _DATETIME_FIELDS:
        out[name] = datetime.fromisoformat(line[name])
    return out


SPOOL_KEY_PREFIX = "rk:spool:"
# The writer ids that reported spool (a close reads these keys, not the whole keyspace).
SPOOL_WRITERS_KEY = "rk:spool-writers"


class SpoolPending(ApplicationError):
    """Usage records are spooled somewhere and not yet in the ledger (or it cannot be told
    whether they are): closing a period now could leave them off its invoice."""

    status = 409
    code = "ledger_spool_pending"


def writer_identity() -> str:
    """This process's writer id: host, pid and a random boot id, so writers of different
    containers sharing one spool volume (all of them pid 7) never share a file name."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _spool_owner(path: Path) -> str:
    """The writer id in a spool file's name: `ledger-<writer>.jsonl` (its live file) or
    `ledger-<writer>.r<n>.jsonl` (a batch of it taken out for replay)."""
    return path.name.removeprefix("ledger-").split(".")[0]


def _lock(fd: int, *, wait: bool) -> bool:
    """Take the exclusive lock of an open spool file. flock works across processes and,
    on a shared volume, across hosts (NFS maps it onto byte-range locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _read_records(fd: int) -> list[dict[str, Any]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    records = []
    for line in b"".join(chunks).decode().splitlines():
        try:
            records.append(_decode(json.loads(line)))
        except ValueError:  # a torn last line (a crash mid-append): its caller got no answer
            logger.error("skipping a torn spool line: %r", line[:200])
    return records


class Spool:
    """One writer's spool: an append-only, fsync'd JSON-lines file it holds locked for as
    long as it lives, so no other process takes it for a dead writer's. A replay renames
    the live file aside first (appends then start a new one) and replays the renamed one;
    a file nobody holds locked belongs to a dead writer (or a replay that failed) and any
    process may take it: lock, check it is still linked, load, unlink."""

    def __init__(self, directory: Path, writer_id: str | None = None) -> None:
        self.directory = directory
        self.writer_id = writer_id or writer_identity()
        self.path = directory / f"ledger-{self.writer_id}.jsonl"
        self._fd: int | None = None  # the live file, locked
        self._rotations = 0
        self._mutex = threading.Lock()  # appends (event loop) against rotation (replayer)

    def append(self, records: list[dict[str, Any]]) -> Path:
        """Journal records durably (append + fsync) before their callers are answered."""
        payload = "".join(json.dumps(_encode(r), separators=(",", ":")) + "\n" for r in records)
        with self._mutex:
            fd = self._live_fd()
            os.write(fd, payload.encode())
            os.fsync(fd)
        return self.path

    def _live_fd(self) -> int:
        while self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            _lock(fd, wait=True)  # only a replayer checking the file holds it, briefly
            if os.fstat(fd).st_nlink == 0:  # a replayer took it while it was empty
                os.close(fd)
                continue
            self._fd = fd
        return self._fd

    def take(self) -> tuple[Path, int] | None:
        """Rename the live file aside for replay; the caller gets it still locked."""
        with self._mutex:
            if self._fd is None:
                return None
            self._rotations += 1
            taken = self.directory / f"ledger-{self.writer_id}.r{self._rotations}.jsonl"
            os.rename(self.path, taken)
            fd, self._fd = self._fd, None
        return taken, fd

    def close(self) -> None:
        """Release the live file (it stays on disk if anything is in it)."""
        with self._mutex:
            if self._fd is not None:
                if os.fstat(self._fd).st_size == 0:
                    os.unlink(self.path)
                os.close(self._fd)
                self._fd = None


def _set_aside(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of `path` whose month is archived and dropped, written (fsync'd) to a
    `dropped-*.jsonl` file beside it and left out; the rest returned for replay.

    Such a record cannot be inserted (its month has no partition) and must not jam the
    file, or the spool stays pending for good. It is kept, not lost: an operator who
    restores the month (`manage.py ledger_restore`) renames the file to `ledger-*.jsonl`
    and the next replay loads it (idempotent: records already in the month are
    skipped). The name carries a digest of the content, so a replay repeated after a
    failure writes the same file again instead of a second copy."""
    dropped = months_dropped(r["started_at"] for r in records)
    if not dropped:
        return records
    aside = [r for r in records if month_start(r["started_at"]) in dropped]
    payload = "".join(json.dumps(_encode(r), separators=(",", ":")) + "\n" for r in aside)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    target = path.with_name(f"dropped-{path.name.removeprefix('ledger-')[:-6]}-{digest}.jsonl")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.error(
        "%d spooled usage record(s) of archived and dropped month(s) %s set aside in %s:"
        " restore the month (manage.py ledger_restore) and rename the file to ledger-*.jsonl"
        " to load them",
        len(aside),
        ", ".join(sorted(f"{m:%Y-%m}" for m in dropped)),
        target,
    )
    return [r for r in records if month_start(r["started_at"]) not in dropped]


def _replay_file(path: Path, fd: int) -> int:
    """Load one locked spool file into the ledger, then remove it; the lock is released
    either way, so a file that failed stays for the next replay (inserts are idempotent).
    Records of a dropped month are set aside first (`_set_aside`)."""
    try:
        inserted = 0
        if os.fstat(fd).st_nlink:  # not already consumed by another replayer
            records = _set_aside(path, _read_records(fd))
            for start in range(0, len(records), 500):
                inserted += usage_records_write(records[start : start + 500])
            os.unlink(path)
        return inserted
    finally:
        os.close(fd)


def spool_replay(
    spool_dir: Path, *, own: Spool | None = None, owners: set[str] | None = None
) -> int:
    """Load every spooled record into the ledger; returns rows inserted. Idempotent.

    Files other live writers hold locked are left to them; `own` (the calling writer's
    spool) has its live file renamed aside and replayed. The first database error is
    raised, the file it hit kept for the next try. `owners` collects the writer ids
    whose files were loaded (so their Redis reports can be cleared)."""
    owners = set() if owners is None else owners
    inserted = 0
    if own is not None and (taken := own.take()) is not None:
        owners.add(own.writer_id)
        inserted += _replay_file(*taken)
    if not spool_dir.exists():
        return inserted
    for path in sorted(spool_dir.glob("ledger-*.jsonl")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # consumed meanwhile
        if not _lock(fd, wait=False):
            os.close(fd)  # its writer is alive (or another replayer has it)
            continue
        owners.add(_spool_owner(path))
        inserted += _replay_file(path, fd)
    return inserted


def spool_pending(spool_dir: Path) -> dict[str, int]:
    """Records waiting in the spool directory, per writer id (all files, locked or not)."""
    pending: dict[str, int] = {}
    if not spool_dir.exists():
        return pending
    for path in spool_dir.glob("ledger-*.jsonl"):
        try:
            count = path.read_bytes().count(b"\n")
        except FileNotFoundError:
            continue
        if count:
            owner = _spool_owner(path)
            pending[owner] = pending.get(owner, 0) + count
    return pending


def spool_unclaimed(spool_dir: Path, own: str) -> set[str]:
    """Writer ids of spool files nobody holds locked (their writer is gone), but ours."""
    owners = set()
    for path in spool_dir.glob("ledger-*.jsonl") if spool_dir.exists() else ():
        owner = _spool_owner(path)
        if owner == own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if _lock(fd, wait=False):
                owners.add(owner)
        finally:
            os.close(fd)
    return owners


def _redis(url: str) -> Any:
    return redis_client(url, socket_timeout=1.0, socket_connect_timeout=1.0)


def spool_report(
    *, spool_dir: Path, redis_url: str, writers: Iterable[str], ttl_seconds: float | None
) -> dict[str, int]:
    """Set `rk:spool:<writer>` to each writer's unreplayed record count in `spool_dir`
    (expiring after `ttl_seconds`, or never when None), delete it at zero. Returns the
    non-zero counts. A Redis failure is logged: the spool itself is what is durable."""
    pending = spool_pending(spool_dir)
    counts = {w: pending.get(w, 0) for w in writers}
    if redis_url and counts:
        import redis

        try:
            with _redis(redis_url).pipeline(transaction=False) as pipe:
                for writer, count in counts.items():
                    key = SPOOL_KEY_PREFIX + writer
                    if count == 0:
                        pipe.delete(key)
                        pipe.srem(SPOOL_WRITERS_KEY, writer)
                        continue
                    if ttl_seconds is not None:
                        pipe.set(key, count, ex=max(1, round(ttl_seconds)))
                    else:
                        pipe.set(key, count)
                    pipe.sadd(SPOOL_WRITERS_KEY, writer)  # after the count: never indexed bare
                pipe.execute()
        except redis.RedisError:
            logger.exception("could not report unreplayed ledger spool to Redis")
    return {w: n for w, n in counts.items() if n}


def spool_outstanding(*, spool_dir: Path, redis_url: str) -> dict[str, int]:
    """Unreplayed spooled records per writer id, as every writer reports them in Redis
    (`rk:spool:<writer>`, indexed in the set `rk:spool-writers`) plus what this machine's
    spool directory holds. Raises
    `SpoolPending` when Redis is configured but does not answer: it cannot be known."""
    outstanding = spool_pending(spool_dir)
    if redis_url:
        import redis

        try:
            client = _redis(redis_url)
            writers = sorted(w.decode() for w in client.smembers(SPOOL_WRITERS_KEY))
            values = mget(client, [SPOOL_KEY_PREFIX + w for w in writers]) if writers else []
        except redis.RedisError as exc:
            raise SpoolPending(
                "Cannot tell whether usage is spooled outside the ledger: Redis does not"
                f" answer ({type(exc).__name__})."
            ) from exc
        for owner, value in zip(writers, values, strict=True):
            if value is not None and int(value) > 0:  # None: expired, its writer is gone
                outstanding[owner] = max(outstanding.get(owner, 0), int(value))
    return outstanding


def spool_guard(*, spool_dir: Path, redis_url: str) -> None:
    """Refuse (SpoolPending, naming the writers) while any writer has unreplayed spool."""
    outstanding = spool_outstanding(spool_dir=spool_dir, redis_url=redis_url)
    if outstanding:
        named = ", ".join(f"{w} ({n} records)" for w, n in sorted(outstanding.items()))
        raise SpoolPending(
            f"Usage records are spooled and not yet in the ledger: {named}.",
            {"writers": outstanding},
        )
