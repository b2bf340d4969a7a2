"""Wiring: the pool's object graph is built once from a Config (no I/O), started in order, stopped in reverse.

Every collaborator is passed in through a constructor. The three cycles of the old wiring are broken by order,
not by patching: the cluster bus is built before its users and each of them subscribes to its own channel
(job stream, resumption, admin actions); the server takes a session factory; resumption owns the registry of
live sessions that both the server and the sessions use.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from pathlib import Path

import gevent
import psycopg2
import ujson

from gstratum.cluster.bus import Bus
from gstratum.cluster.jobstream import JobStream
from gstratum.config import Config
from gstratum.errors import first_line
from gstratum.greenlets import Loops
from gstratum.mining import bitcoin
from gstratum.mining.address import normalize_address
from gstratum.mining.channel import FoundBlock, MiningCore
from gstratum.mining.jobs import JobBook, RandomJobSource
from gstratum.mining.ledger import ShareLedger
from gstratum.node.rpc import NodeClient, Nodes
from gstratum.node.blocks import BlockKeeper, BlockSubmitter
from gstratum.node.work import NodeWork
from gstratum.net.server import Port, StratumServer
from gstratum.net.sv2 import Sv2Identity
from gstratum.ops import http
from gstratum.ops.admin import AdminActions
from gstratum.ops.metrics import Metrics
from gstratum.ops.stats import PoolStats
from gstratum.ops.tuning import watch_loop
from gstratum.protocol.session import Services, Session
from gstratum.protocol.sv2.session import Sv2Session
from gstratum.mining.vardiff import VardiffPolicy
from gstratum.storage.allocator import SequenceAllocator
from gstratum.storage.blocks import BlockFiles, BlockLedger
from gstratum.storage.db import Database
from gstratum.storage.journal import Journal
from gstratum.storage.records import Recorder, make_server_id
from gstratum.storage.pplns import PplnsLedger, PplnsSettings
from gstratum.storage.resumption import Resumption, SessionDirectory, Subscriptions
from gstratum.storage.retention import Retention
from gstratum.storage.writer import Writer

log = logging.getLogger(__name__)


class SchemaMismatch(RuntimeError):
    """The database is reachable but holds tables this release cannot use."""


def network_target(job) -> int:
    return bitcoin.target_from_nbits(int(job.nbits, 16))


class Pool:
    """The whole server process: database, writer, allocator, cluster bus, job stream, Stratum listener, HTTP.

    `listeners` (one bound socket per `config.listeners()`, with its TLS context or None) and `http_listener` are
    opened by the caller before anything else, so a busy port or a bad certificate fails at once.
    `snapshot_dir`: a `--workers` worker leaves its live numbers there for the supervisor, which serves HTTP."""

    def __init__(self, config: Config, database_url: str, listeners: list[tuple], http_listener=None,
                 snapshot_dir: Path | None = None) -> None:
        cfg = self.config = config
        self.snapshot_dir = snapshot_dir
        self.server_id = make_server_id()
        self.metrics = Metrics()
        self.stats = PoolStats()
        self.loops = Loops()          # every long-lived greenlet: restarted when it raises, down ones make us unready
        self.db = Database(database_url, size=4)
        # the HTTP API reads on connections of its own, with a statement timeout: never on the writer's
        self.api_db = http.api_database(database_url) if http_listener is not None and snapshot_dir is None else None
        self.journal = Journal(cfg.journal_dir, self.server_id)
        self.writer = Writer(self.db, batch=cfg.writer_batch, interval=cfg.writer_interval, max_queue=cfg.writer_queue,
                             journal=self.journal, on_write=self.metrics.db_write.observe,
                             max_memory=cfg.writer_memory, loops=self.loops,
                             pplns_cluster=cfg.cluster if cfg.pplns else None)
        self.recorder = Recorder(self.writer.put, self.server_id, cfg.cluster)
        self.allocator = SequenceAllocator(self.db, block=cfg.extranonce_block, wait=cfg.subscribe_wait,
                                           loops=self.loops)
        self.bus = Bus(cfg.listen_database_url or database_url, self.db, cfg.cluster, self.server_id,
                       loops=self.loops)
        self.retention = Retention(self.db, cfg.retention_days, leadership=self.bus, loops=self.loops)
        self.book = JobBook()
        self.share_ledger = ShareLedger(self.book.prevhashes)
        self.resumption = Resumption(SessionDirectory(self.db, cfg.resume_window), self.metrics, self.share_ledger,
                                     self.bus)
        self.nodes = self.node_work = self.submitter = self.keeper = self.block_ledger = self.pplns = None
        if cfg.bitcoind:    # Bitcoin Core: every process asks the node itself, nothing is shared over the bus
            self.nodes = Nodes([NodeClient(url, cfg.bitcoind_cookie) for url in cfg.bitcoind], self.metrics)
            if cfg.pplns:   # PPLNS: balances move with blocks' fates, in BlockLedger's transactions
                self.pplns = PplnsLedger(self.db, cfg.cluster, PplnsSettings(
                    payout_address=normalize_address(cfg.payout_address), pool_fee=cfg.pool_fee,
                    window_factor=cfg.pplns_window, window_difficulty=cfg.pplns_window_difficulty,
                    min_output=cfg.pplns_min_output, max_outputs=cfg.pplns_max_outputs), loops=self.loops)
            self.block_ledger = BlockLedger(self.db, hooks=[self.pplns.on_block_status] if self.pplns else [])
            self.keeper = BlockKeeper(self.block_ledger, self.nodes, leadership=self.bus, cluster=cfg.cluster,
                                      every=cfg.block_keeper_interval, loops=self.loops)
        vardiff = VardiffPolicy(enabled=bool(cfg.vardiff), target_interval=cfg.target_share_interval,
                                retarget_after=cfg.retarget_after, min_difficulty=cfg.min_difficulty,
                                max_difficulty=cfg.max_difficulty)
        self.core = MiningCore(jobs=self.book, ledger=self.share_ledger, recorder=self.recorder, metrics=self.metrics,
                               stats=self.stats, network_target=network_target)
        services = Services(core=self.core, difficulty=cfg.difficulty, extranonce2_size=cfg.extranonce2_size,
                            vardiff=vardiff, payout_for=self._solo_payout if cfg.solo else None,
                            login_address=self._pplns_login if cfg.pplns else None)
        ports = []
        specs = cfg.listeners()
        self.sv2_identity = Sv2Identity(cfg.sv2_authority_key, int(cfg.sv2_cert_validity)) \
            if any(spec.protocol == "sv2" for spec in specs) else None
        for spec, (sock, tls) in zip(specs, listeners):   # each port: its own difficulty bounds and protocol
            port_services = dataclasses.replace(services, difficulty=spec.difficulty, vardiff=dataclasses.replace(
                vardiff, min_difficulty=spec.min_difficulty))
            front_end = Sv2Session if spec.protocol == "sv2" else Session   # V1 and V2: one core, two front ends
            ports.append(Port(sock, functools.partial(front_end, port_services), tls, spec.protocol))
        self.server = StratumServer(cfg, ports, self.recorder, self.metrics, vardiff,
                                    Subscriptions(self.allocator, self.resumption), self.share_ledger,
                                    self._on_block, self.resumption, loops=self.loops, sv2_identity=self.sv2_identity)
        source = RandomJobSource(extranonce_size=8 + cfg.extranonce2_size, nbits=int(cfg.nbits, 16),
                                 fake_txs=cfg.fake_txs, payout_script=bytes.fromhex(cfg.payout_script),
                                 witness_commitment=bool(cfg.witness_commitment))
        self.job_stream = JobStream(source, self.book, self.server.broadcast, self.recorder, self.metrics,
                                    cfg.notify_interval, cfg.clean_every, db=self.db,
                                    bus=None if self.nodes is not None else self.bus, loops=self.loops)
        if self.nodes is not None:
            self.node_work = NodeWork(self.nodes, self.job_stream, self.metrics, cfg.payout_address,
                                      cfg.coinbase_tag.encode(), 8 + cfg.extranonce2_size, cfg.template_refresh,
                                      cfg.block_poll, cfg.zmq_hashblock, bus=self.bus, solo=bool(cfg.solo),
                                      solo_fee=cfg.solo_fee, max_template_age=cfg.max_template_age,
                                      payouts=self.pplns, loops=self.loops)
            self.submitter = BlockSubmitter(self.nodes, self.node_work, self.block_ledger,
                                            BlockFiles(cfg.journal_dir / "blocks"), self.metrics,
                                            self.recorder.new_id, cfg.cluster, leadership=self.bus,
                                            record_first=self.pplns is not None, loops=self.loops)
        self.admin = AdminActions(self.server, self.bus, self.recorder)
        self.http_listener = http_listener
        self.http = None
        self._running: list = []      # stop callables of what has started, in start order

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
                log.warning("database not ready (%s); retrying in %.1fs", first_line(exc), delay)
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)
            except psycopg2.Error as exc:
                # Not an outage: the database answered but the schema cannot be applied (typically a database made
                # by an older gstratum; there are no migrations yet). Retrying would only hide it.
                raise SchemaMismatch(
                    f"cannot use this database: applying etc/postgres/*.sql failed ({first_line(exc)}). A database made "
                    f"by an older gstratum needs the schema changed by hand or a fresh database (embedded: move "
                    f"{self.config.pgdata} away); a role without DDL rights needs the schema applied by its owner "
                    f"first") from exc

    def start(self) -> None:
        self.journal.open()
        self._running.append(self.db.close)
        self._wait_for_database()
        self.retention.ensure_partitions()   # before the first share, so none lands in shares_default
        if self.sv2_identity is not None:
            if self.sv2_identity.load():
                log.warning("Stratum V2 authority key created in %s (mode 0600): miners pin its public key, "
                            "`python -m gstratum sv2-key --sv2-authority-key %s`", self.config.sv2_authority_key,
                            self.config.sv2_authority_key)
        work = self.node_work if self.node_work is not None else self.job_stream
        # the block submitter before the work: blocks left pending by a previous process are resubmitted at once
        submitter = (self.submitter,) if self.submitter is not None else ()
        pplns_follow = (self.pplns,) if self.pplns is not None else ()
        for part in (self.writer, self.allocator, self.bus, *pplns_follow, *submitter, work, self.server):
            part.start()
            self._running.append(part.stop)
        if self.keeper is not None:
            self.keeper.start()
            self._running.append(self.keeper.stop)
        self._running.append(self.loops.spawn("stats-log", self._log_stats).stop)
        self._running.append(watch_loop(self.metrics, self.loops).stop)
        if self.snapshot_dir is not None:
            self._running.append(self.loops.spawn("snapshots", self._write_snapshots).stop)
        elif self.http_listener is not None:
            self._running.append(self.api_db.close)
            api = http.StatsApi(self.api_db, self.snapshots, admin=self.admin.request,
                                admin_token=self.config.admin_token, cluster=self.config.cluster)
            self.http = http.serve(api, self.http_listener)
            self._running.append(functools.partial(self.http.stop, timeout=1))
        self.retention.start()
        self._running.append(self.retention.stop)

    def snapshot(self) -> dict:
        """This process's live numbers, for /metrics and the API (with --workers, summed by the supervisor)."""
        server, writer = self.server, self.writer
        return {"at": time.time(), "server_id": self.server_id, "processes": 1,
                "connections": len(server.connections), "subscribed": len(server.subscribed) + len(server.sv2),
                "writer_queue": writer.pending, "journal_bytes": self.journal.bytes_on_disk,
                "journal_failures": self.journal.failures, "rows_dropped": writer.rows_lost,
                "loop_restarts": self.loops.restarts(), "loops_down": len(self.loops.down()),
                "extranonce_reserve": self.allocator.reserve, "counters": self.metrics.counters(),
                "workers": server.live_workers(), "recent_jobs": list(self.job_stream.recent),
                "template_age": self.template_age(), "nodes": self.node_status(),
                "blocks_pending": self.submitter.pending if self.submitter is not None else 0, **self.readiness()}

    def _on_block(self, block: FoundBlock) -> None:
        """A share met the network target: with a node, assembled and submitted; otherwise a recorded candidate."""
        if self.submitter is not None and block.job.block is not None:
            self.submitter.found(block)
        else:
            self.recorder.block({"job_id": block.job_id, "height": block.height, "worker": block.worker,
                                 "block_hash": block.block_hash, "header": block.header.hex(),
                                 "connection_id": block.connection_id})

    def _solo_payout(self, address: str) -> bytes:
        return self.node_work.solo_script(address)

    def _pplns_login(self, user: str) -> str:
        return self.node_work.pplns_login(user)

    def template_age(self) -> float:
        if self.node_work is not None:
            return self.node_work.template_age
        current = self.book.current
        return time.time() - current.created_at if current is not None else float("inf")

    def node_status(self) -> dict[str, int]:
        return {c.name: int(c.up) for c in self.nodes.clients} if self.nodes is not None else {}

    def readiness(self) -> dict:
        """Ready for miners: fresh work (a node's template within --max-template-age, or a current random job)
        and a healthy database writer. One definition for /readyz, the supervisor and the logs."""
        reasons = []
        if self.node_work is not None:
            if not self.node_work.fresh:
                reasons.append(f"no fresh template from bitcoind ({self.node_work.last_error or 'none yet'})")
        elif self.book.current is None:
            reasons.append("no job yet")
        if not self.writer.healthy:
            reasons.append(f"database writes failing ({self.writer.last_error})")
        if not self.journal.healthy:
            reasons.append(f"spill journal cannot be written ({self.journal.last_error}); "
                           f"{self.writer.pending} rows held in memory")
        for loop in self.loops.down():
            reasons.append(f"loop {loop.name} down ({loop.last_error}); restarting")
        return {"ready": not reasons, "not_ready": reasons}

    def snapshots(self) -> list[dict]:
        return [self.snapshot()]

    def _write_snapshots(self, every: float = 2.0) -> None:
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.snapshot_dir / f"{os.getpid()}.json"
        try:
            while True:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(ujson.dumps(self.snapshot()))
                os.replace(tmp, path)
                gevent.sleep(every)
        finally:
            path.unlink(missing_ok=True)

    def _log_stats(self, every: float = 60.0) -> None:
        """One line a minute: miners, writer health and the busiest workers' totals."""
        while True:
            gevent.sleep(every)
            server, writer, metrics = self.server, self.writer, self.metrics
            log.info("stats miners=%d subscribed=%d rows_written=%d pending=%d spilled=%d replayed=%d "
                     "extranonce_reserve=%d drops=%s blocks=%d gc_longest=%.0fms %s", len(server.connections),
                     len(server.subscribed), writer.rows_written, writer.pending, writer.spilled, writer.rows_replayed,
                     self.allocator.reserve, metrics.dropped, metrics.blocks, metrics.gc_longest * 1000,
                     self.stats.summary())

    def stop(self) -> bool:
        """Graceful, in reverse order of start: stop accepting and close miners, stop making jobs, flush every
        pending row, release the database. True when every row reached the database."""
        started = time.monotonic()
        flushed = True
        while self._running:
            if self._running.pop()() is False:   # the writer's stop: False when rows were left unwritten
                flushed = False
        log.info("stopped in %.2fs (%s)", time.monotonic() - started,
                 "all rows written" if flushed else "ROWS NOT WRITTEN, see above")
        return flushed
