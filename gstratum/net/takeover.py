"""Zero-downtime restart: a successor process takes the listening socket, the old one drains its miners.

SIGHUP: the running server starts its successor with the same arguments and hands it the listening socket itself
(inherited file descriptor), so not one connection attempt is refused: both processes accept from the same kernel
queue until the old one stops. `run --takeover`: a server started by hand binds the same port with SO_REUSEPORT and
tells the process named in the pidfile to drain (connections still queued on the old socket when it closes are
reset by the kernel unless `net.ipv4.tcp_migrate_req=1`; the SIGHUP path has no such window).
Either way the successor signals its predecessor with SIGUSR1 once it is listening, and the predecessor sends
`client.reconnect` to its miners spread over a period, flushes its writer and exits.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import gevent.socket

log = logging.getLogger(__name__)

LISTEN_FD_ENV = "GSTRATUM_LISTEN_FD"
PREDECESSOR_ENV = "GSTRATUM_TAKEOVER_PID"


class PortInUse(RuntimeError):
    """The port is held by another process and sharing it was not asked for."""


def open_stratum_listeners(addresses: list[tuple[str, int]], share: bool) -> list:
    """The Stratum ports' listening sockets: the ones a predecessor handed over (SIGHUP), in the same order, else
    bound here (see open_listener)."""
    inherited = os.environ.pop(LISTEN_FD_ENV, None)
    if inherited is not None:
        fds = [int(fd) for fd in inherited.split(",")]
        if len(fds) == len(addresses):
            log.info("listening sockets inherited from the previous process (fds %s)", inherited)
            return [gevent.socket.socket(fileno=fd) for fd in fds]
        log.warning("the predecessor handed over %d sockets for %d ports: binding anew", len(fds), len(addresses))
    return [open_listener(host, port, share) for host, port in addresses]


def open_listener(host: str, port: int, share: bool, backlog: int = 2048):
    """A listening socket bound here.

    One server per port unless sharing was asked for (`--workers`, `--takeover`, a successor): without `share` the
    bind is tried without SO_REUSEPORT, so a port another server holds is refused at once (PortInUse, naming the
    holder) instead of silently splitting its miners with it. SO_REUSEPORT is then set before listen(), so that a
    later `--takeover` or successor may still bind beside this socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gevent.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            holders = ", ".join(f"pid {pid} ({command})" for pid, command in port_holders(port)) or "another process"
            raise PortInUse(f"port {port} is in use by {holders}; to replace a running gstratum use SIGHUP or "
                            f"--takeover") from None
        raise
    if not share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.listen(backlog)
    return sock


def port_holders(port: int) -> list[tuple[int, str]]:
    """The processes holding a listening TCP socket on `port` (Linux /proc; empty where it cannot be read)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                holders.append((int(proc.name), command[:120]))
        except OSError:
            continue
    return holders


def spawn_successor(listeners: list) -> subprocess.Popen:
    """Start `python -m gstratum <same arguments>` with our listening sockets; it signals us when it listens."""
    fds = [listener.fileno() for listener in listeners]
    for fd in fds:
        os.set_inheritable(fd, True)
    env = dict(os.environ, **{LISTEN_FD_ENV: ",".join(map(str, fds)), PREDECESSOR_ENV: str(os.getpid())})
    child = subprocess.Popen([sys.executable, "-m", "gstratum", *sys.argv[1:]], env=env, pass_fds=tuple(fds),
                             start_new_session=True)
    log.info("takeover: started successor pid %d", child.pid)
    return child


def pidfile_for(port: int, directory: Path = Path(".gstratum"), suffix: str = "") -> Path:
    return directory / f"gstratum-{port}{suffix}.pid"


def write_pidfile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: Path) -> None:
    try:
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def signal_predecessor(takeover_flag: bool, pidfile: Path) -> int | None:
    """Tell the process we replace to drain: the one that spawned us, or (--takeover) the one in the pidfile."""
    pid = os.environ.pop(PREDECESSOR_ENV, None)
    if pid is None and takeover_flag:
        try:
            pid = pidfile.read_text().strip()
        except OSError:
            log.warning("takeover: no pidfile %s; nothing to take over", pidfile)
            return None
    if pid is None:
        return None
    try:
        os.kill(int(pid), signal.SIGUSR1)
    except (ProcessLookupError, ValueError) as exc:
        log.warning("takeover: predecessor %s not signalled: %s", pid, exc)
        return None
    log.info("takeover: asked pid %s to drain", pid)
    return int(pid)
