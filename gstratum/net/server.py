"""The TCP side: a gevent StreamServer with a bounded pool of connection greenlets, the registry of live miners,
the job broadcast and a graceful stop."""
from __future__ import annotations

import logging
import socket
import time

import gevent
import gevent.lock
import gevent.pool
from gevent.server import StreamServer

from gstratum.config import Config
from gstratum.net.connection import SHUTDOWN, Connection
from gstratum.greenlets import LoggedPool, spawn_logged, stop_greenlet
from gstratum.protocol.limits import CostPolicy
from gstratum.mining.jobs import Job
from gstratum.protocol.session import Session, Services
from gstratum.net.takeover import make_listener
from gstratum.protocol import proxy_protocol
from gstratum.protocol import rpc

log = logging.getLogger(__name__)

FANOUT_CHUNK = 512   # sends between yields in a broadcast (~5-10 ms of work on loopback)


def _abort_later(conn: Connection, seconds: float) -> None:
    """Close a miner that did not follow client.reconnect by itself."""
    gevent.sleep(seconds)
    conn.abort("reconnect requested (takeover)")


class StratumServer:
    def __init__(self, config: Config, services: Services, recorder) -> None:
        self.config = config
        self.services = services
        self.recorder = recorder
        self.connections: set[Connection] = set()
        self.subscribed: set[Connection] = set()
        self.writers = gevent.pool.Group()  # outbox flushers of miners whose socket buffer was full
        self.handlers = LoggedPool(config.max_connections + 256)  # headroom so over-cap connections can be refused
        self._server: StreamServer | None = None
        self.last_fanout: tuple[str, int, float] | None = None
        self.cost_policy = CostPolicy(soft=config.cost_soft, hard=config.cost_hard)
        self.per_ip: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.by_session: dict[str, Connection] = {}
        self.directory = None           # gstratum.storage.resumption.SessionDirectory, when resumption is on
        self.publish_session = None     # tells other processes that a session moved here (cluster)
        self._sweeper = None
        self._broadcasting = gevent.lock.Semaphore()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.address

    def start(self) -> None:
        self.listener = make_listener(self.config.host, self.config.port)
        self._server = StreamServer(self.listener, self._handle, spawn=self.handlers)
        self._server.start()
        self._sweeper = spawn_logged(self._sweep_forever, name="sweeper")
        log.info("stratum listening on %s:%d", *self._server.address[:2])

    def dropped(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.services.metrics.drop(reason)

    def _refuse(self, sock, reason: str) -> None:
        """Over a cap: close at once, before any state, row or greenlet beyond this one exists."""
        self.dropped(reason)
        if self.drops[reason] in (1, 10, 100) or self.drops[reason] % 1000 == 0:
            log.warning("refused connections (%s): %d so far", reason, self.drops[reason])
        try:
            sock.close()
        except OSError:
            pass

    def _read_proxy_header(self, sock, address, timeout: float = 5.0):
        """(real address, bytes after the header), or None when the header is missing or malformed."""
        buffer = b""
        try:
            with gevent.Timeout(timeout):
                while True:
                    parsed = proxy_protocol.parse(buffer)
                    if parsed is not None:
                        source, length = parsed
                        return (source or address[:2]), buffer[length:]
                    data = sock.recv(4096)
                    if not data:
                        return None
                    buffer += data
        except proxy_protocol.ProxyHeaderError as exc:
            log.warning("closing %s:%s: %s", address[0], address[1], exc)
        except (gevent.Timeout, OSError):
            log.warning("closing %s:%s: no PROXY protocol header within %.0fs", address[0], address[1], timeout)
        return None

    def _handle(self, sock, address) -> None:
        initial = b""
        if self.config.proxy_protocol:
            header = self._read_proxy_header(sock, address)
            if header is None:
                return self._refuse(sock, "proxy header")
            address, initial = header
        remote_addr, remote_port = address[0], address[1]
        if len(self.connections) >= self.config.max_connections:
            return self._refuse(sock, "cap")
        if self.per_ip.get(remote_addr, 0) >= self.config.max_per_ip:
            return self._refuse(sock, "ip cap")
        self.per_ip[remote_addr] = self.per_ip.get(remote_addr, 0) + 1
        if self.config.socket_sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_sndbuf)
        connection_id = self.recorder.new_id()
        session = Session(self.services, connection_id, remote_addr)
        conn = Connection(self, sock, address, connection_id, session)
        self.connections.add(conn)
        self.recorder.connection_opened(connection_id, remote_addr, remote_port, self.address[1])
        log.debug("connected %s from %s:%d", connection_id, remote_addr, remote_port)
        conn.serve(initial)

    def now_subscribed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.subscribed.add(conn)
            self.by_session[conn.session.session_id] = conn

    def resume(self, requested: str, session: Session) -> tuple[str, str] | None:
        """Session resumption: the previous (session id, extranonce1), closing the old connection if still open
        here, so two live connections never share an extranonce1."""
        if self.directory is None:
            return None
        found = self.directory.lookup(requested)
        if found is None:
            return None
        self.session_taken(found[0], keep=session)
        if self.publish_session is not None:
            self.publish_session(found[0])
        return found

    def session_taken(self, session_id: str | None, keep: Session | None = None) -> None:
        """A session resumed elsewhere (here, or in another process): close its old connection here, if any."""
        old = self.by_session.get(session_id) if session_id else None
        if old is not None and old.session is not keep:
            self.dropped("resumed")
            old.abort("session resumed by a new connection")
            self.subscribed.discard(old)

    def on_subscribed(self, session: Session, difficulty_sub_id: str) -> None:
        if self.directory is not None:
            self.directory.remember(session.session_id, difficulty_sub_id, session.extranonce1)

    def forget(self, conn: Connection) -> None:
        """Called once when a connection's serve loop ends."""
        self.connections.discard(conn)
        if self.by_session.get(conn.session.session_id) is conn:
            del self.by_session[conn.session.session_id]
        addr = conn.address[0]
        left = self.per_ip.get(addr, 1) - 1
        if left > 0:
            self.per_ip[addr] = left
        else:
            self.per_ip.pop(addr, None)
        self.subscribed.discard(conn)
        reason = conn.close_reason or "closed"
        self.recorder.connection_closed(conn.id, reason, conn.session.requests)
        log.debug("disconnected %s: %s", conn.id, reason)

    def sweep(self) -> None:
        """Close connections that never subscribed in time, and subscribed miners silent for too long."""
        cfg = self.config
        now_mono = time.monotonic()
        now = self.services.clock()
        for conn in list(self.connections):
            if not conn.session.subscribed:
                if now_mono - conn.connected_at > cfg.subscribe_timeout:
                    self.dropped("subscribe timeout")
                    conn.abort(f"not subscribed within {cfg.subscribe_timeout:.0f}s")
            elif now - conn.session.last_activity > cfg.idle_timeout:
                self.dropped("idle")
                conn.abort(f"idle for {cfg.idle_timeout:.0f}s")

    def _sweep_forever(self, every: float = 1.0) -> None:
        while True:
            gevent.sleep(every)
            self.sweep()

    def broadcast(self, job: Job) -> int:
        """Send `job` to every subscribed miner; the line is encoded once and each send never blocks.

        Every FANOUT_CHUNK sends the loop yields once, so a fan-out to 10,000 miners (mostly kernel time in `send`)
        does not hold back handshakes and share replies for its whole duration. Broadcasts are serialised, so a
        miner never receives a newer job before an older one."""
        with self._broadcasting:
            started = time.perf_counter()
            line = job.notify_line()
            targets = list(self.subscribed)
            retarget_cutoff = self.services.vardiff.due_cutoff(self.services.clock())
            cpu = 0.0
            for first in range(0, len(targets), FANOUT_CHUNK):
                cpu_started = time.process_time()
                for conn in targets[first:first + FANOUT_CHUNK]:
                    session = conn.session
                    if session.vardiff.since <= retarget_cutoff:   # a retarget may be due: this miner's own lines
                        conn.outbox.send(b"".join(session.broadcast_lines(job)))
                    else:   # the common case, kept lean: the shared line, one send
                        conn.outbox.send(line)
                cpu += time.process_time() - cpu_started
                gevent.sleep(0)
            reached = len(targets)
            elapsed = time.perf_counter() - started
        self.last_fanout = (job.job_id, reached, elapsed)
        self.services.metrics.jobs += 1
        self.services.metrics.fanout.observe(elapsed)
        log.info("notify job=%s clean=%s miners=%d fanout=%.1fms cpu=%.1fms", job.job_id, job.clean_jobs, reached,
                 elapsed * 1000, cpu * 1000)
        return reached

    def drain(self, period: float, deadline: float, public_host: str | None = None) -> None:
        """Hand miners over to a successor: stop accepting, send each `client.reconnect` (spread over `period`
        seconds so they do not all arrive at once), close those that do not leave by themselves, and return when
        all are gone or `deadline` seconds have passed."""
        started = time.monotonic()
        if self._server is not None:
            self._server.close()
        conns = sorted(self.connections, key=lambda c: not c.session.subscribed)
        step = period / max(len(conns), 1)
        log.info("draining %d miners over %.1fs", len(conns), period)
        for conn in conns:
            if conn.close_reason is None:
                try:
                    host, port = conn.sock.getsockname()[:2]
                except OSError:
                    continue
                conn.outbox.send(rpc.encode_notification("client.reconnect", [public_host or host, port, 0]))
                spawn_logged(_abort_later, conn, 2.0, name="drain-abort")
            if step:
                gevent.sleep(step)
        while self.connections and time.monotonic() - started < deadline:
            gevent.sleep(0.1)
        log.info("drained in %.1fs, %d miners left", time.monotonic() - started, len(self.connections))

    def live_workers(self) -> dict[str, dict]:
        """Per authorized worker name: open connections and the current difficulty (of the newest)."""
        workers: dict[str, dict] = {}
        for conn in self.subscribed:
            session = conn.session
            for name in session.workers:
                entry = workers.get(name)
                if entry is None:
                    workers[name] = {"connections": 1, "difficulty": session.difficulty}
                else:
                    entry["connections"] += 1
                    entry["difficulty"] = session.difficulty
        return workers

    def targets(self, worker: str | None) -> list[Connection]:
        return [c for c in self.subscribed if worker is None or worker in c.session.workers]

    def admin(self, action: str, worker: str | None, params: dict) -> int:
        """Apply an operator action to this process's miners (all, or one worker's); returns how many."""
        targets = self.targets(worker)
        if action == "message":
            line = rpc.encode_notification("client.show_message", [str(params.get("text", ""))[:512]])
            for conn in targets:
                conn.outbox.send(line)
        elif action == "difficulty":
            difficulty = float(params["difficulty"])
            for conn in targets:
                conn.outbox.send(b"".join(conn.session._retarget_lines(conn.session._bounded(difficulty))))
        elif action == "disconnect":
            for conn in targets:
                self.dropped("operator")
                conn.abort("disconnected by operator")
        elif action == "reconnect":
            spawn_logged(self._reconnect_spread, targets, params, name="admin-reconnect")
        else:
            raise ValueError(f"unknown admin action {action!r}")
        log.warning("admin %s worker=%r params=%s: %d miners", action, worker, params, len(targets))
        return len(targets)

    def _reconnect_spread(self, targets: list[Connection], params: dict) -> None:
        period = float(params.get("period", 0) or 0)
        step = period / max(len(targets), 1)
        for conn in targets:
            try:
                host, port = conn.sock.getsockname()[:2]
            except OSError:
                continue
            conn.outbox.send(rpc.encode_notification(
                "client.reconnect", [params.get("host") or host, int(params.get("port") or port), 0]))
            if step:
                gevent.sleep(step)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, then close every miner (each close is recorded)."""
        if self._server is not None:
            self._server.close()
            stop_greenlet(self._sweeper)
        for conn in list(self.connections):
            conn.abort(SHUTDOWN)
        self.handlers.join(timeout=timeout)
        self.writers.kill(timeout=1)
