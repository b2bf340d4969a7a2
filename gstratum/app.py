"""Wiring: build the pool's parts from a Config, start them in order, stop them in reverse order."""
from __future__ import annotations

import logging
import os
import time

import gevent
import psycopg2
import ujson

from gstratum.mining import bitcoin
from gstratum.ops import http
from gstratum.storage.allocator import SequenceAllocator
from gstratum.cluster.bus import ADMIN_CHANNEL, SESSIONS_CHANNEL, Cluster
from gstratum.config import Config
from gstratum.storage.db import Database
from gstratum.storage.embedded_pg import EmbeddedPostgres
from gstratum.greenlets import spawn_logged
from gstratum.ops.http import StatsApi
from gstratum.mining.jobs import JobBook, RandomJobSource
from gstratum.cluster.jobstream import JobStream
from gstratum.storage.journal import Journal
from gstratum.storage.records import Recorder, make_server_id
from gstratum.storage.retention import Retention
from gstratum.net.server import StratumServer
from gstratum.protocol.session import Services
from gstratum.storage.resumption import SessionDirectory
from gstratum.ops.stats import PoolStats
from gstratum.protocol.vardiff import VardiffPolicy
from gstratum.net.supervisor import WORKER_ENV
from gstratum.storage.writer import Writer

log = logging.getLogger(__name__)


class SchemaMismatch(RuntimeError):
    """The database is reachable but holds tables this release cannot use."""


