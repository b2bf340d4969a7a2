"""The core server end to end: real sockets, a real server process, a real PostgreSQL."""
from __future__ import annotations

import signal
import socket
import time

import pytest
import ujson

from gstratum.client import StratumClient, StratumRejected, validate_notify

from .conftest import query, wait_rows, wait_until


def connect(server, timeout=10.0) -> StratumClient:
    return StratumClient(server.host, server.port, timeout=timeout)


def raw_exchange(sock: socket.socket, payload: bytes, replies: int = 1, timeout: float = 5.0) -> list[dict]:
    sock.sendall(payload)
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\n") < replies:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return [ujson.loads(line) for line in buf.split(b"\n") if line.strip()]


def test_subscribe_authorize_and_first_job(server):
    with connect(server) as client:
        sub = client.subscribe("test-ua/1.0")
        assert len(sub.extranonce1) == 16 and int(sub.extranonce1, 16) > 0
        assert sub.extranonce2_size == 4
        assert sub.difficulty_sub_id != sub.session_id
        # set_difficulty (a number) and the current job follow the subscribe reply, in that order
        note = client.wait_for("mining.notify", timeout=5)
        methods = [m["method"] for m in client.state.notifications]
        assert methods[:2] == ["mining.set_difficulty", "mining.notify"]
        assert isinstance(client.state.notifications[0]["params"][0], (int, float))
        validate_notify(note["params"])
        assert note["params"][8] is True
        assert client.authorize("alice.rig1", "secret-password") is True


def test_rows_recorded_for_a_session(server, db):
    with connect(server) as client:
        sub = client.subscribe("recorder-test/2", None)
        client.authorize("bob.rig7", "hunter2")
        job_id = client.wait_for("mining.notify")["params"][0]
    rows = wait_rows(db, "SELECT user_agent, extranonce2_size, resumed FROM subscriptions WHERE extranonce1 = %s",
                     sub.extranonce1, expect=[("recorder-test/2", 4, False)])
    assert rows == [("recorder-test/2", 4, False)]
    conn_id = query(db, "SELECT connection_id FROM subscriptions WHERE extranonce1 = %s", sub.extranonce1)[0][0]
    assert query(db, "SELECT host(remote_addr) FROM connections WHERE id = %s", conn_id) == [("127.0.0.1",)]
    auth = wait_rows(db, "SELECT worker, host(remote_addr), authorized FROM authorizations WHERE connection_id = %s",
                     conn_id, expect=[("bob.rig7", "127.0.0.1", True)])
    assert auth == [("bob.rig7", "127.0.0.1", True)]
    assert query(db, "SELECT count(*) FROM jobs WHERE job_id = %s", job_id) == [(1,)]
    closed = wait_rows(db, "SELECT reason FROM disconnections WHERE connection_id = %s", conn_id,
                       expect=[("closed by miner",)])
    assert closed == [("closed by miner",)]
    # the password is stored nowhere
    for table in ("authorizations", "subscriptions", "connections"):
        dump = query(db, f"SELECT t::text FROM {table} t WHERE t::text LIKE %s", "%hunter2%")
        assert dump == []


