"""systemd integration (sd_notify): READY=1 with the server's pid as MAINPID; on SIGHUP the successor claims MAINPID
and the old process never says STOPPING=1 (systemd would take the service for stopping); a real stop says it.

The test plays systemd: it binds the notify socket itself and learns each sender's pid from SCM_CREDENTIALS, as
systemd does, so "which process said what" is checked, not guessed."""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
import time
import uuid
from pathlib import Path

import pytest

from gstratum.ops.systemd import notify

from .conftest import wait_until

UCRED = struct.Struct("iII")   # struct ucred: pid, uid, gid


class NotifySocket:
    """The systemd end of sd_notify. Every notice read is kept in `seen` as (sender pid, {key: value})."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.seen: list[tuple[int, dict]] = []

    def close(self) -> None:
        self.sock.close()

    def _read(self) -> tuple[int, dict]:
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pid = next((UCRED.unpack(cdata[:UCRED.size])[0] for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
        notice = (pid, dict(line.split("=", 1) for line in data.decode().split("\n") if line))
        self.seen.append(notice)
        return notice

    def wait_for(self, match, timeout: float = 30.0) -> tuple[int, dict]:
        """Read notices until `match(pid, fields)` holds for one; a deadline, not a sleep, bounds the wait."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                notice = self._read()
            except TimeoutError:
                break
            if match(*notice):
                return notice
        raise AssertionError(f"no matching notice within {timeout}s; seen: {self.seen}")

    def read_queued(self) -> list[tuple[int, dict]]:
        """Every notice already queued (a sender's datagrams are queued by the time its sendto returns)."""
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self._read())
            except BlockingIOError:
                return out


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps yet counts: it runs no code)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True


def test_ready_mainpid_hand_over_and_stop(start_server, tmp_path):
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, path    # sun_path holds 108 bytes
    systemd = NotifySocket(path)
    successor = None
    try:
        server = start_server("--drain-period", "1", "--notify-interval", "30", env={"NOTIFY_SOCKET": path})
        old = server.proc.pid
        sender, ready = systemd.wait_for(lambda pid, f: f.get("READY") == "1")
        assert sender == old and ready["MAINPID"] == str(old), systemd.seen
        assert ready["STATUS"] == f"serving miners on port {server.port}"

        server.proc.send_signal(signal.SIGHUP)
        found = wait_until(lambda: re.search(r"takeover: started successor pid (\d+)", server.log()), timeout=15)
        assert found, server.log()
        successor = int(found.group(1))
        sender, ready = systemd.wait_for(lambda pid, f: f.get("READY") == "1" and pid != old)
        assert sender == successor and ready["MAINPID"] == str(successor), systemd.seen
        assert server.proc.wait(30) == 0, server.log()       # the old process drained and exited
        systemd.read_queued()                                 # whatever it sent is queued by now
        from_old = [fields for pid, fields in systemd.seen if pid == old]
        assert not any("STOPPING" in fields for fields in from_old), systemd.seen
        assert {"STATUS": f"handing miners to pid {successor}"} in from_old, systemd.seen
        # systemd heard the new MAINPID before the old main process even began to drain (so never saw it exit
        # while it was still the main one)
        handing = (old, {"STATUS": f"handing miners to pid {successor}"})
        assert systemd.seen.index((successor, ready)) < systemd.seen.index(handing), systemd.seen

        os.kill(successor, signal.SIGTERM)
        sender, stopping = systemd.wait_for(lambda pid, f: "STOPPING" in f)
        assert sender == successor and stopping["STOPPING"] == "1", systemd.seen
        assert wait_until(lambda: gone(successor), timeout=30), f"successor {successor} still runs"
    finally:
        if successor is not None and not gone(successor):
            os.kill(successor, signal.SIGTERM)
            wait_until(lambda: gone(successor), timeout=30)
        systemd.close()


def test_notify_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"gstratum-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1", "MAINPID=42", "STATUS=two\nlines") is True
        # one datagram, one state per line: a newline inside a value cannot forge another key
        assert sock.recv(4096) == b"READY=1\nMAINPID=42\nSTATUS=two lines"


def test_notify_to_a_path_socket(monkeypatch, tmp_path):
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.parametrize("address", ["/nonexistent/gstratum/notify.sock", "@gstratum-nobody-listens-here",
                                     "not-a-path"])
def test_a_failed_notify_returns_false_and_logs_at_debug(monkeypatch, caplog, address):
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with caplog.at_level(logging.DEBUG, logger="gstratum.ops.systemd"):
        assert notify("READY=1") is False
    assert any(r.levelno == logging.DEBUG and "sd_notify" in r.getMessage() for r in caplog.records), caplog.text
