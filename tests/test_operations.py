"""Operators: Prometheus metrics, the JSON API against the database, admin actions, retention, CLI, JSON logs."""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from gstratum.client import StratumClient
from gstratum.storage.db import Database
from gstratum.client.work import mine
from gstratum.storage.retention import Retention, partition_name, plan

from .conftest import ROOT, query, wait_rows, wait_until

TOKEN = "test-admin-token-0123456789"


def get(server, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=10) as response:
        body = response.read()
        return json.loads(body) if response.headers["Content-Type"].startswith("application/json") else body.decode()


def post(server, path: str, body: dict, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", method="POST",
                                     data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name}{labels} missing"
    return float(match.group(1))


def test_metrics_move_with_subscribe_authorize_and_shares(start_server):
    server = start_server("--difficulty", "0.00002", "--notify-interval", "2")
    before = get(server, "/metrics")
    assert "# TYPE gstratum_shares_total counter" in before
    assert "gstratum_notify_fanout_seconds_bucket" in before
    assert "gstratum_gc_pause_seconds_count" in before
    with StratumClient(server.host, server.port) as client:
        client.subscribe()
        client.authorize("metrics.rig")
        report = mine(client, "metrics.rig", duration=2)
        during = get(server, "/metrics")
        assert metric(during, "gstratum_miners_connected") == 1
    assert metric(during, "gstratum_subscribes_total") == metric(before, "gstratum_subscribes_total") + 1
    assert metric(during, "gstratum_authorizes_total") == metric(before, "gstratum_authorizes_total") + 1
    assert metric(during, "gstratum_shares_total", '{result="accepted"}') == report.accepted > 0
    assert metric(during, "gstratum_jobs_broadcast_total") >= 1
    assert metric(during, "gstratum_extranonce_reserve") > 0


def test_api_agrees_with_the_database(start_server, db):
    server = start_server("--difficulty", "0.00002", "--notify-interval", "2")
    worker = f"api.{time.time_ns()}"
    with server.miner(worker) as client:
        report = mine(client, worker, duration=2)
        one = wait_until(lambda: get(server, f"/api/workers/{worker}"), lambda w: w["accepted"] == report.accepted)
        pool = get(server, "/api/pool")
    raw = query(db, "SELECT count(*), sum(difficulty) FROM shares WHERE worker = %s AND accepted", worker)[0]
    assert one["accepted"] == raw[0] == report.accepted
    assert one["connections"] == 1 and one["difficulty"] == 0.00002
    assert one["hashrate"] == pytest.approx(float(raw[1]) * 2**32 / 600)
    assert pool["miners_online"] == 1 and pool["current_job"]["job_id"]
    assert pool["hashrate"]["10m"] >= one["hashrate"] > 0
    assert any(w["name"] == worker for w in get(server, "/api/workers")["workers"])
    assert get(server, "/api/blocks")["blocks"] is not None
    with pytest.raises(urllib.error.HTTPError):
        get(server, "/api/workers/nobody-at-all")


