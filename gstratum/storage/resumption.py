"""Session resumption: a miner that reconnects with its subscription id gets its extranonce1 back.

Looked up first among this process's own recent sessions (fast, and covers rows still in the writer queue), then in
PostgreSQL, so it works across processes and restarts. Only sessions subscribed within `window` seconds resume.
A session id is a random 128-bit value handed only to that miner, so it cannot be guessed to steal an extranonce1.

Two live connections must never share an extranonce1: when a session resumes, its old connection is closed, here
(the registry of live sessions) or in another process of the pool (a notice on the cluster bus, sent from its own
greenlet so the miner's reply never waits for the database).
"""
from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict

import psycopg2

from gstratum.greenlets import spawn_logged

log = logging.getLogger(__name__)

_SESSION_ID = re.compile(r"[0-9a-f]{32}d?\Z")   # a uuid4 hex, or it plus "d" for the difficulty subscription


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

    def lookup(self, requested: str) -> tuple[str, str] | None:
        """(session id, extranonce1) of a resumable session named by either subscription id, or None."""
        if not _SESSION_ID.match(requested):
            return None     # not one of ours (and never sent to the database)
        hit = self._recent.get(requested)
        if hit is not None and self.clock() - hit[2] <= self.window:
            return hit[0], hit[1]
        if self.db is None:
            return None
        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT session_id, extranonce1 FROM subscriptions "
                    "WHERE (session_id = %s OR difficulty_sub_id = %s) "
                    "AND subscribed_at > now() - make_interval(secs => %s) "
                    "ORDER BY subscribed_at DESC LIMIT 1", (requested, requested, self.window))
                row = cur.fetchone()
        except psycopg2.Error as exc:
            log.warning("session lookup failed (%s); the miner gets a fresh extranonce1", exc)
            return None
        return (row[0], row[1]) if row else None


SESSIONS_CHANNEL = "sessions"


class Resumption:
    """Resumable sessions (the directory) and the live ones (session id -> connection, to close when resumed)."""

    def __init__(self, directory: SessionDirectory, metrics, bus=None) -> None:
        self.directory = directory
        self.metrics = metrics
        self.bus = bus
        self._live: dict[str, object] = {}
        if bus is not None:
            bus.subscribe(SESSIONS_CHANNEL, self._taken_elsewhere)

    def resume(self, requested: str, session) -> tuple[str, str] | None:
        """(session id, extranonce1) of the session `requested` names, closing its old connection wherever it is."""
        found = self.directory.lookup(requested)
        if found is None:
            return None
        self._close(found[0], keep=session)
        if self.bus is not None:
            spawn_logged(self.bus.publish, SESSIONS_CHANNEL, {"session": found[0]}, name="session-notice")
        return found

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
            self._close(message["session"])
