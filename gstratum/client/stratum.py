"""A Stratum V1 client: a library for tests and tools, and the `python -m gstratum client` command.

It validates every reply it gets (ids match, result shapes, extranonce1 16 hex, extranonce2_size, authorize true)
and raises ProtocolViolation on anything else. With `mine=True` it runs a small CPU miner on the jobs it receives
and submits real shares at the difficulty the server set.
Plain blocking sockets: it works with or without gevent's monkey patching.
"""
from __future__ import annotations

import itertools
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import ujson

log = logging.getLogger(__name__)

_HEX16 = re.compile(r"[0-9a-f]{16}\Z")


class ProtocolViolation(Exception):
    """The server said something a Stratum V1 miner could not accept."""


class StratumRejected(Exception):
    """The server answered a call with a Stratum error `[code, message, data]`."""

    def __init__(self, error) -> None:
        super().__init__(error)
        self.error = error
        self.code = error[0] if isinstance(error, list) and error else None


def parse_url(url: str) -> tuple[str, int]:
    """stratum+tcp://host:port (or host:port) -> (host, port)."""
    if "://" not in url:
        url = "stratum+tcp://" + url
    parsed = urlparse(url)
    if parsed.scheme not in ("stratum+tcp", "tcp", "stratum"):
        raise ValueError(f"unsupported scheme {parsed.scheme!r}")
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"URL needs host and port: {url!r}")
    return parsed.hostname, parsed.port


@dataclass
class Subscription:
    difficulty_sub_id: str
    session_id: str
    extranonce1: str
    extranonce2_size: int


@dataclass
class ClientState:
    difficulty: float | None = None
    job: list | None = None          # the last mining.notify params
    jobs_received: int = 0
    notifications: list = field(default_factory=list)


def validate_subscribe_result(result: Any) -> Subscription:
    if not (isinstance(result, list) and len(result) == 3):
        raise ProtocolViolation(f"subscribe result must be [subscriptions, extranonce1, size]: {result!r}")
    subs, extranonce1, size = result
    if not (isinstance(subs, list) and len(subs) == 2 and all(isinstance(s, list) and len(s) == 2 for s in subs)):
        raise ProtocolViolation(f"subscriptions must be two [method, id] pairs: {subs!r}")
    if [s[0] for s in subs] != ["mining.set_difficulty", "mining.notify"]:
        raise ProtocolViolation(f"unexpected subscription methods: {subs!r}")
    if not all(isinstance(s[1], str) and s[1] for s in subs) or subs[0][1] == subs[1][1]:
        raise ProtocolViolation(f"subscription ids must be two distinct non-empty strings: {subs!r}")
    if not (isinstance(extranonce1, str) and _HEX16.match(extranonce1)):
        raise ProtocolViolation(f"extranonce1 must be 16 lowercase hex chars: {extranonce1!r}")
    if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 16):
        raise ProtocolViolation(f"extranonce2_size must be an integer 1..16: {size!r}")
    return Subscription(subs[0][1], subs[1][1], extranonce1, size)


def validate_notify(params: Any) -> list:
    if not (isinstance(params, list) and len(params) == 9):
        raise ProtocolViolation(f"mining.notify needs 9 params: {params!r}")
    job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, clean = params
    hexes = {"prevhash": (prevhash, 64), "version": (version, 8), "nbits": (nbits, 8), "ntime": (ntime, 8)}
    for name, (value, length) in hexes.items():
        if not (isinstance(value, str) and len(value) == length and _is_hex(value)):
            raise ProtocolViolation(f"mining.notify {name} must be {length} hex chars: {value!r}")
    if not (isinstance(job_id, str) and job_id):
        raise ProtocolViolation(f"mining.notify job_id must be a non-empty string: {job_id!r}")
    for name, value in (("coinb1", coinb1), ("coinb2", coinb2)):
        if not (isinstance(value, str) and len(value) % 2 == 0 and _is_hex(value)):
            raise ProtocolViolation(f"mining.notify {name} must be hex: {value!r}")
    if not (isinstance(branch, list) and all(isinstance(h, str) and len(h) == 64 and _is_hex(h) for h in branch)):
        raise ProtocolViolation(f"mining.notify merkle_branch must be a list of 64-hex hashes: {branch!r}")
    if not isinstance(clean, bool):
        raise ProtocolViolation(f"mining.notify clean_jobs must be a boolean: {clean!r}")
    return params


def _is_hex(text: str) -> bool:
    return re.fullmatch(r"[0-9a-fA-F]*", text) is not None


