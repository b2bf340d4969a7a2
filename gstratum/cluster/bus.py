"""One job stream for every gstratum process on one database, on PostgreSQL alone.

Exactly one process is the job leader: whoever holds a session-level advisory lock on its LISTEN connection. The
leader builds each job, records it and publishes it with NOTIFY; every process (the leader too) LISTENs and
broadcasts what it hears to its own miners. If the leader dies its connection closes, the lock is released, and
another process takes it at its next try (every second), so jobs continue within one interval.
The same channel mechanism tells other processes to close a connection whose session was resumed elsewhere.
The LISTEN connection must go to PostgreSQL directly: a transaction-mode pooler (PgBouncer) cannot carry LISTEN
or a session-level advisory lock.
"""
from __future__ import annotations

import logging
import time

import gevent
import psycopg2
import psycopg2.extensions
import ujson
from gstratum.greenlets import stop_greenlet
from gevent.socket import wait_read

log = logging.getLogger(__name__)

JOBS_CHANNEL = "gstratum_jobs"
SESSIONS_CHANNEL = "gstratum_sessions"
ADMIN_CHANNEL = "gstratum_admin"
LEADER_LOCK = 0x6A6F626C  # "jobl"


class Cluster:
    def __init__(self, url: str, server_id: str, on_job, on_session_taken, on_admin=None, poll: float = 1.0) -> None:
        self.url = url
        self.server_id = server_id
        self.on_job = on_job
        self.on_session_taken = on_session_taken
        self.on_admin = on_admin
        self.poll = poll
        self.is_leader = False
        self.connected = False
        self._conn = None
        self._greenlet = None
        self.became_leader_at: float | None = None

    # -- the LISTEN connection ----------------------------------------------------------------------------------
    def _connect(self) -> None:
        conn = psycopg2.connect(self.url, connect_timeout=5, application_name="gstratum-listen",
                                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {JOBS_CHANNEL}; LISTEN {SESSIONS_CHANNEL}; LISTEN {ADMIN_CHANNEL}")
        self._conn = conn
        self.connected = True

    def _try_lead(self) -> None:
        with self._conn.cursor() as cur:
            if self.is_leader:
                cur.execute("SELECT 1")   # a dead connection shows here, and leadership is given up below
                return
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
            if cur.fetchone()[0]:
                self.is_leader = True
                self.became_leader_at = time.time()
                log.info("this process is now the job leader")

    def step(self) -> None:
        """One round: (re)connect, try to lead, wait for notifications up to `poll` seconds, dispatch them."""
        if self._conn is None:
            self._connect()
        self._try_lead()
        try:
            wait_read(self._conn.fileno(), timeout=self.poll)
        except TimeoutError:
            return
        except OSError:
            raise psycopg2.OperationalError("listen socket failed")
        self._conn.poll()
        while self._conn.notifies:
            note = self._conn.notifies.pop(0)
            self._dispatch(note.channel, note.payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        try:
            message = ujson.loads(payload)
        except ValueError:
            log.warning("ignored a malformed %s notification", channel)
            return
        if channel == JOBS_CHANNEL:
            self.on_job(message)
        elif channel == SESSIONS_CHANNEL and message.get("from") != self.server_id:
            self.on_session_taken(message.get("session"))
        elif channel == ADMIN_CHANNEL and self.on_admin is not None:
            self.on_admin(message)

    def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                self.step()
                backoff = 0.2
            except psycopg2.Error as exc:
                self._lost(exc)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _lost(self, exc: Exception) -> None:
        if self.is_leader:
            log.warning("job leadership lost: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        elif self.connected:
            log.warning("LISTEN connection lost: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        self.is_leader = False
        self.connected = False
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None

    def start(self, spawn) -> None:
        """Connect and take part in the first election before returning, so start-up knows who leads."""
        try:
            self._connect()
            self._try_lead()
        except psycopg2.Error as exc:
            self._lost(exc)
        self._greenlet = spawn(self._run)

    def stop(self) -> None:
        stop_greenlet(self._greenlet)
        if self._conn is not None:
            self._conn.close()   # releases the advisory lock at once: the next leader need not wait
            self._conn = None
        self.is_leader = False

    # -- publishing (on the pool's ordinary connections, never the LISTEN one) ------------------------------------
    @staticmethod
    def publish(db, channel: str, message: dict) -> bool:
        try:
            with db.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, %s)", (channel, ujson.dumps(message)))
            return True
        except psycopg2.Error as exc:
            log.warning("NOTIFY %s failed: %s", channel, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            return False
