"""Bitcoin nodes for end-to-end tests: the strict fake (scripts/fake_bitcoind.py) or a real `bitcoind`.

`start_node(datadir)` gives a real node when the environment names a binary in BITCOIND, else the fake; both
have the same interface (url, url_with_auth, cookie_path, zmq_endpoint, rpc, mine, pause/resume, stop/kill,
restart). Only the fake has the `fake_*` control methods.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAKE_BITCOIND = ROOT / "scripts" / "fake_bitcoind.py"
READY = re.compile(r"^fake_bitcoind ready rpc=(?P<url>\S+) cookie=(?P<cookie>.+) zmq=(?P<zmq>\S+)$")


class RpcError(Exception):
    """An error object in a JSON-RPC reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class NodeStartError(RuntimeError):
    """The node exited or never became ready; the message carries what it printed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rpc_call(url: str, auth: str, method: str, params: list, timeout: float = 30.0) -> Any:
    """One JSON-RPC 1.0 call with HTTP Basic `auth` ("user:password"); RpcError for an error reply."""
    body = json.dumps({"jsonrpc": "1.0", "id": "tests", "method": method, "params": params}).encode()
    request = urllib.request.Request(url + "/", data=body, method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        if not payload:
            raise
        reply = json.loads(payload)
    if reply.get("error"):
        raise RpcError(reply["error"]["code"], reply["error"]["message"])
    return reply["result"]


class _Output:
    """Drains a child's stdout and stderr in threads (a full pipe would block it) and keeps the text."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._drain, args=(stream,), daemon=True)
                        for stream in (process.stdout, process.stderr) if stream is not None]
        for thread in self.threads:
            thread.start()

    def _drain(self, stream) -> None:
        for line in iter(stream.readline, ""):
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        stream.close()

    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern, process: subprocess.Popen, deadline: float) -> re.Match:
        """The first line matching `pattern`; raises when the process exits first or the deadline passes."""
        seen = 0
        with self.changed:
            while process.poll() is None:
                for line in self.lines[seen:]:
                    match = pattern.match(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NodeStartError("node not ready in time:\n" + "\n".join(self.lines))
                self.changed.wait(timeout=min(remaining, 0.1))
        for thread in self.threads:  # the pipes reach EOF now that it has exited: collect its last words
            thread.join(timeout=5)
        raise NodeStartError(f"node exited with {process.returncode}:\n{self.text()}")


class _ProcessNode:
    """What both nodes share: the process, calls with the cookie, pausing and stopping."""

    process: subprocess.Popen | None = None
    output: _Output | None = None
    url: str
    cookie_path: Path
    zmq_endpoint: str

    @property
    def cookie(self) -> str:
        return self.cookie_path.read_text().strip()

    @property
    def url_with_auth(self) -> str:
        return self.url.replace("http://", f"http://{self.cookie}@", 1)

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        return rpc_call(self.url, self.cookie, method, list(params), timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts TCP connections, but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (after SIGCONT, in case it is paused) and wait; SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.resume()
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
            raise NodeStartError(f"node ignored SIGTERM for {timeout} s:\n{self.output_text()}") from None

    def kill(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.kill()
        return self.process.wait(timeout=20)

    def output_text(self) -> str:
        return self.output.text() if self.output else ""

    def _spawn(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.output = _Output(self.process)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class FakeNode(_ProcessNode):
    """scripts/fake_bitcoind.py as a subprocess. `extra_args` go to its command line (e.g. "--bits", "1d00ffff")."""

    def __init__(self, datadir: Path, *extra_args: str, rpc_port: int = 0, zmq_port: int | None = None,
                 ready_timeout: float = 20.0) -> None:
        self.datadir = Path(datadir)
        self.extra_args = [str(arg) for arg in extra_args]
        self.ready_timeout = ready_timeout
        # Port "*" lets the node bind a free port itself (no race); restart then reuses the one it got.
        self._rpc_port = rpc_port
        self._zmq_endpoint = f"tcp://127.0.0.1:{zmq_port}" if zmq_port is not None else "tcp://127.0.0.1:*"
        self._start()

    def _start(self) -> None:
        argv = [sys.executable, str(FAKE_BITCOIND), "--datadir", str(self.datadir),
                "--rpc-port", str(self._rpc_port), "--zmq-hashblock", self._zmq_endpoint, *self.extra_args]
        self._spawn(argv)
        try:
            ready = self.output.wait_for(READY, self.process, time.monotonic() + self.ready_timeout)
        except NodeStartError:
            self.kill()
            raise
        self.url = ready["url"]
        self.cookie_path = Path(ready["cookie"])
        self.zmq_endpoint = ready["zmq"]
        self._rpc_port = int(self.url.rsplit(":", 1)[1])
        self._zmq_endpoint = self.zmq_endpoint

    @property
    def rpc_port(self) -> int:
        return self._rpc_port

    def mine(self, n: int = 1, script_hex: str = "51") -> list[str]:
        return self.rpc("fake_mine", n, script_hex)

    def restart(self) -> None:
        """Stop, then start on the same RPC and ZMQ ports and datadir (the node writes a new cookie)."""
        self.stop()
        self._start()

    def start(self) -> None:
        """Start again after `stop()`, on the same ports and datadir: its chain persists, its cookie is new."""
        self._start()


class RealNode(_ProcessNode):
    """A real `bitcoind -regtest` (the binary named by $BITCOIND), with the same interface as FakeNode."""

    def __init__(self, datadir: Path, *extra_args: str, rpc_port: int = 0, zmq_port: int | None = None,
                 ready_timeout: float = 60.0) -> None:
        self.binary = os.environ["BITCOIND"]
        self.datadir = Path(datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.extra_args = [str(arg) for arg in extra_args]
        self.ready_timeout = ready_timeout
        self._rpc_port = rpc_port or free_port()
        self._p2p_port = free_port()
        self.zmq_endpoint = f"tcp://127.0.0.1:{zmq_port or free_port()}"
        self.url = f"http://127.0.0.1:{self._rpc_port}"
        self.cookie_path = self.datadir / "regtest" / ".cookie"
        self._start()

    @property
    def rpc_port(self) -> int:
        return self._rpc_port

    def _start(self) -> None:
        argv = [self.binary, "-regtest", f"-datadir={self.datadir}", f"-rpcport={self._rpc_port}",
                f"-port={self._p2p_port}", "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1", "-listen=0",
                f"-zmqpubhashblock={self.zmq_endpoint}", "-fallbackfee=0.0001", "-txindex=0", "-server=1",
                "-daemon=0", "-printtoconsole=0", *self.extra_args]
        self._spawn(argv)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.process.poll() is not None:
                raise NodeStartError(f"bitcoind exited with {self.process.returncode}:\n{self.output_text()}")
            try:
                self.rpc("getblockchaininfo", timeout=5)
                return
            except (OSError, RpcError, ValueError):  # no cookie yet, refused, or -28 "Loading block index..."
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise NodeStartError(f"bitcoind not ready in {self.ready_timeout} s:\n{self.output_text()}")
            try:
                self.process.wait(timeout=0.1)  # returns early only if it exits
            except subprocess.TimeoutExpired:
                pass

    def mine(self, n: int = 1, script_hex: str = "51") -> list[str]:
        descriptor = self.rpc("getdescriptorinfo", f"raw({script_hex})")["descriptor"]
        return self.rpc("generatetodescriptor", n, descriptor)

    def restart(self) -> None:
        self.stop()
        self._start()


def start_node(datadir: Path, **kw: Any) -> FakeNode | RealNode:
    """A real bitcoind when $BITCOIND names one, else the fake."""
    if os.environ.get("BITCOIND"):
        return RealNode(datadir, **kw)
    return FakeNode(datadir, **kw)
