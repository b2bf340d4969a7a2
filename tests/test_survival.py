"""Faults that used to lose rows or kill a background loop, injected for real against a server process: a worker
name with a lone surrogate, a journal on a full disk while the database is down, a notification that makes the
LISTEN loop raise."""
from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request

import psycopg2
import pytest

from gstratum.client import StratumClient, StratumRejected

from .conftest import ServerProcess, new_cluster_name, wait_until
from .test_reliability import AuthorizingMiner


def get(server, path: str):
    """(status, body): JSON for /readyz, text for /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, (json.loads(body) if path == "/readyz" else body.decode())


def metric(server, name: str) -> float:
    """One sample of /metrics (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", get(server, "/metrics")[1], re.M)
    return float(match.group(1)) if match else 0.0


def count(url: str, sql: str, *params) -> int:
    """A count from a new connection (the database is stopped and started in these tests); -1 while it is down."""
    try:
        with psycopg2.connect(url, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            result = cur.fetchone()[0]
        conn.close()
        return result
    except psycopg2.OperationalError:
        return -1


def submit_code(client: StratumClient, worker: str) -> int | None:
    """The error code of a share on a job that does not exist (None if it were accepted)."""
    try:
        client.submit(worker, "nosuchjob", "00000000", "00000000", "00000000")
    except StratumRejected as exc:
        return exc.code
    return None


def test_a_lone_surrogate_in_a_worker_name_is_stored_replaced_and_never_breaks_the_share_path(
        start_server, embedded_pg, schema):
    """`"\\ud800x"` in the JSON: authorize and submit are answered as for any name, their rows are stored with
    U+FFFD, nothing is set aside and nothing is logged as an error; also while the database is down and rows spill
    to the journal (a queue of one row)."""
    server = start_server(env={"GSTRATUM_WRITER_QUEUE": "1", "GSTRATUM_WRITER_BATCH": "1"})
    tag = f"sur{time.time_ns()}"
    with StratumClient(server.host, server.port) as client:
        client.subscribe()
        assert client.authorize(tag + "\ud800up") is True             # sent as the JSON escape "\ud800"
        assert submit_code(client, tag + "\ud800up") == 21            # the same answer as for any name
        assert wait_until(lambda: count(schema, "SELECT count(*) FROM shares WHERE worker = %s",
                                        tag + "\ufffdup"), lambda n: n == 1) == 1
        embedded_pg.stop()
        try:
            assert client.authorize(tag + "\ud800down") is True
            assert submit_code(client, tag + "\ud800down") == 21
        finally:
            embedded_pg.start()
    for suffix in ("up", "down"):
        worker = tag + "\ufffd" + suffix
        assert wait_until(lambda: count(schema, "SELECT count(*) FROM authorizations WHERE worker = %s", worker),
                          lambda n: n == 1, timeout=30) == 1, server.log()[-3000:]
        assert count(schema, "SELECT count(*) FROM shares WHERE worker = %s", worker) == 1
    assert "replayed" in server.log()       # the rows of the outage went through the journal
    assert not list(server.journal_dir.glob("*.rejected"))
    assert " ERROR " not in server.log(), server.log()[-3000:]


def ready(server) -> tuple[int, list]:
    status, body = get(server, "/readyz")
    return status, body.get("not_ready", [])


def rows_held(server) -> int:
    """Rows the writer holds in memory, as /readyz reports them while the journal fails (0 otherwise)."""
    for reason in ready(server)[1]:
        match = re.search(r"(\d+) rows held in memory", reason)
        if match:
            return int(match.group(1))
    return 0


@pytest.mark.parametrize("space_returns_first", [True, False], ids=["space-then-database", "database-then-space"])
def test_journal_on_a_full_disk_while_the_database_is_down_loses_nothing(tiny_disk, embedded_pg, start_server,
                                                                          schema, space_returns_first):
    """The database stops and the journal's disk is full: the writer survives, /readyz says so naming the journal,
    a metric counts the failed writes, rows wait in memory; when space and the database return (in either order)
    every authorization answered to a miner is in the database, once."""
    disk = tiny_disk("1m")
    tag = f"full{time.time_ns()}"
    server = start_server("--journal-dir", str(disk.path / "journal"),
                          env={"GSTRATUM_WRITER_QUEUE": "50", "GSTRATUM_WRITER_BATCH": "10"})
    miners = [AuthorizingMiner(server, f"{tag}-{i}") for i in range(6)]
    for m in miners:
        m.start()
    like = f"{tag}-%"
    assert wait_until(lambda: count(schema, "SELECT count(*) FROM authorizations WHERE worker LIKE %s", like),
                      lambda n: n > 50) > 50
    disk.fill()
    embedded_pg.stop()
    database_down = True
    try:
        status, reasons = wait_until(lambda: ready(server), lambda r: any("journal" in x for x in r[1]), timeout=20)
        assert status == 503 and any("journal" in x and "space" in x.lower() for x in reasons), reasons
        assert metric(server, "gstratum_journal_write_failures_total") > 0
        # miners keep being answered, and their rows wait in memory (well past the queue's 50)
        assert wait_until(lambda: rows_held(server), lambda n: n > 1000, timeout=30) > 1000
        assert metric(server, "gstratum_journal_write_failures_total") >= 3      # retried, with a backoff
        if space_returns_first:
            disk.free()
            reasons = wait_until(lambda: ready(server)[1], lambda r: not any("journal" in x for x in r), timeout=30)
            assert not any("journal" in x for x in reasons), reasons
            embedded_pg.start()
            database_down = False
        else:
            embedded_pg.start()
            database_down = False
            reasons = wait_until(lambda: ready(server)[1], lambda r: not any("database" in x for x in r), timeout=30)
            assert not any("database" in x for x in reasons) and any("journal" in x for x in reasons), reasons
            disk.free()
    finally:
        if database_down:
            embedded_pg.start()
        disk.free()
    for m in miners:
        m.stop.set()
    for m in miners:
        m.join(10)
    assert not [m.error for m in miners if m.error is not None]
    produced = sum(m.acknowledged for m in miners)
    written = wait_until(lambda: count(schema, "SELECT count(*) FROM authorizations WHERE worker LIKE %s", like),
                         lambda n: n == produced, timeout=60)
    assert written == produced, server.log()[-4000:]
    assert count(schema, "SELECT count(*) - count(DISTINCT id) FROM authorizations WHERE worker LIKE %s", like) == 0
    assert wait_until(lambda: ready(server), lambda r: r[0] == 200, timeout=30)[0] == 200
    assert metric(server, "gstratum_rows_dropped_total") == 0
    log = server.log()
    assert "journal" in log and "write failed" in log and "writable again" in log
    for m in miners:
        m.client.close()


def test_a_loop_that_raises_comes_back_and_readyz_names_it_meanwhile(schema, tmp_path):
    """Notifications the admin handler cannot take (a process of another release, psql) make the LISTEN loop
    raise, three times in a row: it is restarted with a growing wait, /readyz names it meanwhile, the restarts are
    counted, and afterwards the loop serves again (an admin message reaches the miner)."""
    cluster = new_cluster_name()
    # our own process, not start_server's: its log holds the crash's traceback on purpose
    server = ServerProcess(schema, tmp_path, "--notify-interval", "30", cluster=cluster)
    try:
        with StratumClient(server.host, server.port) as miner:
            miner.subscribe()
            assert ready(server)[0] == 200
            with psycopg2.connect(schema) as conn, conn.cursor() as cur:   # one transaction: delivered together
                for n in range(3):
                    cur.execute("SELECT pg_notify(%s, %s)", (f"{cluster}_admin",
                                                              json.dumps({"action": "message", "params": [n]})))
            conn.close()
            status, reasons = wait_until(lambda: ready(server), lambda r: r[0] == 503, timeout=10)
            assert status == 503 and any("loop cluster-listen down" in x for x in reasons), reasons
            assert wait_until(lambda: ready(server), lambda r: r[0] == 200, timeout=20)[0] == 200
            assert metric(server, 'gstratum_loop_restarts_total{loop="cluster-listen"}') == 3
            assert metric(server, "gstratum_loops_down") == 0
            with psycopg2.connect(schema) as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, %s)", (f"{cluster}_admin",
                                                         json.dumps({"action": "message",
                                                                     "params": {"text": "back again"}})))
            conn.close()
            shown = miner.wait_for("client.show_message", timeout=10)
            assert shown["params"] == ["back again"]
        log = server.log()
        assert log.count("loop cluster-listen crashed") == 3 and "Traceback" in log and "AttributeError" in log
        assert log.count("loop cluster-listen restarted") == 3
    finally:
        assert server.stop(signal.SIGTERM) == 0
