"""One share, one credit, pool-wide (issue 17, item 1), over real sockets and real processes: a share repeated after
reconnecting and resuming the session is a duplicate (22) and recorded as rejected, whether the session resumes on
the same process, on another process of the pool (its old connection still open), across the `--workers`
processes of one machine, or on a SIGHUP successor."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gstratum.client import StratumClient, StratumRejected
from gstratum.client.work import FoundShare, JobWork
from gstratum.mining import bitcoin

from .conftest import ROOT, free_port, new_cluster_name, process_alive, query, wait_until

pytestmark = pytest.mark.integration
DIFFICULTY = "0.0001"


def find_share(client: StratumClient) -> FoundShare:
    """A share on the client's current job; each call finds a new one (the client counts its extranonce2)."""
    work = JobWork(client)
    while not work.refresh() or client.state.difficulty is None:
        client.read_message(5.0)
    share = None
    while share is None:
        share, _ = work.search(bitcoin.target_from_difficulty(client.state.difficulty), 100_000)
    return share


def submit_code(client: StratumClient, worker: str, share: FoundShare):
    try:
        client.submit(worker, share.job_id, share.extranonce2, share.ntime, share.nonce)
        return None
    except StratumRejected as exc:
        return exc.code


def resume(host: str, port: int, session: str, worker: str) -> StratumClient:
    client = StratumClient(host, port, timeout=15)
    client.subscribe("ua/1", session)
    client.authorize(worker)
    return client


def share_rows(db, worker: str, count: int) -> list[tuple]:
    """The worker's share rows (accepted, error code) in order, once `count` of them are written."""
    return wait_until(lambda: query(db, "SELECT accepted, error_code FROM shares WHERE worker = %s "
                                        "ORDER BY submitted_at", worker), lambda rows: len(rows) >= count)


def test_a_share_repeated_after_three_reconnects_is_credited_once(start_server, db):
    server = start_server("--difficulty", DIFFICULTY, "--notify-interval", "30", "--vardiff", "0")
    worker = f"dup.same{time.time_ns()}"
    with server.miner(worker) as client:
        share = find_share(client)
        assert submit_code(client, worker, share) is None
        session, extranonce1 = client.subscription.session_id, client.subscription.extranonce1
    for _ in range(3):
        with resume(server.host, server.port, session, worker) as again:
            assert again.subscription.extranonce1 == extranonce1          # resumed, the same work is valid
            assert submit_code(again, worker, share) == 22
    rows = share_rows(db, worker, 4)
    assert rows == [(True, None), (False, 22), (False, 22), (False, 22)], rows


def test_a_session_resumed_on_another_process_does_not_credit_a_share_twice(start_server, db):
    """Two processes of one pool (one job stream: the random source's leader publishes every job). The miner's
    first connection stays open while it resumes on the other process: that process closes it, its disconnection
    row hands the credited shares over, and the repeat is a duplicate; new work on the same job is still accepted."""
    pool = new_cluster_name()
    first = start_server("--difficulty", DIFFICULTY, "--notify-interval", "30", "--vardiff", "0", cluster=pool)
    second = start_server("--difficulty", DIFFICULTY, "--notify-interval", "30", "--vardiff", "0", cluster=pool)
    worker = f"dup.cross{time.time_ns()}"
    client = first.miner(worker)
    try:
        share = find_share(client)
        assert submit_code(client, worker, share) is None
        fresh = find_share(client)                # found on the same job, not yet submitted (in flight)
        session, extranonce1 = client.subscription.session_id, client.subscription.extranonce1
        with resume(second.host, second.port, session, worker) as again:
            assert again.subscription.extranonce1 == extranonce1
            assert submit_code(again, worker, share) == 22
            assert submit_code(again, worker, fresh) is None
            assert submit_code(again, worker, fresh) == 22
        # the old connection was closed by the first process when the session moved
        closed = wait_until(lambda: _closed(client), timeout=10)
        assert closed
    finally:
        client.close()
    rows = share_rows(db, worker, 4)
    assert sorted(rows, key=str) == sorted([(True, None), (False, 22), (True, None), (False, 22)], key=str)


def _closed(client: StratumClient) -> bool:
    try:
        client.poll()
    except (ConnectionError, OSError):
        return True
    return False