class StratumClient:
    """One connection to a Stratum server. Calls wait for their reply; notifications are handled on the way."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, source_address: tuple | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        """`tls`: a client context for a stratum+ssl port (its check of the server's certificate is the caller's)."""
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=source_address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.timeout = timeout
        self._buffer = b""
        self._ids = itertools.count(1)
        self.state = ClientState()
        self.subscription: Subscription | None = None
        # extranonce2 values handed to this connection's miners: a share searched later never repeats an earlier one
        self._extranonce2 = itertools.count(1)

    def next_extranonce2(self) -> int:
        return next(self._extranonce2)

    # -- wire --------------------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self, timeout: float | None = None) -> dict:
        """The next JSON line from the server (raises socket.timeout, ConnectionError on EOF)."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while b"\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = ujson.loads(line)
        except ValueError as exc:
            raise ProtocolViolation(f"server sent invalid JSON: {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise ProtocolViolation(f"server sent a non-object: {line[:200]!r}")
        if message.get("method") is not None:
            self._on_notification(message)
        return message

    def _on_notification(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params")
        self.state.notifications.append(message)
        if method == "mining.set_difficulty":
            if not (isinstance(params, list) and len(params) == 1 and isinstance(params[0], (int, float))
                    and not isinstance(params[0], bool) and params[0] > 0):
                raise ProtocolViolation(f"mining.set_difficulty must carry one positive number: {params!r}")
            self.state.difficulty = float(params[0])
        elif method == "mining.notify":
            self.state.job = validate_notify(params)
            self.state.jobs_received += 1

    def poll(self) -> int:
        """Handle whatever the server already sent, without waiting; returns messages read."""
        count = 0
        while True:
            if b"\n" not in self._buffer:
                self.sock.setblocking(False)
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                    return count
                finally:
                    self.sock.setblocking(True)
                if not data:
                    raise ConnectionError("server closed the connection")
                self._buffer += data
                continue
            self.read_message()
            count += 1

    def call(self, method: str, params: list, timeout: float | None = None) -> Any:
        """Send a request and return its result; StratumRejected on an error reply."""
        request_id = next(self._ids)
        self.send_raw(ujson.dumps({"id": request_id, "method": method, "params": params}).encode() + b"\n")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self.read_message(max(deadline - time.monotonic(), 0.001))
            if message.get("method") is not None:
                continue
            if message.get("id") != request_id:
                raise ProtocolViolation(f"reply id {message.get('id')!r} does not match request id {request_id}")
            if "result" not in message or "error" not in message:
                raise ProtocolViolation(f"reply lacks result/error: {message!r}")
            if message["error"] is not None:
                error = message["error"]
                if not (isinstance(error, list) and len(error) >= 2 and isinstance(error[0], int)):
                    raise ProtocolViolation(f"error must be [code, message, data]: {error!r}")
                raise StratumRejected(error)
            return message["result"]

    def wait_for(self, method: str, timeout: float | None = None, after: int = 0) -> dict:
        """The (after+1)-th notification `method` received on this connection, waiting for it if need be."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            seen = [m for m in self.state.notifications if m.get("method") == method]
            if len(seen) > after:
                return seen[after]
            self.read_message(max(deadline - time.monotonic(), 0.001))

    # -- Stratum -----------------------------------------------------------------------------------------------
    def subscribe(self, user_agent: str = "gstratum-client/0.1", session: str | None = None) -> Subscription:
        params = [user_agent] if session is None else [user_agent, session]
        self.subscription = validate_subscribe_result(self.call("mining.subscribe", params))
        return self.subscription

    def configure_version_rolling(self, mask: int = 0x1FFFE000) -> int:
        """BIP310 mining.configure (sent before subscribe, as ASIC firmware does): the mask the pool granted."""
        result = self.call("mining.configure", [["version-rolling"], {"version-rolling.mask": f"{mask:08x}",
                                                                      "version-rolling.min-bit-count": 2}])
        if not (isinstance(result, dict) and result.get("version-rolling") is True):
            raise ProtocolViolation(f"mining.configure did not grant version rolling: {result!r}")
        return int(result["version-rolling.mask"], 16)

    def authorize(self, worker: str, password: str = "x") -> bool:
        result = self.call("mining.authorize", [worker, password])
        if result is not True:
            raise ProtocolViolation(f"mining.authorize result must be true: {result!r}")
        return True

    def submit(self, worker: str, job_id: str, extranonce2: str, ntime: str, nonce: str,
               version_bits: str | None = None) -> bool:
        params = [worker, job_id, extranonce2, ntime, nonce]
        if version_bits is not None:
            params.append(version_bits)
        result = self.call("mining.submit", params)
        if result is not True:
            raise ProtocolViolation(f"mining.submit result must be true or an error: {result!r}")
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "StratumClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
