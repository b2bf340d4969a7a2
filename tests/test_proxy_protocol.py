"""PROXY protocol v1/v2 parsing (sans-IO) and behind a real HAProxy."""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gstratum.client import StratumClient
from gstratum.protocol.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, TrustedSources, parse

from .conftest import free_port, new_cluster_name, query, wait_until


def v2(source: str, port: int, command: int = 1, tlv: bytes = b"") -> bytes:
    packed = socket.inet_pton(socket.AF_INET6 if ":" in source else socket.AF_INET, source)
    family = 0x21 if ":" in source else 0x11
    body = packed + packed + struct.pack("!HH", port, 3333) + tlv
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def start_haproxy(tmp_path, backends: str) -> tuple[subprocess.Popen, int]:
    """A real HAProxy in TCP mode in front of `backends` (its `server` lines): (process, front port), once it
    accepts connections."""
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend stratum
    bind 127.0.0.1:{front}
    default_backend pool
backend pool
    balance roundrobin
{backends}
""")
    haproxy = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    if not wait_until(lambda: _accepting(front), timeout=10):
        haproxy.kill()
        raise AssertionError("haproxy did not start")
    return haproxy, front


def test_v1_tcp4_and_tcp6():
    header = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 3333\r\n"
    assert parse(header + b"{") == (("198.51.100.7", 40000), len(header))
    header = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 3333\r\n"
    assert parse(header) == (("2001:db8::7", 40000), len(header))
    assert parse(b"PROXY UNKNOWN\r\n") == (None, 15)


def test_v2_with_tlvs_and_local():
    header = v2("203.0.113.9", 51000, tlv=b"\x01\x00\x02h2")
    assert parse(header + b'{"id":1}') == (("203.0.113.9", 51000), len(header))
    assert parse(v2("2001:db8::9", 1)) == (("2001:db8::9", 1), len(v2("2001:db8::9", 1)))
    assert parse(v2("203.0.113.9", 1, command=0))[0] is None


@pytest.mark.parametrize("data", [b"GET / HTTP/1.0\r\n", b'{"id": 1, "method": "mining.subscribe"}\n',
                                  b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", b"PROXY TCP4 ::1 ::1 1 1\r\n",
                                  b"PROXY " + b"x" * 120, V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12)])
def test_garbage_is_refused(data):
    with pytest.raises(ProxyHeaderError):
        parse(data)


@given(st.binary(max_size=80), st.integers(1, 27))  # the v2 TCP4 header is 28 bytes
def test_any_split_of_a_header_parses_the_same(tail, cut):
    header = v2("192.0.2.44", 4444)
    full = parse(header + tail)
    assert full == (("192.0.2.44", 4444), len(header))
    assert parse(header[:cut]) is None


@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_raise_anything_else(data):
    try:
        parse(data)
    except ProxyHeaderError:
        pass


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="Debian's haproxy is not installed (.ci/run installs it with apt-get when it can)")
def test_behind_haproxy_two_servers_one_job_stream_real_addresses(start_server, tmp_path, db):
    pool = new_cluster_name()
    a = start_server("--proxy-protocol", "--notify-interval", "1", cluster=pool)
    b = start_server("--proxy-protocol", "--notify-interval", "1", cluster=pool)
    haproxy, front = start_haproxy(tmp_path, f"    server a 127.0.0.1:{a.port} send-proxy-v2\n"
                                             f"    server b 127.0.0.1:{b.port} send-proxy")
    try:
        clients = [StratumClient("127.0.0.1", front, source_address=(f"127.0.0.{10 + i}", 0)) for i in range(6)]
        subs = [c.subscribe() for c in clients]
        assert len({s.extranonce1 for s in subs}) == 6
        # one job stream: every miner, on either server, soon works on the same job
        ids = [{m["params"][0] for m in (c.wait_for("mining.notify", after=2, timeout=10) and
                                         c.state.notifications) if m["method"] == "mining.notify"} for c in clients]
        assert set.intersection(*ids), ids
        rows = wait_until(lambda: query(db, "SELECT host(c.remote_addr), c.server_id FROM connections c JOIN "
                                            "subscriptions s ON s.connection_id = c.id WHERE s.extranonce1 = ANY(%s)",
                                        [s.extranonce1 for s in subs]), lambda r: len(r) == 6)
        assert sorted(r[0] for r in rows) == sorted(f"127.0.0.{10 + i}" for i in range(6))
        assert len({r[1] for r in rows}) == 2     # both servers took miners
        for c in clients:
            c.close()
    finally:
        haproxy.terminate()
        haproxy.wait(10)


def test_trusted_sources_are_networks_and_addresses_of_either_family():
    loopback = TrustedSources(["127.0.0.0/8", "::1"])
    assert loopback.allows("127.0.0.1") and loopback.allows("127.9.9.9") and loopback.allows("::1")
    assert loopback.allows("::ffff:127.0.0.1")      # an IPv4 peer on a dual-stack socket
    assert not loopback.allows("10.0.0.1") and not loopback.allows("::2") and not loopback.allows("not an address")
    balancers = TrustedSources(["10.0.0.0/24", "2001:db8::/32"])
    assert balancers.allows("10.0.0.200") and balancers.allows("2001:db8::5") and not balancers.allows("fe80::1%lo")
    assert not balancers.allows("10.0.1.1") and not balancers.allows("127.0.0.1")


def forged_source() -> tuple[str, int]:
    """A source address and port no other test names (TEST-NET-2, 198.51.100.0/24)."""
    value = time.time_ns()
    return f"198.51.100.{value % 250 + 1}", 1024 + (value // 250) % 60000


def test_a_peer_outside_proxy_from_is_closed_and_its_header_never_believed(start_server, db):
    """Anyone who reaches the port directly could name any source in a well-formed header and so escape the
    per-address caps: with --proxy-from, a peer outside those networks is closed before its header is read."""
    from .test_operations import get, metric

    server = start_server("--proxy-protocol", "--proxy-from", "10.0.0.0/8", "--proxy-from", "192.0.2.1")
    source, source_port = forged_source()
    with socket.create_connection((server.host, server.port), timeout=5) as s:   # from 127.0.0.1
        s.sendall(f"PROXY TCP4 {source} 10.0.0.1 {source_port} 3333\r\n".encode()
                  + b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:   # closed with our bytes unread: the kernel answers with a reset
            pass
    assert metric(get(server, "/metrics"), "gstratum_miners_dropped_total", '{reason="proxy source"}') == 1
    assert server.stop() == 0       # every row written: none may name the forged source
    assert query(db, "SELECT count(*) FROM connections WHERE remote_addr = %s AND remote_port = %s",
                 source, source_port) == [(0,)]
    assert "refused connections (proxy source): 1 so far, the last from 127.0.0.1" in server.log()


def test_a_balancer_on_loopback_is_believed_by_default(start_server, db):
    server = start_server("--proxy-protocol")
    source, source_port = forged_source()
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(f"PROXY TCP4 {source} 127.0.0.1 {source_port} 3333\r\n".encode()
                  + b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
        s.settimeout(5)
        assert b'"result"' in s.recv(4096)
    rows = wait_until(lambda: query(db, "SELECT count(*) FROM connections WHERE remote_addr = %s AND remote_port = %s",
                                    source, source_port), lambda r: r == [(1,)])
    assert rows == [(1,)]


def test_without_header_the_connection_is_closed(start_server):
    server = start_server("--proxy-protocol")
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
        s.settimeout(5)
        assert s.recv(100) == b""
    assert "PROXY protocol header" in server.log()


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="Debian's haproxy is not installed (.ci/run installs it with apt-get when it can)")
def test_sighup_behind_haproxy_brings_every_miner_back_through_the_front_end(start_server, tmp_path, db):
    """client.reconnect must not name the backend's own socket: behind the balancer with the PROXY protocol, a miner
    sent straight to the backend is refused (no header). Every miner comes back through the front end instead,
    resumes its session on the successor, and the successor records the address the PROXY header carries."""
    import os
    import re
    import signal

    from .test_takeover import ReconnectingMiner

    server = start_server("--proxy-protocol", "--drain-period", "1", "--notify-interval", "30")
    haproxy, front = start_haproxy(tmp_path, f"    server a 127.0.0.1:{server.port} send-proxy-v2")
    successor = None
    deadline = time.monotonic() + 30
    miners = [ReconnectingMiner("127.0.0.1", front, deadline) for _ in range(10)]
    try:
        for m in miners:
            m.start()
        assert wait_until(lambda: sum(len(m.extranonces) for m in miners), lambda n: n >= 10, timeout=15) >= 10
        server.proc.send_signal(signal.SIGHUP)
        assert server.proc.wait(30) == 0, server.log()
        successor = int(re.search(r"takeover: started successor pid (\d+)", server.log()).group(1))
        back = wait_until(lambda: [len(m.extranonces) for m in miners], lambda c: min(c) >= 2, timeout=20)
        assert min(back) >= 2, back
        for m in miners:
            assert m.error is None and len(set(m.extranonces)) == 1, (m.error, m.extranonces)   # resumed
        # the successor's connections came through HAProxy: a PROXY header was read, so no refusal was logged
        rows = query(db, "SELECT count(*) FROM connections WHERE server_id NOT LIKE %s AND local_port = %s "
                         "AND opened_at > now() - interval '1 minute'", f"%:{server.proc.pid}:%", server.port)
        assert rows[0][0] >= 10
        assert "PROXY protocol header" not in server.log()
    finally:
        for m in miners:
            m.deadline = time.monotonic()
        for m in miners:
            m.join(5)
        haproxy.terminate()
        haproxy.wait(10)
        if successor:
            os.kill(successor, signal.SIGTERM)


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
