"""The only path from the pool to the database: a bounded in-memory queue drained by one writer greenlet.

`put` never blocks and never does I/O, so a slow or absent database cannot stall a miner. The writer flushes every
`interval` seconds (or as soon as a batch is full) with one multi-row INSERT per table in one transaction. On a
database error the batch stays queued and is retried with backoff; rows carry their own ids, so a batch that did
reach the database before the error is not duplicated (ON CONFLICT DO NOTHING).
"""
from __future__ import annotations

import logging
import time
from collections import deque

import gevent
import gevent.event
import psycopg2
import psycopg2.extras

from .db import Database
from .records import TABLES, Table

log = logging.getLogger(__name__)


class Writer:
    def __init__(self, db: Database, batch: int = 5000, interval: float = 0.05, max_queue: int = 200_000,
                 tables: dict[str, Table] = TABLES) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self.max_queue = max_queue
        self.tables = tables
        self._queue: deque[tuple[str, tuple]] = deque()
        self._wake = gevent.event.Event()
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None
        self.rows_written = 0
        self.rows_dropped = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def put(self, table: str, row: tuple) -> None:
        """Queue one row; never blocks. Past max_queue the row is dropped and counted (logged by the writer)."""
        if len(self._queue) >= self.max_queue:
            self.rows_dropped += 1
            return
        self._queue.append((table, row))
        if len(self._queue) >= self.batch:
            self._wake.set()

    def start(self, spawn=gevent.spawn) -> gevent.Greenlet:
        self._greenlet = spawn(self._run)
        return self._greenlet

    def _run(self) -> None:
        backoff = self.interval
        reported_drops = 0
        while not self._stopping:
            self._wake.wait(timeout=backoff)
            self._wake.clear()
            if self.rows_dropped != reported_drops:
                log.error("writer queue full: %d rows dropped so far", self.rows_dropped)
                reported_drops = self.rows_dropped
            if self._flush_some():
                backoff = self.interval
            else:
                backoff = min(max(backoff * 2, 0.1), 5.0)

    def _flush_some(self) -> bool:
        """Write queued rows in batches until the queue is empty; False when the database refused."""
        while self._queue:
            count = min(len(self._queue), self.batch)
            batch = [self._queue[i] for i in range(count)]
            try:
                self._write(batch)
            except psycopg2.Error as exc:
                self.failures += 1
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("database write of %d rows failed (%s); %d rows queued, will retry",
                            count, self.last_error, len(self._queue))
                return False
            for _ in range(count):
                self._queue.popleft()
            self.rows_written += count
        return True

    def _write(self, batch: list[tuple[str, tuple]]) -> None:
        by_table: dict[str, list[tuple]] = {}
        for table, row in batch:
            by_table.setdefault(table, []).append(row)
        started = time.perf_counter()
        with self.db.connection() as conn, conn.cursor() as cur:
            for name, rows in by_table.items():
                spec = self.tables[name]
                psycopg2.extras.execute_values(cur, spec.insert_sql, rows, template=spec.template,
                                               page_size=len(rows))
        log.debug("wrote %d rows in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop and flush what is queued, retrying until `timeout`; True when nothing is left."""
        self._stopping = True
        self._wake.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout=timeout)
            self._greenlet.kill()  # a write cut short is re-sent below; row ids make that idempotent
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            if not self._flush_some():
                gevent.sleep(0.2)
        if self._queue:
            log.error("writer stopped with %d rows not written (%s)", len(self._queue), self.last_error)
        return not self._queue
