"""The cluster bus: every gstratum process of one pool on one PostgreSQL, with LISTEN/NOTIFY and an advisory lock.

A pool is a namespace (`--cluster NAME`): its channels are `NAME_<channel>` and its leader lock is derived from
NAME, so two independent pools (or two test servers) can share one database without hearing each other.

Exactly one process of a pool is the leader: whoever holds the session-level advisory lock on its LISTEN connection.
If the leader dies its connection closes, the lock is released, and another process takes it at its next try (every
`poll` seconds). Users subscribe a handler per channel before `start()`; a handler gets the decoded JSON message.

libpq reads every notification that has arrived whenever it reads from the socket, including during our own queries
on the LISTEN connection (the leader's keep-alive, the lock attempt): those land in `conn.notifies` without the
socket ever becoming readable again. So pending notifications are dispatched after every query and after every
wake-up, never only when the socket turns readable.

The LISTEN connection must reach PostgreSQL directly: a transaction-mode pooler (PgBouncer) cannot carry LISTEN or
a session-level advisory lock (`--listen-database-url`).
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Callable

import gevent
import psycopg2
import psycopg2.extensions
import ujson
from gevent.socket import wait_read

from gstratum.errors import first_line
from gstratum.greenlets import Loops

log = logging.getLogger(__name__)

CLUSTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")   # it becomes part of channel names: keep it an identifier

Handler = Callable[[dict], None]
LEADER_CHANNEL = "leader"


def leader_lock_key(cluster: str) -> int:
    """A stable signed 64-bit advisory lock key for this pool's leadership."""
    return int.from_bytes(hashlib.sha256(f"gstratum-leader:{cluster}".encode()).digest()[:8], "big", signed=True)


class Bus:
    """Publish/subscribe between the processes of one pool, plus leader election (the LISTEN connection)."""

    def __init__(self, listen_url: str, db, cluster: str, server_id: str, poll: float = 1.0,
                 loops: Loops | None = None) -> None:
        if not CLUSTER_NAME.match(cluster):
            raise ValueError(f"cluster name {cluster!r} must be lowercase letters, digits and _ (1-40)")
        self.listen_url = listen_url
        self.db = db                  # publishes go over the ordinary pool, never the LISTEN connection
        self.cluster = cluster
        self.server_id = server_id
        self.poll = poll
        self.loops = loops if loops is not None else Loops()
        self.lock_key = leader_lock_key(cluster)
        self.is_leader = False
        self.connected = False
        self.became_leader_at: float | None = None
        self.publish_failures = 0
        self._handlers: dict[str, Handler] = {}
        self._conn = None
        self._loop = None
        # "the leader left": any notification wakes the loop, whose next step tries the lock at once, so a
        # stopping leader is replaced within a round trip instead of at the next poll
        self._handlers[self.channel(LEADER_CHANNEL)] = lambda message: None

    @staticmethod
    def channel_of(cluster: str, name: str) -> str:
        return f"{cluster}_{name}"

    def channel(self, name: str) -> str:
        return self.channel_of(self.cluster, name)

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Register the handler of one channel (before start). Messages from this very process are delivered too;
        a handler that must ignore its own echo compares `message["from"]` with `server_id`."""
        if self._loop is not None:
            raise RuntimeError("subscribe before start()")
        self._handlers[self.channel(channel)] = handler

    # -- the LISTEN connection ----------------------------------------------------------------------------------
    def _connect(self) -> None:
        conn = psycopg2.connect(self.listen_url, connect_timeout=5, application_name="gstratum-listen",
                                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with conn.cursor() as cur:
            cur.execute("; ".join(f'LISTEN "{name}"' for name in self._handlers) or "SELECT 1")
        self._conn = conn
        self.connected = True

    def _try_lead(self) -> None:
        with self._conn.cursor() as cur:
            if self.is_leader:
                cur.execute("SELECT 1")   # a dead connection shows here, and leadership is given up in _lost
                return
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,))
            if cur.fetchone()[0]:
                self.is_leader = True
                self.became_leader_at = time.time()
                log.info("this process is now the job leader (cluster %s)", self.cluster)

    def _dispatch_pending(self) -> None:
        notifies = self._conn.notifies
        while notifies:
            note = notifies.pop(0)
            handler = self._handlers.get(note.channel)
            if handler is None:
                continue
            try:
                message = ujson.loads(note.payload)
            except ValueError:
                log.warning("ignored a malformed %s notification", note.channel)
                continue
            if isinstance(message, dict):
                handler(message)

    def step(self) -> None:
        """One round: (re)connect, try to lead, dispatch what is pending, wait up to `poll` seconds for more."""
        if self._conn is None:
            self._connect()
        self._try_lead()
        self._dispatch_pending()      # what libpq read while running that query
        try:
            wait_read(self._conn.fileno(), timeout=self.poll)
        except TimeoutError:
            return
        except OSError:
            raise psycopg2.OperationalError("listen socket failed") from None
        self._conn.poll()
        self._dispatch_pending()

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
            log.warning("leadership of cluster %s lost: %s", self.cluster, first_line(exc))
        elif self.connected:
            log.warning("LISTEN connection lost: %s", first_line(exc))
        self.is_leader = False
        self.connected = False
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None

    def start(self) -> None:
        """Connect and take part in the first election before returning, so start-up knows who leads."""
        try:
            self._connect()
            self._try_lead()
        except psycopg2.Error as exc:
            self._lost(exc)
        self._loop = self.loops.spawn("cluster-listen", self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        was_leader = self.is_leader
        if self._conn is not None:
            self._conn.close()   # releases the advisory lock at once
            self._conn = None
        self.is_leader = False
        if was_leader:           # and says so, so a follower takes over now, not at its next poll
            self.publish(LEADER_CHANNEL, {"left": True})

    # -- publishing (on the pool's ordinary connections, never the LISTEN one) ------------------------------------
    def publish(self, channel: str, message: dict, statement: tuple[str, tuple] | None = None) -> bool:
        """NOTIFY the pool; with `statement`, that statement runs in the same transaction first, so a listener that
        hears the message can already read what the statement wrote (notifications are delivered at commit).
        A failure is an ERROR with a counter: a message that does not go out splits the pool until it recovers."""
        payload = ujson.dumps({"from": self.server_id, **message})
        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                if statement is not None:
                    cur.execute(*statement)
                cur.execute("SELECT pg_notify(%s, %s)", (self.channel(channel), payload))
            return True
        except psycopg2.Error as exc:
            self.publish_failures += 1
            log.error("publishing on %s failed (%d so far): %s", self.channel(channel), self.publish_failures,
                      first_line(exc))
            return False