class Pool:
    """The whole server process: database, writer, allocator, job loop and Stratum listener."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.embedded: EmbeddedPostgres | None = None
        self.db: Database | None = None
        self.writer: Writer | None = None
        self.allocator: SequenceAllocator | None = None
        self.server: StratumServer | None = None
        self.job_stream: JobStream | None = None
        self.cluster: Cluster | None = None
        self.stats = PoolStats()
        self.http = None
        self.retention = None

    def database_url(self) -> str:
        if self.config.database_url:
            return self.config.database_url
        self.embedded = EmbeddedPostgres(self.config.pgdata).start()
        return self.embedded.url

    def _wait_for_database(self) -> None:
        """Apply the schema and reserve the first extranonce1 block, retrying while the database is down."""
        deadline = time.monotonic() + self.config.db_wait
        delay = 0.2
        while True:
            try:
                self.db.apply_schema()
                self.allocator.fill_now()
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("database not ready (%s); retrying in %.1fs", str(exc).strip().splitlines()[0], delay)
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)
            except psycopg2.Error as exc:
                # Not an outage: the database answered but the schema cannot be applied (typically a database made
                # by an older gstratum; there are no migrations yet). Retrying would only hide it.
                first_line = str(exc).strip().splitlines()[0]
                raise SchemaMismatch(
                    f"cannot use this database: applying etc/postgres/*.sql failed ({first_line}). A database made "
                    f"by an older gstratum needs the schema changed by hand or a fresh database (embedded: move "
                    f"{self.config.pgdata} away); a role without DDL rights needs the schema applied by its owner "
                    f"first") from exc

    def start(self) -> None:
        cfg = self.config
        self.db = Database(self.database_url(), size=4)
        server_id = make_server_id()
        journal = Journal(cfg.journal_dir, server_id)
        journal.open()
        self.writer = Writer(self.db, batch=cfg.writer_batch, interval=cfg.writer_interval,
                             max_queue=cfg.writer_queue, journal=journal)
        recorder = Recorder(self.writer.put, server_id)
        self.allocator = SequenceAllocator(self.db, block=cfg.extranonce_block, wait=cfg.subscribe_wait)
        self._wait_for_database()
        self.retention = Retention(self.db, cfg.retention_days, lambda: self.cluster.is_leader)
        self.retention.ensure_partitions()   # before the first share, so none lands in shares_default
        self.writer.start(spawn=lambda f: spawn_logged(f, name="writer"))
        self.allocator.start(spawn=lambda f: spawn_logged(f, name="extranonce-refill"))
        book = JobBook()
        services = Services(
            allocator=self.allocator, jobs=book, recorder=recorder, stats=self.stats, difficulty=cfg.difficulty,
            extranonce2_size=cfg.extranonce2_size,
            vardiff=VardiffPolicy(enabled=bool(cfg.vardiff), target_interval=cfg.target_share_interval,
                                  retarget_after=cfg.retarget_after, min_difficulty=cfg.min_difficulty,
                                  max_difficulty=cfg.max_difficulty),
            network_target=lambda job: bitcoin.target_from_nbits(int(job.nbits, 16)),
            on_block=recorder.block,
        )
        self.server = StratumServer(cfg, services, recorder)
        self.server.directory = SessionDirectory(self.db, cfg.resume_window)
        services.resume = self.server.resume
        services.on_subscribed = self.server.on_subscribed
        source = RandomJobSource(extranonce_size=8 + cfg.extranonce2_size, nbits=int(cfg.nbits, 16),
                                 fake_txs=cfg.fake_txs, payout_script=bytes.fromhex(cfg.payout_script),
                                 witness_commitment=bool(cfg.witness_commitment))
        self.job_stream = JobStream(source, book, self.server.broadcast, recorder, cfg.notify_interval,
                                    cfg.clean_every, db=self.db)
        self.cluster = Cluster(cfg.listen_database_url or self.db.url, server_id, self.job_stream.on_published,
                               self.server.session_taken, on_admin=self._on_admin)
        self.job_stream.cluster = self.cluster
        self.server.publish_session = lambda session_id: Cluster.publish(
            self.db, SESSIONS_CHANNEL, {"from": server_id, "session": session_id})
        self.cluster.start(spawn=lambda f: spawn_logged(f, name="cluster-listen"))
        self.job_stream.start()
        self.writer.on_write = services.metrics.db_write.observe
        self.metrics = services.metrics
        self.recorder = recorder
        self.server_id = server_id
        self.server.start()
        spawn_logged(self._log_stats, name="stats-log")
        if os.environ.get(WORKER_ENV):
            spawn_logged(self._write_snapshots, name="snapshots")   # the supervisor serves HTTP for all workers
        elif cfg.http_port:
            api = StatsApi(self.db, lambda: [self.snapshot()], admin=self.admin_request, admin_token=cfg.admin_token)
            self.http = http.serve(api, cfg.http_host, cfg.http_port)
        self.retention.start(spawn=lambda f: spawn_logged(f, name="retention"))

    def snapshot(self) -> dict:
        """This process's live numbers, for /metrics and the API (with --workers, summed by the supervisor)."""
        server, writer = self.server, self.writer
        return {"at": time.time(), "server_id": self.server_id, "processes": 1,
                "connections": len(server.connections), "subscribed": len(server.subscribed),
                "writer_queue": writer.pending, "journal_bytes": writer.journal.bytes_on_disk if writer.journal else 0,
                "extranonce_reserve": self.allocator.reserve, "counters": self.metrics.counters(),
                "workers": server.live_workers(), "recent_jobs": list(self.job_stream.recent)}

    def _write_snapshots(self, every: float = 2.0) -> None:
        directory = self.config.runtime_dir / str(self.config.port)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{os.getpid()}.json"
        try:
            while True:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(ujson.dumps(self.snapshot()))
                os.replace(tmp, path)
                gevent.sleep(every)
        finally:
            path.unlink(missing_ok=True)

    def admin_request(self, action: str, worker: str | None, params: dict, source: str) -> dict:
        """An operator action from the API: recorded, then published so every process applies it to its miners
        (applied here directly when the database cannot carry it)."""
        self.recorder.admin_action(action, worker, ujson.dumps(params), source)
        message = {"action": action, "worker": worker, "params": params}
        if Cluster.publish(self.db, ADMIN_CHANNEL, message):
            return {"published": True}
        return {"published": False, "miners": self.server.admin(action, worker, params)}

    def _on_admin(self, message: dict) -> None:
        try:
            self.server.admin(message["action"], message.get("worker"), message.get("params") or {})
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignored a malformed admin message: %s", exc)

    def _log_stats(self, every: float = 60.0) -> None:
        """One line a minute: miners, writer health and the busiest workers' totals."""
        while True:
            gevent.sleep(every)
            server, writer = self.server, self.writer
            log.info("stats miners=%d subscribed=%d rows_written=%d pending=%d spilled=%d replayed=%d "
                     "extranonce_reserve=%d drops=%s gc_longest=%.0fms %s", len(server.connections),
                     len(server.subscribed), writer.rows_written, writer.pending, writer.spilled, writer.rows_replayed,
                     self.allocator.reserve, server.drops, self.metrics.gc_longest * 1000, self.stats.summary())

    def stop(self) -> None:
        """Graceful: stop accepting and close miners, stop making jobs, flush every pending row, release the DB."""
        started = time.monotonic()
        if self.http is not None:
            self.http.stop(timeout=1)
        if self.retention is not None:
            self.retention.stop()
        if self.server is not None:
            self.server.stop()
        if self.job_stream is not None:
            self.job_stream.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.allocator is not None:
            self.allocator.stop()
        flushed = self.writer.stop() if self.writer is not None else True
        if self.db is not None:
            self.db.close()
        if self.embedded is not None and self.embedded.started_here:
            self.embedded.stop()
        log.info("stopped in %.2fs (%s)", time.monotonic() - started,
                 "all rows written" if flushed else "ROWS NOT WRITTEN, see above")