def test_a_sighup_successor_knows_what_its_predecessor_credited(start_server, db):
    server = start_server("--difficulty", DIFFICULTY, "--notify-interval", "5", "--clean-every", "1000",
                          "--drain-period", "1", "--vardiff", "0")
    worker = f"dup.hup{time.time_ns()}"
    with server.miner(worker) as client:
        share = find_share(client)
        assert submit_code(client, worker, share) is None
        in_flight = find_share(client)
        session = client.subscription.session_id
    server.proc.send_signal(signal.SIGHUP)
    # the successor listens once the predecessor drains: from then on a new connection reaches the successor
    wait_until(lambda: "a successor is listening; draining" in server.log(), timeout=30)
    successor = int(server.log().split("takeover: started successor pid ")[1].split()[0])
    try:
        with resume(server.host, server.port, session, worker) as again:
            assert submit_code(again, worker, share) == 22
            assert submit_code(again, worker, in_flight) is None
        assert server.proc.wait(30) == 0, server.log()
        rows = share_rows(db, worker, 3)
        assert rows == [(True, None), (False, 22), (True, None)], rows
    finally:
        os.kill(successor, signal.SIGTERM)
        wait_until(lambda: process_alive(successor), lambda alive: not alive, timeout=20)


def test_the_workers_of_one_machine_share_one_credit_per_share(schema, tmp_path, db):
    port, http_port = free_port(), free_port()
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "2", "--database-url", schema, "--notify-interval", "30",
                                 "--difficulty", DIFFICULTY, "--vardiff", "0", "--cluster", new_cluster_name(),
                                 "--http-port", str(http_port), "--runtime-dir", str(tmp_path / "run"),
                                 "--journal-dir", str(tmp_path / "journal")], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    worker = f"dup.workers{time.time_ns()}"
    try:
        wait_until(lambda: log_path.read_text().count("stratum listening") >= 2, timeout=30)
        assert proc.poll() is None, log_path.read_text()
        client = StratumClient("127.0.0.1", port, timeout=15)
        client.subscribe()
        client.authorize(worker)
        share = find_share(client)
        assert submit_code(client, worker, share) is None
        session = client.subscription.session_id
        client.close()
        servers_of = ("SELECT c.server_id FROM subscriptions s JOIN connections c ON c.id = s.connection_id "
                      "WHERE s.session_id = %s ORDER BY s.subscribed_at")
        first_server = wait_until(lambda: query(db, servers_of, session), lambda rows: len(rows) == 1)[0][0]
        other = False
        for attempt in range(2, 40):                 # the kernel spreads connections: land on the other worker
            with resume("127.0.0.1", port, session, worker) as again:
                assert submit_code(again, worker, share) == 22
            rows = wait_until(lambda: query(db, servers_of, session), lambda rows: len(rows) == attempt)
            if rows[-1][0] != first_server:
                other = True
                break
        assert other, "every reconnect landed on the same worker"
        rows = wait_until(lambda: query(db, "SELECT count(*) FILTER (WHERE accepted), count(*) FROM shares "
                                            "WHERE worker = %s", worker), lambda r: r[0][1] == attempt)
        assert rows[0] == (1, attempt)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert "Traceback" not in log_path.read_text()


def test_a_session_whose_process_died_is_not_resumed(start_server, db):
    """The old process was killed with the connection open: no disconnection row hands its shares over, so the
    other process does not resume the session (a fresh extranonce1, which no earlier share can match)."""
    pool = new_cluster_name()
    first = start_server("--difficulty", DIFFICULTY, "--notify-interval", "30", "--vardiff", "0", cluster=pool)
    second = start_server("--difficulty", DIFFICULTY, "--notify-interval", "30", "--vardiff", "0", cluster=pool)
    worker = f"dup.dead{time.time_ns()}"
    client = first.miner(worker)
    try:
        share = find_share(client)
        assert submit_code(client, worker, share) is None
        share_rows(db, worker, 1)                    # credited in the database: the case that matters
        session, extranonce1 = client.subscription.session_id, client.subscription.extranonce1
        first.stop(signal.SIGKILL)
        with resume(second.host, second.port, session, worker) as again:
            assert again.subscription.extranonce1 != extranonce1
            assert submit_code(again, worker, share) in (21, 23)     # not this miner's work any more
    finally:
        client.close()
    assert "not resumed" in second.log()
    rows = share_rows(db, worker, 2)
    assert [r[0] for r in rows] == [True, False]
