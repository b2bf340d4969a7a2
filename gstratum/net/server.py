"""The TCP side: a gevent StreamServer with a bounded pool of connection greenlets, the registry of live miners,
the job broadcast and a graceful stop."""
from __future__ import annotations

import functools
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable

import gevent
import gevent.lock
import gevent.pool
from gevent.server import StreamServer

from gstratum.config import Config
from gstratum.net.connection import SHUTDOWN, Connection
from gstratum.net.sv2 import Sv2Connection, Sv2Identity
from gstratum.protocol.sv2 import codec
from gstratum.net.tls import TlsContext
from gstratum.greenlets import LoggedPool, Loops, spawn_logged
from gstratum.protocol.limits import CostPolicy
from gstratum.mining.vardiff import VardiffPolicy
from gstratum.mining.jobs import Job
from gstratum.protocol import proxy_protocol
from gstratum.protocol import rpc
from gstratum.protocol.notify import notify_line

log = logging.getLogger(__name__)

FANOUT_CHUNK = 512   # sends between yields in a broadcast (~5-10 ms of work on loopback)
SV2_ACK_INTERVAL = 0.1   # seconds: accepted V2 shares are acknowledged in batches, one Success per channel


def _keep_alive(sock, idle: float) -> None:
    """TCP keepalive and a user timeout: a miner that vanished (power cut, NAT dropped the mapping) is found within
    about two idle periods whether or not we have data in flight, without closing quiet but live miners."""
    if idle <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(idle // 6) or 1))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(idle * 2000))


def _abort_later(conn: Connection, seconds: float) -> None:
    """Close a miner that did not follow client.reconnect by itself."""
    gevent.sleep(seconds)
    conn.abort("reconnect requested (takeover)")


@dataclass(frozen=True)
class Port:
    """One Stratum port: its listening socket (bound by the caller, so a busy port fails before anything starts),
    the factory of its sessions (its own start difficulty) and, for stratum+ssl, its TLS context."""

    sock: object
    session_factory: Callable          # (connection id, remote address) -> Session (V1) or Sv2Session (V2)
    tls: TlsContext | None = None
    protocol: str = "v1"               # "v1": Stratum V1 (JSON lines); "sv2": Stratum V2 (Noise, binary frames)


TLS_HANDSHAKE_TIMEOUT = 10.0


class StratumServer:
    """Accepts miners on its ports, runs one Session per connection, broadcasts jobs, drains to a successor, applies
    admin actions."""

    def __init__(self, config: Config, ports: list[Port], recorder, metrics, vardiff: VardiffPolicy,
                 subscriptions, ledger, on_block: Callable, resumption=None, clock=time.time,
                 loops: Loops | None = None, sv2_identity: Sv2Identity | None = None) -> None:
        self.config = config
        self.loops = loops if loops is not None else Loops()
        self.vardiff = vardiff
        self.clock = clock
        self.ports = ports
        self.recorder = recorder
        self.record = recorder.put                  # rows a session's Output asks for
        self.metrics = metrics
        self.subscriptions = subscriptions          # gstratum.storage.resumption.Subscriptions
        self.ledger = ledger                        # gstratum.mining.ledger.ShareLedger: hand-overs at close
        self.found_block = on_block                 # a FoundBlock -> submitted (or recorded as a candidate)
        self.resumption = resumption                # gstratum.storage.resumption.Resumption, or None
        self.sv2_identity = sv2_identity           # the V2 ports' authority key and certificate
        self.connections: set[Connection] = set()
        self.subscribed: set[Connection] = set()   # V1 miners that subscribed: the fan-out's shared line
        self.sv2: set[Sv2Connection] = set()       # V2 miners with a channel open: frames of their own
        self._unacked: set[Sv2Connection] = set()  # V2 miners with accepted shares to acknowledge
        self.writers = gevent.pool.Group()  # outbox flushers of miners whose socket buffer was full
        self.handlers = LoggedPool(config.max_connections + 256)  # headroom so over-cap connections can be refused
        self._servers: list[StreamServer] = []
        self.cost_policy = CostPolicy(soft=config.cost_soft, hard=config.cost_hard)
        self.proxy_sources = proxy_protocol.TrustedSources(config.proxy_from)
        self.per_ip: dict[str, int] = {}
        self._sweeper = None
        self._acker = None
        self._broadcasting = gevent.lock.Semaphore()

    @property
    def address(self) -> tuple[str, int]:
        """The first port's address (logs, tests, the default port of client.reconnect)."""
        return self.ports[0].sock.getsockname()[:2]

    @property
    def listeners(self) -> list:
        return [port.sock for port in self.ports]

    def start(self) -> None:
        for port in self.ports:
            server = StreamServer(port.sock, functools.partial(self._handle, port), spawn=self.handlers)
            server.start()
            self._servers.append(server)
            log.info("stratum%s listening on %s:%d", {"sv2": " v2"}.get(port.protocol, "+ssl" if port.tls else ""),
                     *port.sock.getsockname()[:2])
        self._sweeper = self.loops.spawn("sweeper", self._sweep_forever)
        if any(port.protocol == "sv2" for port in self.ports):
            self._acker = self.loops.spawn("sv2-acks", self._acknowledge_forever)

    def dropped(self, reason: str) -> None:
        self.metrics.drop(reason)

    def _refuse(self, sock, reason: str, peer: str | None = None) -> None:
        """Over a cap: close at once, before any state, row or greenlet beyond this one exists."""
        self.dropped(reason)
        count = self.metrics.dropped[reason]
        if count in (1, 10, 100) or count % 1000 == 0:
            last = f", the last from {peer}" if peer else ""
            log.warning("refused connections (%s): %d so far%s", reason, count, last)
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

    def _tls_handshake(self, port: Port, sock, address):
        """The TLS socket, or None when the handshake fails or stalls: that costs this one connection only."""
        try:
            tls = port.tls.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            with gevent.Timeout(TLS_HANDSHAKE_TIMEOUT):
                tls.do_handshake()
            return tls
        except (ssl.SSLError, OSError, gevent.Timeout) as exc:
            log.info("TLS handshake with %s:%s failed: %s", address[0], address[1], exc or "timeout")
            return None

    def _handle(self, port: Port, sock, address) -> None:
        initial = b""
        if self.config.proxy_protocol:
            if not self.proxy_sources.allows(address[0]):   # not a balancer: its header would be believed
                return self._refuse(sock, "proxy source", address[0])
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
        _keep_alive(sock, self.config.keepalive)
        local_port = port.sock.getsockname()[1]
        if port.tls is not None:
            sock = self._tls_handshake(port, sock, address)
            if sock is None:
                self.dropped("tls handshake")
                self._release_ip(remote_addr)
                return
        connection_id = self.recorder.new_id()
        session = port.session_factory(connection_id, remote_addr)
        if port.protocol == "sv2":
            conn = Sv2Connection(self, sock, address, connection_id, session, self.sv2_identity)
        else:
            conn = Connection(self, sock, address, connection_id, session, tls=port.tls is not None)
        self.connections.add(conn)
        self.recorder.connection_opened(connection_id, remote_addr, remote_port, local_port)
        log.debug("connected %s from %s:%d", connection_id, remote_addr, remote_port)
        conn.serve(initial)

    def now_subscribed(self, conn) -> None:
        if conn in self.connections:
            if isinstance(conn, Sv2Connection):
                self.sv2.add(conn)
                return
            self.subscribed.add(conn)
            if self.resumption is not None:
                self.resumption.register(conn.session.session_id, conn)

    def acknowledge_later(self, conn: Sv2Connection) -> None:
        """A V2 miner has accepted shares to acknowledge: one SubmitShares.Success per channel goes out with the
        next round of the acknowledging loop (every SV2_ACK_INTERVAL), covering every share accepted meanwhile."""
        self._unacked.add(conn)

    def _acknowledge_forever(self) -> None:
        while True:
            gevent.sleep(SV2_ACK_INTERVAL)
            if self._unacked:
                waiting, self._unacked = self._unacked, set()
                for conn in waiting:
                    conn.deliver(conn.session.take_acks())

    def forget(self, conn: Connection) -> None:
        """Called once when a connection's serve loop ends."""
        self.connections.discard(conn)
        if self.resumption is not None and conn.session.session_id is not None:
            self.resumption.unregister(conn.session.session_id, conn)
        self._release_ip(conn.address[0])
        self.subscribed.discard(conn)
        self.sv2.discard(conn)
        self._unacked.discard(conn)
        reason = conn.close_reason or "closed"
        session = conn.session
        live = self.ledger.accepted_of(session.channel.extranonce1) \
            if session.subscribed and isinstance(conn, Connection) else None
        self.recorder.connection_closed(conn.id, reason, session.requests, live)
        log.debug("disconnected %s: %s", conn.id, reason)

    def _release_ip(self, addr: str) -> None:
        left = self.per_ip.get(addr, 1) - 1
        if left > 0:
            self.per_ip[addr] = left
        else:
            self.per_ip.pop(addr, None)

    def sweep(self) -> None:
        """Close connections that never subscribed in time, and subscribed ones that never authorized and fell
        silent. An authorized miner is never idle for being quiet (a proxy in front of the pool may send nothing for
        hours while it receives every job): dead peers are found by TCP keepalive and the send timeout instead."""
        cfg = self.config
        now_mono, now = time.monotonic(), self.clock()
        for conn in list(self.connections):
            session = conn.session
            if not session.subscribed:
                if now_mono - conn.connected_at > cfg.subscribe_timeout:
                    self.dropped("subscribe timeout")
                    conn.abort(f"not subscribed within {cfg.subscribe_timeout:.0f}s")
            elif not session.workers and now - session.last_activity > cfg.idle_timeout:
                self.dropped("idle")
                conn.abort(f"idle for {cfg.idle_timeout:.0f}s without authorizing")

    def _sweep_forever(self, every: float = 1.0) -> None:
        while True:
            gevent.sleep(every)
            self.sweep()

    def broadcast(self, job: Job) -> tuple[int, float]:
        """Send `job` to every subscribed miner; the line is encoded once and each send never blocks. Returns (miners
        reached, seconds): the job stream keeps the one record of each fan-out.

        Every FANOUT_CHUNK sends the loop yields once, so a fan-out to 10,000 miners (mostly kernel time in `send`)
        does not hold back handshakes and share replies for its whole duration. Broadcasts are serialised, so a
        miner never receives a newer job before an older one."""
        with self._broadcasting:
            started = time.perf_counter()
            line = notify_line(job)
            targets = list(self.subscribed)
            retarget_cutoff = self.vardiff.due_cutoff(self.clock())
            solo = self.config.solo
            cpu = 0.0
            for first in range(0, len(targets), FANOUT_CHUNK):
                cpu_started = time.process_time()
                for conn in targets[first:first + FANOUT_CHUNK]:
                    channel = conn.session.channel
                    if channel.vardiff.since <= retarget_cutoff:   # a retarget may be due: this miner's own lines
                        conn.outbox.send(b"".join(conn.session.broadcast_lines(job)))
                    elif solo:   # the variant paying this miner's address, encoded once per address (see Job)
                        if channel.payout_script is not None:
                            conn.outbox.send(notify_line(job.for_payout(channel.payout_script)))
                    else:   # the common case, kept lean: the shared line, one send
                        conn.outbox.send(line)
                cpu += time.process_time() - cpu_started
                gevent.sleep(0)
            v2 = list(self.sv2)          # V2: each channel's frames (a standard channel's merkle root is its own)
            for first in range(0, len(v2), FANOUT_CHUNK):
                cpu_started = time.process_time()
                for conn in v2[first:first + FANOUT_CHUNK]:
                    conn.deliver(conn.session.job_frames(job))
                cpu += time.process_time() - cpu_started
                gevent.sleep(0)
            elapsed = time.perf_counter() - started
        log.info("notify job=%s clean=%s miners=%d%s fanout=%.1fms cpu=%.1fms", job.job_id, job.clean_jobs,
                 len(targets) + len(v2), f" (v2 {len(v2)})" if v2 else "", elapsed * 1000, cpu * 1000)
        return len(targets) + len(v2), elapsed

    def reconnect_params(self, host: str | None = None, port: int | None = None) -> list:
        """client.reconnect's params. Never this socket's own address: behind a load balancer, NAT or port forward
        that is a private backend address the miner may not reach (or, with the PROXY protocol, one that refuses it).
        With an address (given, or --public-host/--public-port): [host, "port", 0], the port a string as cgminer
        and ckpool expect. Without: [], which cgminer-style miners answer by reconnecting to their pool URL; a miner
        that ignores it is closed shortly after and comes back to its configured URL."""
        host = host or self.config.public_host
        if not host:
            return []
        return [host, str(port or self.config.public_port or self.address[1]), 0]

    def drain(self, period: float, deadline: float) -> None:
        """Hand miners over to a successor: stop accepting, send each `client.reconnect` (spread over `period`
        seconds so they do not all arrive at once), close those that do not leave by themselves, and return when
        all are gone or `deadline` seconds have passed."""
        started = time.monotonic()
        for server in self._servers:
            server.close()
        conns = sorted(self.connections, key=lambda c: not c.session.subscribed)
        step = period / max(len(conns), 1)
        line = rpc.encode_notification("client.reconnect", self.reconnect_params())
        log.info("draining %d miners over %.1fs", len(conns), period)
        host, port = self.config.public_host or "", self.config.public_port or 0
        for conn in conns:
            if conn.close_reason is None:
                if isinstance(conn, Sv2Connection):   # Reconnect: an empty host and port 0 mean "where you are"
                    conn.deliver([codec.encode_frame(codec.Reconnect(host, port if host else 0))])
                else:
                    conn.outbox.send(line)
                spawn_logged(_abort_later, conn, 2.0, name="drain-abort")
            if step:
                gevent.sleep(step)
        while self.connections and time.monotonic() - started < deadline:
            gevent.sleep(0.1)
        log.info("drained in %.1fs, %d miners left", time.monotonic() - started, len(self.connections))

    def live_workers(self) -> dict[str, dict]:
        """Per authorized worker name: open connections and the current difficulty (of the newest)."""
        workers: dict[str, dict] = {}
        for conn in (*self.subscribed, *self.sv2):
            session = conn.session
            for name in session.workers:
                entry = workers.get(name)
                if entry is None:
                    workers[name] = {"connections": 1, "difficulty": session.difficulty}
                else:
                    entry["connections"] += 1
                    entry["difficulty"] = session.difficulty
        return workers

    def targets(self, worker: str | None) -> list:
        return [c for c in (*self.subscribed, *self.sv2) if worker is None or worker in c.session.workers]

    def admin(self, action: str, worker: str | None, params: dict) -> int:
        """Apply an operator action to this process's miners (all, or one worker's); returns how many."""
        targets = self.targets(worker)
        if action == "message":
            line = rpc.encode_notification("client.show_message", [str(params.get("text", ""))[:512]])
            for conn in targets:
                if isinstance(conn, Connection):     # V2 has no message to show
                    conn.outbox.send(line)
        elif action == "difficulty":
            difficulty = float(params["difficulty"])
            for conn in targets:
                conn.deliver(conn.session.retarget(difficulty))
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
        line = rpc.encode_notification("client.reconnect", self.reconnect_params(params.get("host"),
                                                                                 params.get("port")))
        host = params.get("host") or self.config.public_host or ""
        port = int(params.get("port") or self.config.public_port or 0) if host else 0
        for conn in targets:
            if isinstance(conn, Sv2Connection):
                conn.deliver([codec.encode_frame(codec.Reconnect(str(host)[:255], port))])
            else:
                conn.outbox.send(line)
            if step:
                gevent.sleep(step)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, then close every miner (each close is recorded)."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.stop()
        if self._acker is not None:
            self._acker.stop()
        for conn in list(self._unacked):        # what was accepted is acknowledged before the goodbye
            conn.deliver(conn.session.take_acks())
        for conn in list(self.connections):
            conn.abort(SHUTDOWN)
        self.handlers.join(timeout=timeout)
        self.writers.kill(timeout=1)
