"""The only path from the pool to the database: a bounded in-memory queue drained by one writer greenlet.

`put` never blocks and never does I/O, so a slow or absent database cannot stall a miner. The writer flushes every
`interval` seconds (or as soon as a batch is full): one INSERT per table, all in one query string and one
transaction. On a database error the rows stay queued and the write is retried with backoff; rows carry their own
ids, so a batch that did reach the database before the error is not duplicated (ON CONFLICT DO NOTHING). Past
`max_queue` rows, new rows spill to the journal on disk (fsync'd in groups each loop), replayed when the database is
back. While the journal cannot be written either (disk full), rows stay in memory up to `max_memory` rows and go to
the journal as soon as it takes writes again; past that bound a row is dropped, counted and logged (a bounded,
reported loss rather than the process killed for memory, which would lose every row it holds).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import deque

import gevent
import gevent.event
import psycopg2

from gstratum.storage.db import Database
from gstratum.greenlets import Loops
from gstratum.storage.journal import Journal, read_batches
from gstratum.protocol.rpc import StratumCode
from gstratum.storage.records import TABLES, Table, _float_array, _text_array
from gstratum.errors import first_line

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
DROP_LOG_EVERY = 10.0   # seconds between two "rows dropped" error lines
# Errors caused by what a row holds (bad value, constraint): that row is set aside. Every other database error
# (down, permissions, schema, a bug) leaves the whole batch queued for a retry: never divert good rows.
ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError, TypeError)

# Rollups count only the share rows this very statement inserted (a data-modifying CTE): a retried or replayed
# batch adds nothing twice. Rejections claiming a name that is not authorized on the connection (24, 25) are not a
# worker's: they get no rollup row.
SHARES_WITH_ROLLUP = (
    "WITH inserted AS ({insert} RETURNING worker, submitted_at, accepted, difficulty, achieved, error_code) "
    "INSERT INTO worker_minutes (worker, minute, accepted, rejected, difficulty_sum, last_share, best_achieved) "
    "SELECT worker, date_trunc('minute', submitted_at), count(*) FILTER (WHERE accepted), "
    "count(*) FILTER (WHERE NOT accepted), coalesce(sum(difficulty) FILTER (WHERE accepted), 0), max(submitted_at), "
    "coalesce(max(achieved) FILTER (WHERE accepted), 0) "
    f"FROM inserted WHERE error_code IS NULL OR error_code NOT IN ({StratumCode.UNAUTHORIZED:d}, "
    f"{StratumCode.NOT_SUBSCRIBED:d}) GROUP BY 1, 2 "
    "ON CONFLICT (worker, minute) DO UPDATE SET accepted = worker_minutes.accepted + EXCLUDED.accepted, "
    "rejected = worker_minutes.rejected + EXCLUDED.rejected, "
    "difficulty_sum = worker_minutes.difficulty_sum + EXCLUDED.difficulty_sum, "
    "last_share = greatest(worker_minutes.last_share, EXCLUDED.last_share), "
    "best_achieved = greatest(worker_minutes.best_achieved, EXCLUDED.best_achieved)")

# PPLNS: the accepted shares of the pool also go into pplns_shares, and every share of the batch gets a submitted_at
# strictly after the pool's newest credited share (greatest(its arrival, the previous one + 1 us), in queue order),
# assigned under a per-pool lock held to commit: commit order is time order, so a reader of the window never sees an
# older share appear after a newer one, and (start, end] names exactly the shares a split counted. The lock is taken
# in its own statement, so the stamping statement's snapshot already sees the previous holder's rows.
PPLNS_LOCK = "SELECT pg_advisory_xact_lock(%s)"
PPLNS_SHARES = (
    "WITH u AS (SELECT * FROM unnest({arrays}, %s::text[], %s::numeric[]) WITH ORDINALITY "
    "AS u({names}, address, exact, n)), "
    "last AS (SELECT coalesce(max(submitted_at), '-infinity'::timestamptz) AS t FROM pplns_shares "
    "WHERE cluster = %s), "
    "stamped AS (SELECT u.*, greatest((SELECT t FROM last), max(to_timestamp(c12) - n * interval '1 microsecond') "
    "OVER (ORDER BY n ROWS UNBOUNDED PRECEDING)) + n * interval '1 microsecond' AS ts FROM u), "
    "inserted AS (INSERT INTO shares ({columns}) SELECT {values}, ts FROM stamped ON CONFLICT DO NOTHING "
    "RETURNING id, worker, submitted_at, accepted, difficulty, achieved, error_code), "
    "credited AS (INSERT INTO pplns_shares (cluster, submitted_at, share_id, address, worker, difficulty) "
    "SELECT %s, i.submitted_at, i.id, s.address, i.worker, s.exact FROM inserted i JOIN stamped s ON s.c0 = i.id "
    "WHERE i.accepted AND s.address IS NOT NULL) "
    "INSERT INTO worker_minutes (worker, minute, accepted, rejected, difficulty_sum, last_share, best_achieved) "
    + SHARES_WITH_ROLLUP[SHARES_WITH_ROLLUP.index("SELECT worker, date_trunc"):])


def pplns_lock_key(cluster: str) -> int:
    """The advisory lock that orders one PPLNS pool's credited shares."""
    return int.from_bytes(hashlib.sha256(f"gstratum-pplns:{cluster}".encode()).digest()[:8], "big", signed=True)


