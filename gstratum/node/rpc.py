"""Bitcoin Core's JSON-RPC over HTTP, for several nodes in order of preference.

`NodeClient` is one node: a kept-alive HTTP/1.1 connection (cooperative under gevent's monkey patching), basic
auth from the URL or from the node's `.cookie` file, which is re-read when the node refuses it (Bitcoin Core writes
a new cookie at every start). `Nodes` is the configured list: calls go to the most preferred node that is up; one
that fails is skipped at once and the next one is asked within the same call; a node that was skipped is tried
again by the health check and preferred again as soon as it answers.
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
        self.up = True
        self.last_error: str | None = None

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
        behind a slow getblocktemplate); the connection is kept for the next call when the exchange completed."""
        conn = self._idle.pop() if self._idle else http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", "/", body, {"Authorization": auth, "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise NodeUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None
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
        self.current: NodeClient | None = clients[0]

    def _failed(self, client: NodeClient, exc: Exception) -> None:
        if client.up:
            log.error("bitcoind %s failed: %s; trying the next node", client.name, exc)
        client.up = False
        client.last_error = str(exc)

    def _recovered(self, client: NodeClient) -> None:
        if not client.up:
            log.info("bitcoind %s is answering again", client.name)
        client.up = True
        client.last_error = None

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
            if self.current is not client:
                log.warning("now using bitcoind %s", client.name)
                self.current = client
            if self.metrics is not None and method == "getblocktemplate":
                self.metrics.gbt_latency.observe(time.perf_counter() - started)
            return result
        self.current = None
        raise NoNodeAvailable("; ".join(errors))

    def check(self, timeout: float = 1.0) -> None:
        """Health check of every node (a cheap call each, in parallel): marks them up or down, so a preferred node
        that recovered is used again by the next call."""
        def probe(client: NodeClient) -> None:
            try:
                client.call("getbestblockhash", timeout=timeout)
            except (NodeUnavailable, NodeError) as exc:
                self._failed(client, exc)
            else:
                self._recovered(client)

        gevent.joinall([spawn_logged(probe, c, name="node-check") for c in self.clients], timeout=timeout + 1)

    def call_all(self, method: str, *params, timeout: float | None = None) -> dict[str, object]:
        """The same call on every node in parallel (submitblock): node name -> result or the exception."""
        results: dict[str, object] = {}

        def one(client: NodeClient) -> None:
            for attempt in range(3):       # a transport error is retried; an answer (even a refusal) is final
                try:
                    results[client.name] = client.call(method, *params, timeout=timeout)
                    return
                except NodeError as exc:
                    results[client.name] = exc
                    return
                except NodeUnavailable as exc:
                    results[client.name] = exc
                    gevent.sleep(0.2 * (attempt + 1))

        group = gevent.pool.Group()
        for client in self.clients:
            spawn_logged(one, client, group=group, name="node-submit")
        group.join(timeout=(timeout or 10) * 3 + 2)
        return results

    @property
    def any_up(self) -> bool:
        return any(c.up for c in self.clients)
