"""Bitcoin Core's JSON-RPC over HTTP, for several nodes in order of preference.

`NodeClient` is one node: kept-alive HTTP/1.1 connections (cooperative under gevent's monkey patching), basic
auth from the URL or from the node's `.cookie` file, which is re-read when the node refuses it (Bitcoin Core writes
a new cookie at every start). A call that fails on a kept-alive connection with a connection-level error (Core
closes idle connections after -rpcservertimeout) is retried once on a fresh connection.

`Nodes` is the configured list: calls go to the most preferred node that is up; when a node fails a call, the next
one is asked within the same call. A node is judged fairly: it is marked down only after DOWN_AFTER consecutive
failures (calls or health checks), never for one slow answer (Core holds cs_main while it connects a block or
builds a template), and up again after one success. The health check probes every node in its own greenlet with a
generous timeout, so a stalled node delays nobody.
"""
from __future__ import annotations

import base64
import http.client
import itertools
import logging
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import gevent
import gevent.pool
import ujson

from gstratum.greenlets import spawn_logged

log = logging.getLogger(__name__)


BIG_REPLY = 256 * 1024    # a template with thousands of transactions is megabytes of JSON
DOWN_AFTER = 3            # consecutive failures (calls or health checks) before a node is skipped
HEALTH_TIMEOUT = 3.0      # seconds a health check waits: Core answers at once unless cs_main is held (new block)
# The node closed a kept-alive connection while it sat idle (Core: -rpcservertimeout, 30 s): the request never
# reached it, so asking again on a fresh connection is safe. Never a timeout: the node may be working on it.
STALE_CONNECTION = (http.client.BadStatusLine, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def off_loop(func, *args):
    """Run pure-Python work that takes milliseconds (a big template) in gevent's native threadpool: the GIL is
    handed back every 5 ms (sys.getswitchinterval), so the event loop keeps answering miners meanwhile instead of
    stalling for the whole computation."""
    return gevent.get_hub().threadpool.apply(func, args)


def decode_json(data: bytes):
    return off_loop(ujson.loads, data) if len(data) > BIG_REPLY else ujson.loads(data)


class NodeError(Exception):
    """The node answered with a JSON-RPC error (the call was understood and refused)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class NodeUnavailable(Exception):
    """The node could not be asked: connection refused or reset, no answer in time, bad credentials, bad HTTP."""


class NodeClient:
    def __init__(self, url: str, cookie_file: Path | None = None, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"bitcoind URL must be http://[USER:PASS@]HOST:PORT, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 8332
        self.name = f"{self.host}:{self.port}"      # for logs and metrics: never the credentials
        self.credentials = (f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                            if parts.username else None)
        self.cookie_file = Path(cookie_file) if cookie_file else None
        self.timeout = timeout
        self._cookie: str | None = None
        self._idle: list[http.client.HTTPConnection] = []   # kept-alive connections not in use
        self._ids = itertools.count(1)
        self.failures = 0                 # consecutive failed calls and health checks
        self.last_error: str | None = None
        self.reconnects = 0               # calls retried on a fresh connection after a kept-alive one was closed

    @property
    def up(self) -> bool:
        return self.failures < DOWN_AFTER

    def _auth_header(self, reread: bool = False) -> str:
        secret = self.credentials
        if secret is None:
            if self._cookie is None or reread:
                if self.cookie_file is None:
                    raise NodeUnavailable(f"{self.name}: no credentials in the URL and no --bitcoind-cookie")
                try:
                    self._cookie = self.cookie_file.read_text().strip()
                except OSError as exc:
                    raise NodeUnavailable(f"{self.name}: cannot read cookie {self.cookie_file}: {exc}") from None
            secret = self._cookie
        return "Basic " + base64.b64encode(secret.encode()).decode()

    def _post(self, body: bytes, auth: str, timeout: float) -> tuple[int, bytes]:
        """One request on a connection of its own (greenlets call concurrently: a submitblock must not wait
        behind a slow getblocktemplate); the connection is kept for the next call when the exchange completed.
        A kept-alive connection the node closed meanwhile costs one retry on a fresh connection, not a failure."""
        if self._idle:
            try:
                return self._exchange(self._idle.pop(), body, auth, timeout)
            except STALE_CONNECTION as exc:
                self.reconnects += 1
                log.debug("bitcoind %s closed a kept-alive connection (%s); asking again on a fresh one", self.name,
                          type(exc).__name__)
            except (OSError, http.client.HTTPException) as exc:
                raise NodeUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None
        try:
            return self._exchange(http.client.HTTPConnection(self.host, self.port, timeout=timeout), body, auth,
                                  timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise NodeUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None

    def _exchange(self, conn: http.client.HTTPConnection, body: bytes, auth: str, timeout: float) -> tuple[int, bytes]:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", "/", body, {"Authorization": auth, "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close or len(self._idle) >= 4:
            conn.close()
        else:
            self._idle.append(conn)
        return response.status, data

    def call(self, method: str, *params, timeout: float | None = None):
        body = ujson.dumps({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)})
        timeout = self.timeout if timeout is None else timeout
        status, data = self._post(body.encode(), self._auth_header(), timeout)
        if status == 401 and self.credentials is None:      # a restarted node has a new cookie
            status, data = self._post(body.encode(), self._auth_header(reread=True), timeout)
        if status == 401:
            raise NodeUnavailable(f"{self.name}: authentication refused (check the URL's credentials or the cookie)")
        try:
            reply = decode_json(data)
        except ValueError:
            raise NodeUnavailable(f"{self.name}: HTTP {status} without a JSON body") from None
        if not isinstance(reply, dict):
            raise NodeUnavailable(f"{self.name}: HTTP {status}: unexpected reply")
        error = reply.get("error")
        if error:
            raise NodeError(error.get("code", 0) if isinstance(error, dict) else 0,
                            error.get("message", str(error)) if isinstance(error, dict) else str(error))
        return reply.get("result")

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class NoNodeAvailable(NodeUnavailable):
    """Every configured node failed."""


class Nodes:
    """The configured nodes, most preferred first."""

    def __init__(self, clients: list[NodeClient], metrics=None) -> None:
        if not clients:
            raise ValueError("at least one node")
        self.clients = clients
        self.metrics = metrics
        self.current: NodeClient | None = clients[0]   # the node work comes from: the most preferred one up
        self.recoveries = 0                            # down -> up changes so far (the block submitter watches it)
        self._probes: dict[str, gevent.Greenlet] = {}

    def _failed(self, client: NodeClient, exc: Exception) -> None:
        client.failures += 1
        client.last_error = str(exc)
        if client.failures == DOWN_AFTER:
            log.error("bitcoind %s is down after %d failures in a row (last: %s); using the next node", client.name,
                      DOWN_AFTER, exc)
        elif client.failures < DOWN_AFTER:
            log.warning("bitcoind %s failed (%d of %d before it is marked down): %s", client.name, client.failures,
                        DOWN_AFTER, exc)
        self._choose_current()

    def _recovered(self, client: NodeClient) -> None:
        if not client.up:
            log.info("bitcoind %s is answering again", client.name)
            self.recoveries += 1
        client.failures = 0
        client.last_error = None
        self._choose_current()

    def _choose_current(self) -> None:
        preferred = next((c for c in self.clients if c.up), None)
        if preferred is not self.current and preferred is not None:
            log.warning("now using bitcoind %s", preferred.name)
        self.current = preferred

    def call(self, method: str, *params, timeout: float | None = None):
        """Ask the most preferred node that is up; on a transport failure, the next one, in the same call."""
        errors = []
        for client in sorted(self.clients, key=lambda c: not c.up):   # stable: preference order, up ones first
            started = time.perf_counter()
            try:
                result = client.call(method, *params, timeout=timeout)
            except NodeUnavailable as exc:
                self._failed(client, exc)
                errors.append(str(exc))
                continue
            self._recovered(client)
            if self.metrics is not None and method == "getblocktemplate":
                self.metrics.gbt_latency.observe(time.perf_counter() - started)
            return result
        raise NoNodeAvailable("; ".join(errors))

    def probe(self, on_best=None, timeout: float = HEALTH_TIMEOUT) -> None:
        """Health check: `getbestblockhash` on every node, each in its own greenlet (a node still answering the
        previous check is not asked again), with a generous timeout. `on_best(client, best_hash)` on each answer:
        the new-block poll of the node that gives work."""
        for client in self.clients:
            running = self._probes.get(client.name)
            if running is None or running.dead:
                self._probes[client.name] = spawn_logged(self._probe, client, on_best, timeout, name="node-check")

    def _probe(self, client: NodeClient, on_best, timeout: float) -> None:
        try:
            best = client.call("getbestblockhash", timeout=timeout)
        except (NodeUnavailable, NodeError) as exc:     # an error reply (warming up) is not a usable node either
            self._failed(client, exc)
            return
        self._recovered(client)
        if on_best is not None:
            on_best(client, best)

    def stop_probes(self) -> None:
        gevent.killall([g for g in self._probes.values() if not g.dead], timeout=1)

    def call_all(self, method: str, *params, timeout: float | None = None,
                 clients: list[NodeClient] | None = None) -> dict[str, object]:
        """The same call on every node (or `clients`) in parallel, once each (submitblock: the caller decides what
        to retry and when): node name -> result or the exception."""
        results: dict[str, object] = {}

        def one(client: NodeClient) -> None:
            try:
                results[client.name] = client.call(method, *params, timeout=timeout)
            except (NodeError, NodeUnavailable) as exc:
                results[client.name] = exc

        group = gevent.pool.Group()
        for client in self.clients if clients is None else clients:
            spawn_logged(one, client, group=group, name=f"node-{method}")
        if not group.join(timeout=(timeout or 10) + 2):
            group.kill(timeout=1)      # a node past its own timeout: no answer from it this time
        return results

    @property
    def any_up(self) -> bool:
        return any(c.up for c in self.clients)
