"""Found blocks on disk and in the database: the durable copy that outlives a crash, and the one function that
changes a block's status.

`BlockFiles`: one file per block, `<journal-dir>/blocks/<hash>.block`, written before the first submitblock (tmp file,
fsync, rename, fsync of the directory): one line of JSON (everything needed to record the block, and its size), then
the raw block (raw, not hex in JSON: a 1.5 MB block is written and fsync'd in ~6 ms instead of ~30 ms). The
process driving a block holds an exclusive flock on its file; a file nobody holds belongs to a process that stopped,
and the next process to scan the folder takes it over. The file is deleted once the block is settled (accepted,
refused or stale) and the database row says so. It is what survives a database outage; the row (which carries the
block too) is what another machine of the pool can recover from.

`BlockLedger.change`: every status change of a block row, in one transaction that checks the transition against
gstratum/mining/blockstatus.py's table; `hooks` run in the same transaction (a payout scheme credits miners on
`submitted` and reverses it on `orphaned` there).
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import psycopg2
import ujson

from gstratum.mining.blockstatus import BlockStatus, BlockRecord, allowed, parse_status

log = logging.getLogger(__name__)

SUFFIX = ".block"
TMP_ABANDONED_AFTER = 60.0   # seconds: a tmp file this old, unlocked, was left by a writer that died


@dataclass
class Claim:
    """This process drives the block of `path`: it holds the file's flock through `fd`."""
    path: Path
    fd: int


class BlockFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_of(self, block_hash: str) -> Path:
        return self.directory / f"{block_hash}{SUFFIX}"

    def write(self, block: BlockRecord) -> Claim:
        """Atomically and durably (blocking: run it off the event loop). The flock is taken on the tmp file before
        its rename, so no scanner ever sees the final file unclaimed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_of(block.block_hash)
        tmp = path.with_name(f"{block.block_hash}.{os.getpid()}.tmp")
        head = ujson.dumps(block.as_dict(with_block=False), ensure_ascii=True, escape_forward_slashes=False)
        data = head.encode() + b"\n" + block.block        # ujson never writes a raw newline: the first one ends it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.rename(tmp, path)
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return Claim(path, fd)

    def adopt(self) -> list[tuple[BlockRecord, Claim]]:
        """Files no live process holds (blocking: run it off the event loop): each one claimed and read. A torn or
        foreign file is renamed `.corrupt` and logged, never deleted."""
        if not self.directory.exists():
            return []
        adopted = []
        now = time.time()
        for path in sorted(self.directory.iterdir()):
            name = path.name
            if not (name.endswith(SUFFIX) or name.endswith(".tmp")):
                continue
            claim = _try_claim(path)
            if claim is None:
                continue
            try:
                if name.endswith(".tmp") and now - path.stat().st_mtime < TMP_ABANDONED_AFTER:
                    os.close(claim.fd)     # maybe being written right now by a process that has not locked it yet
                    continue
                block = _read(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                os.close(claim.fd)
                if isinstance(exc, FileNotFoundError):
                    continue
                log.error("block file %s is unreadable (%s); kept as %s.corrupt for an operator", path, exc, name)
                os.replace(path, path.with_name(name + ".corrupt"))
                continue
            if name.endswith(".tmp"):      # complete: its writer died between the fsync and the rename
                final = self.path_of(block.block_hash)
                os.rename(path, final)
                _fsync_directory(self.directory)
                claim.path = final
            adopted.append((block, claim))
        return adopted

    @staticmethod
    def release(claim: Claim, done: bool) -> None:
        """Let go of a block: `done` deletes its file (under the lock, so nobody adopts it meanwhile); otherwise the
        file stays for the next process."""
        try:
            if done:
                claim.path.unlink(missing_ok=True)
        finally:
            os.close(claim.fd)

    def pending_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}")) if self.directory.exists() else []


def _try_claim(path: Path) -> Claim | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not path.exists():      # deleted by its owner between our open and our lock: it is done
        os.close(fd)
        return None
    return Claim(path, fd)


def _read(path: Path) -> BlockRecord:
    with open(path, "rb") as handle:
        head, block = handle.read().split(b"\n", 1)
    return BlockRecord.from_dict(ujson.loads(head), block)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the database row --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """What `BlockLedger.change` found and did: `old` is the row's status before (None: there was no row)."""
    old: BlockStatus | None
    new: BlockStatus | None
    applied: bool


# hook(cursor, row_id, block_hash, old, new): runs inside the status change's transaction
Hook = Callable[[object, str, str, "BlockStatus | None", BlockStatus, "BlockRecord | None"], None]

ROW_COLUMNS = ("id", "connection_id", "worker", "username", "job_id", "height", "block_hash", "prevhash", "header",
               "reward", "found_at", "cluster", "block_bytes", "status", "results", "reason", "attempts",
               "updated_at")
