"""systemd's sd_notify protocol without libsystemd: tell a `Type=notify` unit when the server is ready, which
process is the main one now (a SIGHUP successor takes over from its predecessor) and when it stops.

One datagram of "KEY=VALUE" lines on the AF_UNIX socket named by NOTIFY_SOCKET; outside systemd (no variable) every
call is a no-op. Notification is advisory: a failure is logged at debug and never disturbs the server.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(*states: str) -> bool:
    """Send `states` ("READY=1", "STOPPING=1", "MAINPID=N", "STATUS=…") to systemd; True when the datagram went."""
    address = os.environ.get(NOTIFY_SOCKET_ENV)
    if not address or not states:
        return False
    if address.startswith("@"):     # the Linux abstract namespace
        address = "\0" + address[1:]
    # one state per line: a newline inside a value would start a bogus KEY=VALUE of its own
    payload = "\n".join(state.replace("\n", " ") for state in states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)     # systemd reads at once; a full queue loses a notice, never stalls the hub
            sock.sendto(payload, address)
    except (OSError, ValueError) as exc:   # ValueError: an address with an embedded NUL it cannot take
        log.debug("sd_notify to %r failed: %s", os.environ.get(NOTIFY_SOCKET_ENV), exc)
        return False
    return True
