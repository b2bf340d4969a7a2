"""Subscribing: a fresh extranonce1, or a resumed session that gets its extranonce1 back with what it already
submitted.

A miner that reconnects with its subscription id within `window` seconds keeps its extranonce1: work it found on
the job it had can still be submitted. Since every header the miner hashes contains its extranonce1, a resumed
session is the only way the same work can reach the pool twice, so resuming also carries the session's credited
shares of live work to wherever it resumes (one credit per share, pool-wide):

* on the same process, the process-wide ShareLedger already holds them;
* on another process (another `--workers` worker, a SIGHUP successor, another machine), the previous connection's
  disconnection row carries them (`live_shares`, written when it closed, after all its share rows: one writer
  queue, in order). The resuming process tells the pool the session moved (the old process closes the connection
  if it is still open), waits for that row, and merges the shares into its ledger before it answers. If the row
  does not come within `handover_wait` (the old process died, or cannot reach the database), the session is not
  resumed: the miner gets a fresh extranonce1, which no earlier share can match.

Looked up first among this process's own recent sessions (fast, and covers rows still in the writer queue), then in
PostgreSQL. A session id is a random 128-bit value handed only to that miner, so it cannot be guessed to steal an
extranonce1. Two live connections never share an extranonce1: the old one is closed here or, over the cluster bus,
in the process that holds it.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import gevent
import psycopg2
import ujson

from gstratum.errors import first_line
from gstratum.greenlets import spawn_logged
from gstratum.mining.ledger import ShareLedger
from gstratum.protocol.session import SubscribeRequest, Subscription

log = logging.getLogger(__name__)

_SESSION_ID = re.compile(r"[0-9a-f]{32}d?\Z")   # a uuid4 hex, or it plus "d" for the difficulty subscription
SESSIONS_CHANNEL = "sessions"


@dataclass(frozen=True, slots=True)
class FoundSession:
    session_id: str
    extranonce1: str
    connection_id: str | None       # its latest connection when it lives in another process (None: this one)


class SessionDirectory:
    def __init__(self, db, window: float, capacity: int = 200_000, clock=time.time) -> None:
        self.db = db
        self.window = window
        self.capacity = capacity
        self.clock = clock
        self._recent: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    def remember(self, session_id: str, difficulty_sub_id: str, extranonce1: str) -> None:
        now = self.clock()
        for key in (session_id, difficulty_sub_id):
            self._recent[key] = (session_id, extranonce1, now)
            self._recent.move_to_end(key)
        while len(self._recent) > self.capacity:
            self._recent.popitem(last=False)

    def forget(self, session_id: str) -> None:
        """The session moved to another process: the next lookup must read where it went, not our memory."""
        self._recent.pop(session_id, None)
        self._recent.pop(session_id + "d", None)

    def lookup(self, requested: str) -> FoundSession | None:
        """The resumable session named by either subscription id, or None."""
        if not _SESSION_ID.match(requested):
            return None     # not one of ours (and never sent to the database)
        hit = self._recent.get(requested)
        if hit is not None and self.clock() - hit[2] <= self.window:
            return FoundSession(hit[0], hit[1], None)
        if self.db is None:
            return None
        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT session_id, extranonce1, connection_id::text FROM subscriptions "
                    "WHERE (session_id = %s OR difficulty_sub_id = %s) "
                    "AND subscribed_at > now() - make_interval(secs => %s) "
                    "ORDER BY subscribed_at DESC LIMIT 1", (requested, requested, self.window))
                row = cur.fetchone()
        except psycopg2.Error as exc:
            log.warning("session lookup failed (%s); the miner gets a fresh extranonce1", first_line(exc))
            return None
        return FoundSession(row[0], row[1], row[2].replace("-", "")) if row else None

    def handed_over(self, connection_id: str, wait: float, every: float = 0.02) -> dict | None:
        """The live shares a closed connection left in its disconnection row ({} when it had none), waiting up to
        `wait` seconds for the row; None when it does not come (or the database cannot say)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                with self.db.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT live_shares FROM disconnections WHERE connection_id = %s", (connection_id,))
                    row = cur.fetchone()
            except psycopg2.Error as exc:
                log.warning("session hand-over lookup failed: %s", first_line(exc))
                return None
            if row is not None:
                value = row[0]
                if isinstance(value, str):
                    value = ujson.loads(value)
                return value if isinstance(value, dict) else {}
            if time.monotonic() >= deadline:
                return None
            gevent.sleep(every)


