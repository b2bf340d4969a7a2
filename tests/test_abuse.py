"""Abusive and broken clients: each is cut off or answered, and a bystander miner keeps being served."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import ujson

from gstratum.client import StratumClient

from .conftest import wait_until


def connected(server) -> int:
    """Connections the server holds now, from its /metrics."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5).read().decode()
    return int(float(re.search(r"^gstratum_miners_connected (\S+)$", text, re.M).group(1)))


def bystander(server) -> StratumClient:
    client = StratumClient(server.host, server.port, timeout=5)
    client.subscribe()
    return client


def assert_still_served(client: StratumClient) -> None:
    started = time.monotonic()
    assert client.authorize(f"bystander-{time.time_ns()}") is True
    assert time.monotonic() - started < 2.0


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def test_connection_cap_and_per_ip_cap(start_server):
    server = start_server("--max-connections", "20", "--max-per-ip", "15")
    kept = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(15)]
    assert wait_until(lambda: connected(server), lambda n: n == 15) == 15
    # the 16th from the same address is closed at once
    extra = socket.create_connection((server.host, server.port), timeout=5)
    assert read_until_closed(extra, 5) == b""
    # from another loopback address there is room until the global cap
    others = [socket.create_connection((server.host, server.port), timeout=5, source_address=("127.0.0.2", 0))
              for _ in range(5)]
    assert wait_until(lambda: connected(server), lambda n: n == 20) == 20
    over = socket.create_connection((server.host, server.port), timeout=5, source_address=("127.0.0.3", 0))
    assert read_until_closed(over, 5) == b""
    # connections under the cap are served
    kept[0].sendall(b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
    kept[0].settimeout(5)
    assert b'"result"' in kept[0].recv(65536)
    for s in kept + others + [extra, over]:
        s.close()


def test_slowloris_and_idle_miners_are_closed(start_server):
    server = start_server("--subscribe-timeout", "1.5", "--idle-timeout", "3")
    keeper = bystander(server)
    stop = threading.Event()
    served = []

    def keep_talking():   # an honest miner talks well within the idle window
        while not stop.is_set():
            served.append(keeper.authorize(f"keeper-{time.time_ns()}"))
            time.sleep(0.5)

    talker = threading.Thread(target=keep_talking, daemon=True)
    talker.start()
    try:
        silent = socket.create_connection((server.host, server.port), timeout=10)
        silent.sendall(b'{"id": 1, "meth')   # half a request, never finished
        started = time.monotonic()
        assert read_until_closed(silent) == b""
        assert 1.0 < time.monotonic() - started < 4.5
        idle = StratumClient(server.host, server.port, timeout=10)
        idle.subscribe()
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            while True:
                idle.read_message(10)
        assert 2.0 < time.monotonic() - started < 6.0
    finally:
        stop.set()
        talker.join(5)
    assert served and all(served)
    assert_still_served(keeper)
    keeper.close()
    assert "not subscribed within" in server.log() and "idle for" in server.log()


def test_garbage_flood_is_cut_off_without_slowing_others(server):
    with bystander(server) as keeper:
        flood = socket.create_connection((server.host, server.port), timeout=10)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        line = b"garbage garbage garbage\n" * 1000
        sent = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                flood.sendall(line)
                sent += 1000
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 10, "flood was never cut off"
        assert sent < 1_000_000
        assert_still_served(keeper)
    assert "flood" in server.log()


def test_slow_reader_is_dropped_and_memory_stays_bounded(start_server):
    server = start_server("--notify-interval", "0.2", env={"GSTRATUM_MAX_PENDING_OUTPUT": "20000",
                                                           "GSTRATUM_SEND_TIMEOUT": "3",
                                                           "GSTRATUM_SOCKET_SNDBUF": "8192"})
    with bystander(server) as keeper:
        lazy = socket.socket()
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.connect((server.host, server.port))
        # subscribe, then ask for large replies (within the request-rate limit) and never read any of them
        lazy.sendall(b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
        names = [f"x-extension-with-a-long-name-{i:02d}-" + "z" * 30 for i in range(16)]
        payload = ujson.dumps({"id": 2, "method": "mining.configure", "params": [names, {}]}).encode() + b"\n"
        deadline = time.monotonic() + 30
        while "slow reader" not in server.log() and time.monotonic() < deadline:
            try:
                lazy.send(payload * 2, socket.MSG_DONTWAIT)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            time.sleep(0.05)
        assert "slow reader" in server.log()
        assert_still_served(keeper)
        lazy.close()


@pytest.mark.parametrize("payload, check", [
    (b'{"id": 1, "method": "mining.subscribe", "params": []}\r\n', lambda r: r["error"] is None),
    (b'{"id": 2, "method": "mining.authorize", "params": ["a\\u0000b", "x"]}\n', lambda r: r["result"] is True),
    (b'{"id": 3, "method": "mining.authorize", "params": [["nested"], {"x": 1}]}\n', lambda r: r["error"][0] == 20),
    (b'{"id": 4, "method": "mining.submit", "params": [1, 2, 3]}\n', lambda r: r["error"][0] == 25),
    (b'{"id": 5, "method": "mining.suggest_difficulty", "params": [1e309]}\n', lambda r: r["error"] is not None),
    (b'{"id": 6, "method": "mining.suggest_difficulty", "params": [123456789012345678901234567890]}\n',
     lambda r: r["result"] is True),   # a huge integer is a (huge) positive difficulty, clamped later
    (b'{"id": 7, "method": "mining.configure", "params": [["version-rolling"], "notadict"]}\n',
     lambda r: r["result"]["version-rolling"] is True),
    (b'{"id": 8, "method": "mining.authorize", "params": ["' + b"w" * 300 + b'", "x"]}\n',
     lambda r: r["error"][0] == 20),
    (b'\x00\x00\x00\n', lambda r: r["error"][0] == 20),
    # a forged session id with a NUL (found by scripts/fuzz_live.py: it used to reach the database and fail)
    (b'{"id": 11, "method": "mining.subscribe", "params": ["ua", "abc\\u0000def"]}\n',
     lambda r: r["error"] is None and len(r["result"][1]) == 16),
    (b'[{"id": 9, "method": "mining.subscribe"}]\n', lambda r: r["error"][0] == 20),
    (b'{"id": 10, "method": "mining.subscribe", "params": [' + b'[' * 3000 + b']' * 3000 + b']}\n',
     lambda r: r["error"][0] == 20),
])
def test_odd_inputs_answered_and_connection_kept(server, payload, check):
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(payload)
        s.settimeout(5)
        buf = b""
        while b"\n" not in buf:
            buf += s.recv(65536)
        reply = ujson.loads(buf.split(b"\n")[0])
        assert check(reply), reply
        s.sendall(b'{"id": 77, "method": "client.get_version", "params": []}\n')
        while b'"id":77' not in buf:
            chunk = s.recv(65536)
            assert chunk
            buf += chunk


def test_nesting_10000_deep_is_refused_by_the_line_cap_and_others_continue(server):
    with bystander(server) as keeper:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(b'{"id": 1, "method": "mining.subscribe", "params": [' + b'{"a":' * 10000 + b'1' +
                      b'}' * 10000 + b']}\n')
            reply = ujson.loads(read_until_closed(s).split(b"\n")[0])
            assert reply["error"][0] == 20 and "too long" in reply["error"][1]
        assert_still_served(keeper)