def test_admin_actions_reach_the_right_miners_and_need_the_token(start_server, db):
    (started,), = query(db, "SELECT now()")        # this test's actions only (an earlier run's are in the table)
    server = start_server("--notify-interval", "30", env={"GSTRATUM_ADMIN_TOKEN": TOKEN})
    with StratumClient(server.host, server.port) as alice, StratumClient(server.host, server.port) as bob:
        for client, name in ((alice, "alice.rig"), (bob, "bob.rig")):
            client.subscribe()
            client.authorize(name)
        assert post(server, "/api/admin/message", {"text": "hi"}, token=None)[0] == 401
        assert post(server, "/api/admin/message", {"text": "hi"}, token="wrong-token-wrong-token")[0] == 401
        status, body = post(server, "/api/admin/message", {"worker": "alice.rig", "text": "maintenance at 12:00"})
        assert status == 200 and body["published"] is True
        assert alice.wait_for("client.show_message", timeout=5)["params"] == ["maintenance at 12:00"]
        status, _ = post(server, "/api/admin/difficulty", {"worker": "bob.rig", "difficulty": 4096})
        assert status == 200
        assert bob.wait_for("mining.set_difficulty", after=1, timeout=5)["params"] == [4096]
        assert not [m for m in bob.state.notifications if m["method"] == "client.show_message"]
        status, _ = post(server, "/api/admin/reconnect", {"host": "pool2.example", "port": 3334})
        assert status == 200
        for client in (alice, bob):   # the port as a string: cgminer and bfgminer read it with json_string_value
            assert client.wait_for("client.reconnect", timeout=5)["params"] == ["pool2.example", "3334", 0]
        assert post(server, "/api/admin/disconnect", {"worker": "alice.rig"})[0] == 200
        with pytest.raises((ConnectionError, OSError)):
            while True:
                alice.read_message(5)
        assert bob.authorize("bob.rig") is True
    actions = wait_until(lambda: query(db, "SELECT action, target FROM admin_actions WHERE acted_at >= %s "
                                           "ORDER BY acted_at", started), lambda rows: len(rows) >= 4)
    assert [a for a, _ in actions] == ["message", "difficulty", "reconnect", "disconnect"]


def test_admin_endpoints_are_off_without_a_token(server):
    assert post(server, "/api/admin/message", {"text": "x"})[0] == 404


def test_retention_plan_and_rotation(schema, db):
    today = dt.date(2026, 3, 31)
    create, drop = plan([partition_name(today - dt.timedelta(40)), partition_name(today)], today, 30)
    assert today not in create and today + dt.timedelta(7) in create and today - dt.timedelta(1) in create
    assert drop == [partition_name(today - dt.timedelta(40))]
    database = Database(schema)
    retention = Retention(database, days=30)
    old_day = dt.date(2020, 1, 1)
    created, _ = retention.run_once(today=old_day)
    assert partition_name(old_day) in created
    with db.cursor() as cur:   # a share in the old partition, and its rollup
        cur.execute("INSERT INTO shares (id, connection_id, worker, job_id, difficulty, accepted, submitted_at) "
                    "VALUES (gen_random_uuid(), gen_random_uuid(), 'old-worker', 'j', 1, true, '2020-01-01 12:00Z')")
        cur.execute("INSERT INTO worker_minutes VALUES ('old-worker', '2020-01-01 12:00Z', 1, 0, 1, '2020-01-01 12:00Z') "
                    "ON CONFLICT DO NOTHING")
    _, dropped = retention.run_once()
    assert partition_name(old_day) in dropped
    assert partition_name(dt.datetime.now(dt.timezone.utc).date()) not in dropped
    assert query(db, "SELECT to_regclass(%s)", partition_name(old_day)) == [(None,)]
    assert query(db, "SELECT count(*) FROM worker_minutes WHERE worker = 'old-worker'") == [(1,)]
    database.close()