def test_notify_reaches_every_one_of_500_miners(start_server):
    server = start_server("--notify-interval", "1.5")
    socks = []
    try:
        for i in range(500):
            s = socket.create_connection((server.host, server.port), timeout=10)
            s.sendall(b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
            socks.append(s)
        buffers = [b""] * len(socks)

        def jobs_seen(i):
            return [m["params"][0] for m in map(ujson.loads, buffers[i].split(b"\n")[:-1])
                    if m.get("method") == "mining.notify"]

        def read_available(i):
            s = socks[i]
            s.setblocking(False)
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        return
                    buffers[i] += data
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)

        def common_broadcast():
            """Job ids every miner received after its subscribe reply's own job: one broadcast reached all 500."""
            for i in range(len(socks)):
                read_available(i)
            return set.intersection(*(set(jobs_seen(i)[1:]) for i in range(len(socks))))

        common = wait_until(common_broadcast, timeout=20, every=0.1)
        assert common, f"{sum(len(jobs_seen(i)) < 2 for i in range(len(socks)))} miners missed the broadcast"
        # the server logs a fan-out after its last send, so the line may follow the miners' reads by a moment
        assert "miners=500 " in wait_until(server.log, lambda text: "miners=500 " in text)
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("payload, code, fragment", [
    (b"{this is not json\n", 20, "Parse error"),
    (b"[1,2,3]\n", 20, "batch"),
    (b'"text"\n', 20, "JSON object"),
    (b'{"id": 3, "method": "mining.nonsense", "params": []}\n', 20, "Unknown method"),
    (b'{"id": 4, "method": "mining.authorize", "params": []}\n', 20, "worker name"),
    (b'{"id": 5, "method": "mining.authorize", "params": [42, "x"]}\n', 20, "worker name"),
    (b'{"id": 6, "method": "mining.submit", "params": ["w", "j", "00000000", "00000000", "00000000"]}\n', 25,
     "Not subscribed"),
    (b'{"id": 7, "method": "mining.subscribe", "params": 5}\n', 20, "params must be an array"),
    (b'\xff\xfe\xfd\n', 20, "Parse error"),
    (b'{"id": 8, "method": "mining.subscribe", "params": [' + b"[" * 5000 + b"]" * 5000 + b"]}\n", 20, "Parse"),
])
def test_bad_input_gets_error_and_connection_stays_up(server, payload, code, fragment):
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        reply = raw_exchange(s, payload)[0]
        assert reply["result"] is None
        assert reply["error"][0] == code and fragment in reply["error"][1], reply
        # the same connection still works
        ok = raw_exchange(s, b'{"id": 99, "method": "mining.subscribe", "params": []}\n', replies=2)
        assert ok[0]["id"] == 99 and ok[0]["error"] is None


def test_submit_before_authorize_is_unauthorized(server):
    with connect(server) as client:
        client.subscribe()
        job = client.wait_for("mining.notify")["params"]
        with pytest.raises(StratumRejected) as info:
            client.submit("nobody", job[0], "00000000", job[7], "00000000")
        assert info.value.code == 24


def test_oversize_line_closes_only_that_connection(server):
    with connect(server) as bystander:
        bystander.subscribe()
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(b'{"id": 1, "method": "mining.subscribe", "params": ["' + b"A" * 20000 + b'"]}\n')
            s.settimeout(5)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            reply = ujson.loads(data.split(b"\n")[0])
            assert reply["error"][0] == 20 and "too long" in reply["error"][1]
        assert bystander.authorize("still-here") is True


def test_subscribe_ids_and_extranonce1_unique(server):
    subs = []
    for _ in range(20):
        with connect(server) as client:
            subs.append(client.subscribe())
    assert len({s.extranonce1 for s in subs}) == 20
    ids = [s.session_id for s in subs] + [s.difficulty_sub_id for s in subs]
    assert len(set(ids)) == 40


def test_sigterm_flushes_pending_rows(start_server, db):
    # a one-minute writer interval keeps the rows queued in memory until shutdown forces the flush
    server = start_server("--notify-interval", "30", env={"GSTRATUM_WRITER_INTERVAL": "60"})
    workers = [f"flush-{time.time_ns()}-{i}" for i in range(50)]
    with connect(server) as client:
        client.subscribe()
        for w in workers:
            client.authorize(w)
    assert query(db, "SELECT count(*) FROM authorizations WHERE worker = ANY(%s)", workers) == [(0,)]
    assert server.stop(signal.SIGTERM) == 0
    rows = query(db, "SELECT count(*) FROM authorizations WHERE worker = ANY(%s)", workers)
    assert rows == [(50,)]
    assert "all rows written" in server.log()
