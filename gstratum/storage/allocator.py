"""extranonce1 allocation: unique across every miner, process, restart and machine sharing one database.

Values come from the Postgres sequence `extranonce1_seq`, reserved `block` at a time with one round trip
(`nextval` over generate_series), so a subscribe takes a value from memory. The reserve is refilled in the
background when it falls below half a block, so a database outage shorter than the reserve goes unnoticed; when it
runs dry a subscribe waits at most `wait` seconds and then fails with a coded, retryable error.
Values reserved but never handed out (process exit) are simply skipped: uniqueness matters, density does not.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import deque

import gevent
import gevent.event
import psycopg2

from gstratum.storage.db import Database
from gstratum.protocol.rpc import OTHER, StratumError
from gstratum.greenlets import Loops
from gstratum.errors import first_line

log = logging.getLogger(__name__)


class ExtranonceUnavailable(StratumError):
    def __init__(self) -> None:
        super().__init__(OTHER, "Temporarily unavailable, try again")


class MemoryAllocator:
    """In-process counter for pure tests: unique within one process only."""

    def __init__(self, start: int = 1) -> None:
        self._next = itertools.count(start)

    def allocate(self) -> int:
        return next(self._next)

    @property
    def reserve(self) -> int:
        return 1 << 30


class SequenceAllocator:
    def __init__(self, db: Database, block: int = 1000, wait: float = 5.0, loops: Loops | None = None) -> None:
        self.db = db
        self.loops = loops if loops is not None else Loops()
        self.block = block
        self.wait = wait
        self._reserve: deque[int] = deque()
        self._refill_needed = gevent.event.Event()
        self._loop = None

    @property
    def reserve(self) -> int:
        return len(self._reserve)

    def _fetch_block(self) -> list[int]:
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT nextval('extranonce1_seq') FROM generate_series(1, %s)", (self.block,))
            return [row[0] for row in cur.fetchall()]

    def fill_now(self) -> None:
        """Reserve one block synchronously (start-up)."""
        self._reserve.extend(self._fetch_block())

    def start(self) -> None:
        self._loop = self.loops.spawn("extranonce-refill", self._refill_loop)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    def _refill_loop(self) -> None:
        backoff = 0.1
        while True:
            self._refill_needed.wait()
            while len(self._reserve) < self.block:
                try:
                    self._reserve.extend(self._fetch_block())
                    backoff = 0.1
                except psycopg2.Error as exc:
                    log.warning("extranonce1 refill failed (%s); %d left in reserve, retrying in %.1fs",
                                first_line(exc),
                                len(self._reserve), backoff)
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            self._refill_needed.clear()

    def allocate(self) -> int:
        """One fresh extranonce1; waits up to `wait` seconds when the reserve is empty."""
        if len(self._reserve) < self.block // 2 + 1:
            self._refill_needed.set()
        if not self._reserve:
            deadline = time.monotonic() + self.wait
            while not self._reserve and time.monotonic() < deadline:
                self._refill_needed.set()  # the refiller may have cleared it after serving earlier waiters
                gevent.sleep(0.02)
            if not self._reserve:
                raise ExtranonceUnavailable()
        return self._reserve.popleft()