def test_stats_cli_and_json_logs(start_server, schema, db):
    server = start_server("--difficulty", "0.00002", "--log-format", "json")
    worker = f"cli.{time.time_ns()}"
    with server.miner(worker) as client:
        mine(client, worker, duration=1.5)
    wait_until(lambda: query(db, "SELECT count(*) FROM worker_minutes WHERE worker = %s", worker), lambda r: r[0][0] > 0)
    out = subprocess.run([sys.executable, "-m", "gstratum", "stats", "--database-url", schema, "--top", "500"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pool hashrate" in out.stdout and worker in out.stdout
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert all(json.loads(line)["level"] for line in lines)


def test_rows_already_in_the_default_partition_are_adopted(schema, db):
    day = dt.date(2031, 5, 5)
    with db.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS " + partition_name(day))
        cur.execute("INSERT INTO shares (id, connection_id, worker, job_id, difficulty, accepted, submitted_at) "
                    "VALUES (gen_random_uuid(), gen_random_uuid(), 'early-bird', 'j', 1, true, '2031-05-05 08:00Z')")
    database = Database(schema)
    created, _ = Retention(database, days=30).run_once(today=day)
    database.close()
    assert partition_name(day) in created
    assert query(db, f"SELECT count(*) FROM {partition_name(day)} WHERE worker = 'early-bird'") == [(1,)]
    assert query(db, "SELECT count(*) FROM shares_default WHERE worker = 'early-bird'") == [(0,)]
    with db.cursor() as cur:
        cur.execute("DROP TABLE " + partition_name(day))


def test_a_database_with_an_incompatible_schema_stops_start_up_with_a_clear_message(database_url, tmp_path):
    """An outage is retried; a schema this release cannot use (e.g. made by an older gstratum) is not: the server
    exits at once and says what to do, instead of retrying for --db-wait seconds."""
    import psycopg2
    from urllib.parse import urlsplit, urlunsplit

    name = f"gstratum_mismatch_{time.time_ns()}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE shares (id integer)")    # not partitioned: the schema files cannot apply
        conn.close()
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", "0",
                                 "--http-port", "0", "--database-url", url, "--journal-dir", str(tmp_path)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert time.monotonic() - started < 30
        output = result.stdout + result.stderr
        assert "cannot use this database" in output and '"shares" is not partitioned' in output
        assert "Traceback" not in output
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_metrics_sum_workers_even_when_one_runs_the_previous_release():
    """With --workers, /metrics sums every worker's snapshot. During a rolling restart an old worker's snapshot may
    lack a histogram the new release added (gc_pause): the sum uses the workers that have it, nothing fails."""
    from prometheus_client import CollectorRegistry, generate_latest

    from gstratum.ops.metrics import Metrics, PoolCollector

    def snapshot(metrics: Metrics) -> dict:
        return {"connections": 1, "subscribed": 1, "writer_queue": 0, "journal_bytes": 0, "extranonce_reserve": 5,
                "processes": 1, "counters": metrics.counters()}

    new, old = Metrics(), Metrics()
    new.gc_pause.observe(0.003)
    new.fanout.observe(0.02)
    old.fanout.observe(0.04)
    old_snapshot = snapshot(old)
    del old_snapshot["counters"]["gc_pause"]
    registry = CollectorRegistry()
    registry.register(PoolCollector(lambda: [snapshot(new), old_snapshot]))
    text = generate_latest(registry).decode()
    assert metric(text, "gstratum_gc_pause_seconds_count") == 1
    assert metric(text, "gstratum_notify_fanout_seconds_count") == 2
    assert metric(text, "gstratum_miners_connected") == 2


# -- the API never costs the pool its writes ------------------------------------------------------------------------

def test_the_api_cache_shares_one_computation_expires_and_stays_bounded():
    import gevent
    import psycopg2

    from gstratum.ops.http import ResponseCache

    now = [0.0]
    cache = ResponseCache(ttl=2.0, size=3, clock=lambda: now[0])
    calls = []

    def compute(key):
        def run():
            calls.append(key)
            gevent.sleep(0.01)     # requests arriving meanwhile wait for this computation
            return key.upper()
        return run

    jobs = [gevent.spawn(cache.get, "/a", compute("/a")) for _ in range(10)]
    gevent.joinall(jobs)
    assert [job.value for job in jobs] == ["/A"] * 10 and calls == ["/a"]
    assert cache.get("/a", compute("/a")) == "/A" and calls == ["/a"]
    now[0] = 2.5                  # expired: computed again
    assert cache.get("/a", compute("/a")) == "/A" and calls == ["/a", "/a"]
    for i in range(100):          # as many distinct paths as there are workers: only the newest `size` are kept
        cache.get(f"/api/workers/w{i}", compute(f"/api/workers/w{i}"))
    assert len(cache) == 3

    def fails():
        gevent.sleep(0.01)
        raise psycopg2.OperationalError("down")

    jobs = [gevent.spawn(cache.get, "/b", fails) for _ in range(3)]
    gevent.joinall(jobs)
    assert all(isinstance(job.exception, psycopg2.OperationalError) for job in jobs)
    assert cache.get("/b", compute("/b")) == "/B"     # a failure is not kept


def _fetch_all(server, paths: list[str], timeout: float = 30.0) -> tuple[list, list]:
    """GET every path at once, one thread each: (results, threads). Once the threads are joined, each result is
    (HTTP status or the error, seconds)."""
    import threading

    results: list = [None] * len(paths)

    def fetch(index: int, path: str) -> None:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=timeout) as response:
                response.read()
                results[index] = (response.status, time.monotonic() - started)
        except urllib.error.HTTPError as exc:
            results[index] = (exc.code, time.monotonic() - started)
        except OSError as exc:
            results[index] = (repr(exc), time.monotonic() - started)

    threads = [threading.Thread(target=fetch, args=(i, path), daemon=True) for i, path in enumerate(paths)]
    for thread in threads:
        thread.start()
    return results, threads