KEPT = ("submitted", "orphaned")


class BlockLedger:
    def __init__(self, db, hooks: Sequence[Hook] = ()) -> None:
        self.db = db
        self.hooks = tuple(hooks)

    def change(self, row_id: str, new: BlockStatus, *, reason: str | None = None, results: dict | None = None,
               attempts: int | None = None, block: BlockRecord | None = None) -> Change:
        """Move one block row to `new` if the transition table allows it from the row's current status; with
        `block`, a missing row is inserted in `new`. One transaction: the row is locked (FOR UPDATE), so two
        processes changing the same block serialize, and hooks see the change they act on. psycopg2.Error when the
        database cannot be reached (the caller keeps the change and tries again)."""
        with self.db.connection() as conn, conn.cursor() as cur:
            old = self._lock(cur, row_id)
            if old is _MISSING:
                if block is None or not allowed(None, new):
                    return Change(None, None, False)
                cur.execute(_INSERT, _row(block, new, reason, results, attempts or 0))
                if cur.rowcount == 1:
                    self._run_hooks(cur, row_id, block.block_hash, None, new, block)
                    return Change(None, new, True)
                old = self._lock(cur, row_id)     # inserted by another process meanwhile: change it as any row
            if not allowed(old, new):
                return Change(old, old, False)
            cur.execute("UPDATE blocks SET status = %s, reason = coalesce(%s, reason), "
                        "results = coalesce(%s::jsonb, results), attempts = coalesce(%s, attempts), "
                        "updated_at = now() WHERE id = %s RETURNING block_hash",
                        (new.value, reason, None if results is None else ujson.dumps(results), attempts, row_id))
            (block_hash,), = cur.fetchall()
            self._run_hooks(cur, row_id, block_hash, old, new)
            return Change(old, new, True)

    @staticmethod
    def _lock(cur, row_id: str):
        cur.execute("SELECT status FROM blocks WHERE id = %s FOR UPDATE", (row_id,))
        row = cur.fetchone()
        return _MISSING if row is None else parse_status(row[0])

    def _run_hooks(self, cur, row_id: str, block_hash: str, old: BlockStatus | None, new: BlockStatus,
                   block: BlockRecord | None = None) -> None:
        """`block`: the record of a row being inserted (None for a change of an existing row)."""
        for hook in self.hooks:
            hook(cur, row_id, block_hash, old, new, block)

    def abandoned(self, cluster: str, idle_seconds: float) -> list[BlockRecord]:
        """Pending blocks of this pool that no process has touched for `idle_seconds` (their owner stopped and its
        file, if any, is on another machine): the cluster leader takes them over."""
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT id, block_hash, height, prevhash, block_bytes, header, worker, username, "
                        "connection_id, job_id, reward, extract(epoch FROM found_at), cluster FROM blocks "
                        "WHERE cluster = %s AND status = 'pending' AND block_bytes IS NOT NULL "
                        "AND coalesce(updated_at, found_at) < now() - make_interval(secs => %s) ORDER BY found_at",
                        (cluster, idle_seconds))
            rows = cur.fetchall()
        return [BlockRecord(row_id=str(r[0]), block_hash=r[1], height=r[2], prevhash=r[3], block=bytes(r[4]),
                           header=r[5], worker=r[6], username=r[7] or "", connection_id=str(r[8]), job_id=r[9],
                           reward=r[10], found_at=float(r[11]), cluster=r[12]) for r in rows]

    def kept(self, cluster: str, lowest_orphan_height: int) -> list[tuple[str, str, int, str | None, BlockStatus]]:
        """Accepted blocks the keeper follows: every `submitted` one, and `orphaned` ones whose height is still within
        reach of a reorg (at or above `lowest_orphan_height`). (row id, hash, height, prevhash, status)."""
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT id, block_hash, height, prevhash, status FROM blocks WHERE cluster = %s AND "
                        "(status = 'submitted' OR (status = 'orphaned' AND height >= %s)) ORDER BY height",
                        (cluster, lowest_orphan_height))
            return [(str(i), h, height, prev, parse_status(status)) for i, h, height, prev, status in cur.fetchall()]


_MISSING = object()
_INSERT = (f"INSERT INTO blocks ({', '.join(ROW_COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
           f"to_timestamp(%s), %s, %s, %s, %s::jsonb, %s, %s, now()) ON CONFLICT (id) DO NOTHING")


def _row(block: BlockRecord, status: BlockStatus, reason: str | None, results: dict | None, attempts: int) -> tuple:
    return (block.row_id, block.connection_id, block.worker, block.username, block.job_id, block.height,
            block.block_hash, block.prevhash, block.header, block.reward, block.found_at, block.cluster,
            psycopg2.Binary(block.block) if block.block else None, status.value, ujson.dumps(results or {}), reason,
            attempts)