def pplns_shares_sql(spec: Table) -> str:
    names = ", ".join(f"c{i}" for i in range(len(spec.columns)))
    arrays = ", ".join(f"%s::{'float8' if t == 'epoch' else t}[]" for t in spec.types)
    values = ", ".join(f"c{i}" for i in range(len(spec.columns) - 1))     # submitted_at: the stamp
    return PPLNS_SHARES.format(arrays=arrays, names=names, columns=", ".join(spec.columns), values=values)


class Writer:
    def __init__(self, db: Database, batch: int = 5000, interval: float = 0.05, max_queue: int = 200_000,
                 journal: Journal | None = None, tables: dict[str, Table] = TABLES, on_write=None,
                 max_memory: int = 1_000_000, loops: Loops | None = None, pplns_cluster: str | None = None) -> None:
        self.db = db
        self.pplns_cluster = pplns_cluster   # PPLNS: accepted shares are credited to this pool, in one order
        self._pplns_sql = pplns_shares_sql(tables["shares"]) if pplns_cluster else None
        self.batch = batch
        self.interval = interval
        self.max_queue = max_queue
        self.max_memory = max(max_memory, max_queue)   # rows in memory while the journal cannot take them
        self.journal = journal
        self.loops = loops if loops is not None else Loops()
        self.tables = tables
        self._queue: deque[tuple[str, tuple]] = deque()
        self._wake = gevent.event.Event()
        self._stopping = False
        self._loop = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self.rows_written = 0
        self.rows_dropped = 0
        self.rows_replayed = 0
        self.rows_rejected = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_write_seconds = 0.0
        self.healthy = True
        self.on_write = on_write   # callback(seconds) per successful batch, for metrics
        self._replayed_once = False
        self._spilled_at_replay = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def rows_lost(self) -> int:
        """Rows that will never reach the database: dropped past the memory bound, or not encodable at all."""
        return self.rows_dropped + (self.journal.rows_unencodable if self.journal is not None else 0)

    def put(self, table: str, row: tuple) -> None:
        """Queue one row; never blocks, never raises. Past max_queue it goes to the journal; while the journal
        fails, it stays in memory up to max_memory rows; past that (or past max_queue without a journal) it is
        dropped and counted."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            journal = self.journal
            if journal is not None and journal.healthy:
                journal.append(table, row)
                return
            if journal is None or len(queue) >= self.max_memory:
                self.rows_dropped += 1
                return
        queue.append((table, row))
        if len(queue) >= self.batch:
            self._wake.set()

    def start(self):
        self._loop = self.loops.spawn("writer", self._run)
        return self._loop

    def _run(self) -> None:
        reported_drops, reported_at = self.rows_dropped, 0.0
        while not self._stopping:
            self._wake.wait(timeout=self.interval)
            self._wake.clear()
            self._keep_journal()
            if self.rows_dropped != reported_drops and time.monotonic() - reported_at > DROP_LOG_EVERY:
                if self.journal is None:
                    why = "writer queue full and no journal"
                else:
                    why = f"{len(self._queue)} rows in memory and the journal cannot be written " \
                          f"({self.journal.last_error})"
                log.error("%d rows dropped so far: %s", self.rows_dropped, why)
                reported_drops, reported_at = self.rows_dropped, time.monotonic()
            if time.monotonic() < self._next_attempt:
                continue
            if self._flush_queue() and self._replay_due():
                self._replay()

    def _keep_journal(self) -> None:
        """Write the rows spilled since the last tick. Rows past max_queue belong on disk: they stay in memory
        only while the journal cannot take them, and go back to it (a batch per tick, so encoding them never
        stalls the loop) once a write may be tried again, which is also how a freed disk is found."""
        journal = self.journal
        if journal is None:
            return
        queue = self._queue
        if len(queue) > self.max_queue and journal.retry_due():
            for _ in range(min(len(queue) - self.max_queue, self.batch)):
                journal.append(*queue.pop())
        if journal.sync() or not journal.buffered:
            return
        rows = journal.take_buffer()     # the disk refused them: keep them in memory meanwhile
        room = max(self.max_memory - len(queue), 0)
        queue.extend(rows[:room])
        self.rows_dropped += max(len(rows) - room, 0)

    def _failed(self, exc: psycopg2.Error, rows: int) -> None:
        self.failures += 1
        self.last_error = first_line(exc)
        self._backoff = min(max(self._backoff * 2, 0.1), MAX_BACKOFF)
        self._next_attempt = time.monotonic() + self._backoff
        if self.healthy or self.failures % 20 == 0:
            log.warning("database write of %d rows failed (%s); %d queued in memory, %d spilled to the journal; "
                        "retrying in %.1fs", rows, self.last_error, len(self._queue), self.spilled, self._backoff)
        self.healthy = False

    def _succeeded(self) -> None:
        if not self.healthy:
            log.info("database writes recovered after %d failures", self.failures)
        self.healthy = True
        self._backoff = 0.0

    @property
    def spilled(self) -> int:
        return self.journal.rows_spilled if self.journal is not None else 0

    def _flush_queue(self, everything: bool = False) -> bool:
        """Write what is queued now; False when the database refused. While writing, more rows arrive: those are
        written straight away only if they fill a batch, else they wait for the next tick, so a busy pool writes
        a few large batches instead of a stream of tiny ones (each costs a round trip and its fixed overhead).
        `everything`: keep going until the queue is empty (stop)."""
        first = True
        while self._queue and (first or everything or len(self._queue) >= self.batch):
            first = False
            count = min(len(self._queue), self.batch)
            batch = list(itertools.islice(self._queue, count))   # deque indexing would be O(n) per item
            try:
                self._write(batch)
            except psycopg2.Error as exc:
                self._failed(exc, count)
                return False
            for _ in range(count):
                self._queue.popleft()
            self.rows_written += count
        self._succeeded()
        return True

    def _replay_due(self) -> bool:
        """Replay at start (files left by a dead process) and whenever rows were spilled since the last replay."""
        journal = self.journal
        return journal is not None and (not self._replayed_once or journal.rows_spilled != self._spilled_at_replay)

    def _replay(self) -> None:
        """Move spilled rows back: rotate the live journal, then replay every pending file and delete it."""
        journal = self.journal
        spilled = journal.rows_spilled
        try:
            if journal.bytes_on_disk or journal.buffered:
                journal.rotate()
                journal.bytes_on_disk = 0
            pending = journal.pending_files()
        except OSError as exc:
            log.warning("journal rotation failed (%s); replay postponed", first_line(exc))
            return
        for path in pending:
            replayed = 0
            try:
                for batch in read_batches(path, self.batch):
                    self._write(batch)
                    replayed += len(batch)
                path.unlink(missing_ok=True)
            except psycopg2.Error as exc:
                self._failed(exc, replayed)
                return
            except FileNotFoundError:
                continue  # another process replayed it first
            except OSError as exc:
                log.error("journal %s cannot be read (%s); left for the next replay", path.name, first_line(exc))
                continue
            self.rows_replayed += replayed
            self.rows_written += replayed
            log.info("replayed %d rows from journal %s", replayed, path.name)
        self._replayed_once = True
        self._spilled_at_replay = spilled

    def _write(self, batch: list[tuple[str, tuple]]) -> None:
        """Write a batch; a row the database refuses for what it is (not for being down) is set aside, so one
        poison row can never block the queue behind it."""
        try:
            self._insert(batch)
        except ROW_ERRORS as exc:
            if len(batch) == 1:
                self._set_aside(batch[0], exc)
                return
            middle = len(batch) // 2
            self._write(batch[:middle])
            self._write(batch[middle:])

    def _set_aside(self, item: tuple[str, tuple], exc: Exception) -> None:
        self.rows_rejected += 1
        if self.journal is not None and self.journal.set_aside(*item):
            log.error("database refused a %s row (%s); kept in %s", item[0], first_line(exc)[:200],
                      self.journal.rejected_path)
        else:
            log.error("database refused a %s row (%s); not kept elsewhere: %.500r", item[0], first_line(exc)[:200],
                      item[1])

    def _insert(self, batch: list[tuple[str, tuple]]) -> None:
        """The whole batch in one round trip: one statement per table, sent as a single query string, which
        PostgreSQL runs as one transaction (autocommit on, so no BEGIN/COMMIT round trips)."""
        by_table: dict[str, list[tuple]] = {}
        for table, row in batch:
            by_table.setdefault(table, []).append(row)
        started = time.perf_counter()
        with self.db.connection(autocommit=True) as conn, conn.cursor() as cur:
            statements = []
            for name, rows in by_table.items():
                spec = self.tables[name]
                if name == "shares" and self._pplns_sql is not None:
                    statements.append(cur.mogrify(PPLNS_LOCK, (pplns_lock_key(self.pplns_cluster),)))
                    statements.append(cur.mogrify(self._pplns_sql, [
                        *spec.column_arrays(rows), _text_array([r[13] if len(r) > 13 else None for r in rows]),
                        _float_array([r[8] for r in rows]), self.pplns_cluster, self.pplns_cluster]))
                elif spec.types is not None:      # hot tables: one array literal per column
                    sql = SHARES_WITH_ROLLUP.format(insert=spec.unnest_sql) if name == "shares" else spec.unnest_sql
                    statements.append(cur.mogrify(sql, spec.column_arrays(rows)))
                else:                           # rare rows with arrays or JSON (jobs, blocks, admin actions)
                    head, tail = spec.insert_sql.encode().split(b"%s")
                    statements.append(head + b",".join(cur.mogrify(spec.template, row) for row in rows) + tail)
            cur.execute(b";".join(statements))
        self.last_write_seconds = time.perf_counter() - started
        if self.on_write is not None:
            self.on_write(self.last_write_seconds)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop and write out what is queued, retrying until `timeout`. What still cannot be written
        goes to the journal, so it is replayed at the next start. True when everything reached the database."""
        self._stopping = True
        self._wake.set()
        if self._loop is not None:
            if not self._loop.down:       # a crashed loop waiting for its restart has nothing to finish
                self._loop.join(timeout=timeout)
            self._loop.stop()  # a write cut short is re-sent below; row ids make that idempotent
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            if not self._flush_queue(everything=True):
                gevent.sleep(min(self._backoff, max(deadline - time.monotonic(), 0)))
        if not self._queue and self.journal is not None and self.healthy:
            self._replay()
        written = not self._queue
        if self._queue and self.journal is not None:
            while self._queue:
                self.journal.append(*self._queue.popleft())
            log.warning("database unreachable at shutdown: rows kept in journal %s for the next start",
                        self.journal.path.name)
        if self.journal is not None:
            kept = self.journal.close()
            written = (written and kept and not self.journal.path.exists()
                       and not self.journal.pending_files(own_only=True))
        if self._queue:
            log.error("writer stopped with %d rows not written (%s)", len(self._queue), self.last_error)
        if self.rows_lost:
            log.error("%d rows were lost while this process ran (see above)", self.rows_lost)
        return written and not self.rows_lost
