"""PostgreSQL access: a small green connection pool and the idempotent schema.

psycopg2 is made cooperative by psycogreen (patched in __main__), so a query parks only its own greenlet.
A connection that raised a connection-level error is closed and replaced, never handed out again.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import gevent.lock
import psycopg2
import psycopg2.errors
import psycopg2.extensions

log = logging.getLogger(__name__)

# etc/postgres (what docker-compose applies) is the one copy; gstratum/storage/schema links to it in the source tree
# and is a copy of it in an installed package (pip install .).
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
SCHEMA_LOCK_KEY = 0x67737472  # advisory lock so several processes starting together apply the schema one at a time

SCHEMA_OBJECTS = ("connections", "disconnections", "subscriptions", "authorizations", "jobs", "shares", "blocks",
                  "worker_minutes", "admin_actions", "extranonce1_seq", "pplns_shares", "balances", "block_payouts",
                  "pplns_current", "worker_minutes_user_idx")
# Columns added to existing tables since the first schema (each by an idempotent ALTER ... IF NOT EXISTS in
# etc/postgres): a database that lacks one gets the schema applied again.
SCHEMA_COLUMNS = ("jobs.cluster", "blocks.status", "blocks.username", "blocks.results", "blocks.reward",
                  "blocks.prevhash", "worker_minutes.best_achieved", "blocks.block_bytes", "blocks.attempts",
                  "blocks.reason", "blocks.updated_at", "blocks.cluster", "disconnections.live_shares",
                  "blocks.window_start", "blocks.window_end", "blocks.window_total", "blocks.window_shares",
                  "blocks.balances_applied")

# Errors after which a connection may be broken: drop it rather than return it to the pool.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
# ... except a statement cancelled by statement_timeout: the connection is sound, only that transaction failed.
STATEMENT_CANCELLED = psycopg2.errors.QueryCanceled


class PoolBusy(psycopg2.OperationalError):
    """No connection of the pool became free within its `wait`."""


class Database:
    """Hands out connections (autocommit off) from a bounded pool; reconnects lazily.

    `statement_timeout` (seconds): every transaction on a non-autocommit connection starts with `SET LOCAL
    statement_timeout`, so a slow statement is cancelled (QueryCanceled) instead of holding the connection. SET LOCAL
    rather than a startup option, because a startup option is refused by PgBouncer in transaction mode.
    `wait` (seconds): how long `connection()` waits for a free connection before raising PoolBusy (None: forever).
    `transactions` counts the units of work handed out (each one transaction)."""

    def __init__(self, url: str, size: int = 4, connect_timeout: float = 5.0, application_name: str = "gstratum",
                 statement_timeout: float | None = None, wait: float | None = None):
        self.url = url
        self.size = size
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.statement_timeout = statement_timeout
        self.wait = wait
        self.transactions = 0
        self._idle: list[psycopg2.extensions.connection] = []
        self._slots = gevent.lock.BoundedSemaphore(size)
        self._closed = False

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.url, connect_timeout=max(1, int(self.connect_timeout)),
                                application_name=self.application_name)

    @contextlib.contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
        """A connection for one unit of work; committed on success, rolled back (or discarded) on error.
        `autocommit`: no BEGIN/COMMIT round trips; a single execute of several statements is still one
        transaction (PostgreSQL's simple query protocol)."""
        if not self._slots.acquire(timeout=self.wait):
            raise PoolBusy(f"no free database connection within {self.wait:.0f}s")
        try:
            conn = self._idle.pop() if self._idle else self._connect()
            self.transactions += 1
            try:
                conn.autocommit = autocommit   # a client-side flag: no round trip
                if self.statement_timeout is not None and not autocommit:
                    with conn.cursor() as cur:
                        cur.execute("SET LOCAL statement_timeout = %s", (int(self.statement_timeout * 1000),))
                yield conn
                conn.commit()
            except CONNECTION_ERRORS as exc:
                if not isinstance(exc, STATEMENT_CANCELLED):
                    _close_quietly(conn)
                    raise
                self._rollback_and_keep(conn)
                raise
            except BaseException:
                self._rollback_and_keep(conn)
                raise
            if self._closed or conn.closed:
                _close_quietly(conn)
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    def _rollback_and_keep(self, conn) -> None:
        """After an error in the work itself: roll back and keep the connection (dropped if the rollback fails)."""
        try:
            conn.rollback()
        except CONNECTION_ERRORS:
            _close_quietly(conn)
            raise
        if not self._closed:
            self._idle.append(conn)

    def schema_present(self) -> bool:
        """True when every table and the sequence exist: a least-privilege role then needs no DDL."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT bool_and(to_regclass(name) IS NOT NULL) FROM unnest(%s::text[]) AS name",
                        (list(SCHEMA_OBJECTS),))
            if not cur.fetchone()[0]:
                return False
            cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
                        "AND table_name || '.' || column_name = ANY(%s)", (list(SCHEMA_COLUMNS),))
            return cur.fetchone()[0] == len(SCHEMA_COLUMNS)

    def apply_schema(self, schema_dir: Path = SCHEMA_DIR) -> None:
        """Run every etc/postgres/*.sql in name order; they are idempotent (IF NOT EXISTS). Skipped when the
        schema is already there, so the server can run as a role that may not create or alter anything."""
        if self.schema_present():
            log.info("schema present")
            return
        files = sorted(schema_dir.glob("*.sql"))
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for path in files:
                cur.execute(path.read_text())
        log.info("schema applied (%s)", ", ".join(p.name for p in files))

    def close(self) -> None:
        self._closed = True
        while self._idle:
            _close_quietly(self._idle.pop())


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except psycopg2.Error:
        log.debug("error while closing a broken connection", exc_info=True)
