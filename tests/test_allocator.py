"""extranonce1 uniqueness: many miners at once, two server processes on one database, and across restarts."""
from __future__ import annotations

import socket
import time

import ujson

from .conftest import query


def subscribe_many(servers, count: int) -> list[str]:
    """Open `count` connections spread over `servers`, subscribe on all at once, return every extranonce1."""
    socks = []
    for i in range(count):
        server = servers[i % len(servers)]
        socks.append(socket.create_connection((server.host, server.port), timeout=20))
    for s in socks:  # all requests in flight before any reply is read
        s.sendall(b'{"id": 1, "method": "mining.subscribe", "params": ["uniq"]}\n')
    extranonces = []
    for s in socks:
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, "server closed a connection during subscribe"
            buf += chunk
        reply = ujson.loads(buf.split(b"\n")[0])
        assert reply["error"] is None, reply
        extranonces.append(reply["result"][1])
    for s in socks:
        s.close()
    return extranonces


def test_unique_across_1000_concurrent_miners_and_two_processes(start_server, db):
    # small blocks force both processes to refill from the shared sequence many times, interleaved
    env = {"GSTRATUM_EXTRANONCE_BLOCK": "40"}
    a = start_server(env=env)
    b = start_server(env=env)
    extranonces = subscribe_many([a, b], 1000)
    assert len(extranonces) == 1000
    assert len(set(extranonces)) == 1000
    assert all(len(e) == 16 and int(e, 16) > 0 for e in extranonces)
    # and the database agrees: every one recorded, once
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = query(db, "SELECT count(DISTINCT extranonce1), count(*) FROM subscriptions WHERE extranonce1 = ANY(%s)",
                     extranonces)
        if rows == [(1000, 1000)]:
            break
        time.sleep(0.1)
    assert rows == [(1000, 1000)]


def test_unique_across_restarts(start_server):
    first = start_server()
    before = subscribe_many([first], 5)
    first.stop()
    second = start_server()
    after = subscribe_many([second], 5)
    assert not set(before) & set(after)
    # values reserved by the first process are never handed out again, even the unused part of its block
    assert min(int(e, 16) for e in after) > max(int(e, 16) for e in before)