def test_many_concurrent_api_requests_cost_a_bounded_number_of_queries(start_server):
    """Every open dashboard polls /api/pool and /api/workers every 3 s: 40 requests at once cost one computation
    per path (4 transactions for /api/pool, 2 for /api/workers), not 40."""
    server = start_server("--notify-interval", "30")
    before = metric(get(server, "/metrics"), "gstratum_api_db_transactions_total")
    results, threads = _fetch_all(server, ["/api/pool", "/api/workers"] * 20)
    for thread in threads:
        thread.join(60)
    assert [status for status, _ in results] == [200] * 40, results
    text = get(server, "/metrics")
    spent = metric(text, "gstratum_api_db_transactions_total") - before
    # one computation per path, or a few if the 2 s cache period ran out in the middle of the burst on a slow machine
    assert 6 <= spent <= 3 * 6, spent
    assert metric(text, "gstratum_api_cache_hits_total") >= 40 - 3 * 2


def test_a_blocked_api_read_costs_a_503_and_never_the_writers_connections(start_server, schema, db):
    """A read that cannot finish (here: a lock the test holds on `blocks`, which only the API reads) is cut off by
    the API's statement timeout and answered 503; it runs on the API's own connections, so meanwhile the writer
    keeps writing share rows. Before, the API borrowed the writer's four connections without a time limit."""
    import psycopg2

    # nbits far above any share here: no share is a block candidate, so the writer never needs `blocks`
    server = start_server("--difficulty", "0.00002", "--notify-interval", "2", "--nbits", "1903a30c")
    worker = f"blocked.{time.time_ns()}"
    locker = psycopg2.connect(schema)
    try:
        with server.miner(worker) as client:
            with locker.cursor() as cur:     # held until the rollback below
                cur.execute("LOCK TABLE blocks IN ACCESS EXCLUSIVE MODE")
            paths = ["/api/blocks", "/api/pool", "/api/workers", f"/api/workers/{worker}", "/api/users/blocked"] * 2
            results, threads = _fetch_all(server, paths)
            report = mine(client, worker, duration=2)
            rows = wait_rows(db, "SELECT count(*) FROM shares WHERE worker = %s AND accepted", worker,
                             expect=[(report.accepted,)])
            assert report.accepted > 0 and rows == [(report.accepted,)]
            for thread in threads:
                thread.join(60)
        assert [status for status, _ in results] == [503] * len(paths), results
        assert max(seconds for _, seconds in results) < 15, results     # about the 2 s timeout, not the lock's life
    finally:
        locker.rollback()
        locker.close()
    assert wait_until(lambda: _status(server, "/api/blocks"), lambda status: status == 200) == 200   # not cached


def _status(server, path: str):
    results, threads = _fetch_all(server, [path])
    threads[0].join(30)
    return results[0][0]