class Resumption:
    """Resumable sessions (the directory) and the live ones (session id -> connection, to close when resumed)."""

    def __init__(self, directory: SessionDirectory, metrics, ledger: ShareLedger, bus=None,
                 handover_wait: float = 3.0) -> None:
        self.directory = directory
        self.metrics = metrics
        self.ledger = ledger
        self.bus = bus
        self.handover_wait = handover_wait
        self._live: dict[str, object] = {}
        if bus is not None:
            bus.subscribe(SESSIONS_CHANNEL, self._taken_elsewhere)

    def resume(self, requested: str, session) -> tuple[str, str] | None:
        """(session id, extranonce1) of the session `requested` names, its old connection closed wherever it is
        and its credited shares of live work in this process's ledger; None when it cannot be resumed safely."""
        found = self.directory.lookup(requested)
        if found is None:
            return None
        self._close(found.session_id, keep=session)
        if found.connection_id is None:          # it lived here: the ledger has all it did
            if self.bus is not None:
                spawn_logged(self.bus.publish, SESSIONS_CHANNEL, {"session": found.session_id},
                             name="session-notice")
            return found.session_id, found.extranonce1
        if self.bus is not None:                 # it lived elsewhere: that process closes it and writes the row
            self.bus.publish(SESSIONS_CHANNEL, {"session": found.session_id})
        shares = self.directory.handed_over(found.connection_id, self.handover_wait)
        if shares is None:
            self.metrics.drop("resume refused")
            log.warning("session %s not resumed: its previous connection %s left no record within %.1fs (process "
                        "gone?); a fresh extranonce1 instead", found.session_id[:8], found.connection_id,
                        self.handover_wait)
            return None
        try:
            self.ledger.inherit(bytes.fromhex(found.extranonce1), shares)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("session %s not resumed: malformed hand-over (%s)", found.session_id[:8], exc)
            return None
        return found.session_id, found.extranonce1

    def remember(self, session_id: str, difficulty_sub_id: str, extranonce1: str) -> None:
        self.directory.remember(session_id, difficulty_sub_id, extranonce1)

    def register(self, session_id: str, connection) -> None:
        self._live[session_id] = connection

    def unregister(self, session_id: str, connection) -> None:
        if self._live.get(session_id) is connection:
            del self._live[session_id]

    def _close(self, session_id: str | None, keep=None) -> None:
        old = self._live.get(session_id) if session_id else None
        if old is not None and old.session is not keep:
            self.metrics.drop("resumed")
            old.abort("session resumed by a new connection")

    def _taken_elsewhere(self, message: dict) -> None:
        if message.get("from") != self.bus.server_id and isinstance(message.get("session"), str):
            self.directory.forget(message["session"])
            self._close(message["session"])


class Subscriptions:
    """Answers the part of mining.subscribe that needs I/O (gstratum.protocol.session.SubscribeRequest): a session
    resumed, or a fresh session id with an extranonce1 from the allocator (which may wait for the database and then
    raise ExtranonceUnavailable, a StratumError the session sends back). Blocks only the calling connection's
    greenlet. `resumption` None: sessions are never resumed (pure tests, tools)."""

    def __init__(self, allocator, resumption: Resumption | None = None) -> None:
        self.allocator = allocator
        self.resumption = resumption

    def resolve(self, request: SubscribeRequest, session) -> Subscription:
        resumption = self.resumption
        if request.requested_session and resumption is not None:
            found = resumption.resume(request.requested_session, session)
            if found is not None:
                resumption.remember(found[0], found[0] + "d", found[1])
                return Subscription(found[0], found[1], resumed=True)
        subscription = Subscription(uuid.uuid4().hex, f"{self.allocator.allocate():016x}")
        if resumption is not None:
            resumption.remember(subscription.session_id, subscription.session_id + "d", subscription.extranonce1)
        return subscription
