"""Retention of raw shares: daily partitions created ahead, partitions older than `days` dropped.

Run by the job leader only (one process per database does it), hourly. The rollups in `worker_minutes` are kept.
Partition DDL needs the table owner: a server running as the least-privilege role logs this once and leaves it to
`python -m gstratum maintain` run by the owner (e.g. from cron).
"""
from __future__ import annotations

import datetime as dt
import logging
import re

import gevent
import psycopg2
from gstratum.greenlets import Loops
from gstratum.errors import first_line

log = logging.getLogger(__name__)

PARTITION = re.compile(r"shares_p(\d{8})\Z")
AHEAD_DAYS = 7


def partition_name(day: dt.date) -> str:
    return f"shares_p{day:%Y%m%d}"


def plan(existing: list[str], today: dt.date, days: int) -> tuple[list[dt.date], list[str]]:
    """(days to create, partitions to drop): keep [today - days, today + AHEAD_DAYS]."""
    have = {}
    for name in existing:
        match = PARTITION.match(name)
        if match:
            have[dt.datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    create = [today + dt.timedelta(d) for d in range(-1, AHEAD_DAYS + 1) if today + dt.timedelta(d) not in have]
    cutoff = today - dt.timedelta(days)
    drop = [name for day, name in sorted(have.items()) if day < cutoff]
    return create, drop


class Retention:
    def __init__(self, db, days: int, leadership=None, every: float = 3600.0, loops: Loops | None = None) -> None:
        self.db = db
        self.loops = loops if loops is not None else Loops()
        self.days = days
        self.leadership = leadership    # anything with .is_leader (the cluster bus); None: always act
        self.every = every
        self._loop = None
        self._warned = False

    def run_once(self, today: dt.date | None = None) -> tuple[list[str], list[str]]:
        """Create missing partitions and drop expired ones; returns (created, dropped) names."""
        today = today or dt.datetime.now(dt.timezone.utc).date()
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('shares')")
            row = cur.fetchone()
            if row is None or row[0] != "p":
                log.warning("shares is not a partitioned table: retention does nothing")
                return [], []
            cur.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'shares'::regclass")
            create, drop = plan([r[0] for r in cur.fetchall()], today, self.days)
        created, dropped = [], []
        for day in create:
            name = partition_name(day)
            bounds = (f"{day.isoformat()} 00:00:00+00", f"{(day + dt.timedelta(1)).isoformat()} 00:00:00+00")
            try:
                with self.db.connection() as conn, conn.cursor() as cur:
                    cur.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF shares FOR VALUES FROM (%s) TO (%s)",
                                bounds)
            except psycopg2.errors.CheckViolation:
                self._adopt_from_default(name, bounds)
            except (psycopg2.errors.DuplicateTable, psycopg2.errors.UniqueViolation):
                continue   # another process created it at the same moment
            created.append(name)
        for name in drop:
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {name}")
            dropped.append(name)
        if created or dropped:
            log.info("retention: created %s, dropped %s", created or "-", dropped or "-")
        return created, dropped

    def _adopt_from_default(self, name: str, bounds: tuple[str, str]) -> None:
        """Rows for that day already sit in shares_default (written before its partition existed): move them
        into a new table and attach it as the day's partition, in one transaction."""
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("LOCK TABLE shares_default IN ACCESS EXCLUSIVE MODE")
            cur.execute(f"CREATE TABLE {name} (LIKE shares INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            cur.execute(f"WITH moved AS (DELETE FROM shares_default WHERE submitted_at >= %s AND submitted_at < %s "
                        f"RETURNING *) INSERT INTO {name} SELECT * FROM moved", bounds)
            moved = cur.rowcount
            cur.execute(f"ALTER TABLE shares ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", bounds)
        log.info("partition %s created with %d rows moved out of shares_default", name, moved)

    def ensure_partitions(self) -> None:
        """At start-up, best effort: today's and the coming days' partitions exist before any share arrives."""
        try:
            self.run_once()
        except psycopg2.errors.InsufficientPrivilege:
            log.info("no privilege to manage share partitions here (fine for the least-privilege role)")
        except psycopg2.Error as exc:
            log.warning("could not prepare share partitions: %s", first_line(exc))

    def _run(self) -> None:
        while True:
            if self.leadership is None or self.leadership.is_leader:
                try:
                    self.run_once()
                except psycopg2.errors.InsufficientPrivilege:
                    if not self._warned:
                        log.warning("retention needs the table owner; run `python -m gstratum maintain` as the owner")
                        self._warned = True
                except psycopg2.Error as exc:
                    log.warning("retention failed: %s", first_line(exc))
            gevent.sleep(self.every)

    def start(self) -> None:
        self._loop = self.loops.spawn("retention", self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
