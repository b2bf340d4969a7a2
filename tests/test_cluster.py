"""One job stream across processes: a leader by advisory lock, jobs by NOTIFY, failover when the leader dies."""
from __future__ import annotations

import signal
import time

from gstratum.client import StratumClient

from .conftest import new_cluster_name


def job_ids(client: StratumClient, count: int, timeout: float) -> list[str]:
    seen = [m["params"][0] for m in client.state.notifications if m["method"] == "mining.notify"]
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        try:
            message = client.read_message(max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        if message.get("method") == "mining.notify":
            seen.append(message["params"][0])
    return seen


def test_two_processes_share_one_job_stream_and_fail_over(start_server):
    pool = new_cluster_name()
    a = start_server("--notify-interval", "1", cluster=pool)
    b = start_server("--notify-interval", "1", cluster=pool)
    assert "now the job leader" in a.log() and "now the job leader" not in b.log()
    with StratumClient(a.host, a.port) as on_a, StratumClient(b.host, b.port) as on_b:
        on_a.subscribe()
        on_b.subscribe()
        from_a = job_ids(on_a, 4, 10)
        from_b = job_ids(on_b, 4, 10)
        # after the first (which a late joiner takes from the table), both see the same ids in the same order
        common = [j for j in from_a if j in from_b]
        assert len(common) >= 2, (from_a, from_b)
        prefixes = {j[:8] for j in common}
        assert len(prefixes) == 1       # all made by one process: the leader
        # kill the leader outright: b takes the lock and the jobs keep coming within about one interval
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        killed_at = time.monotonic()
        before = len(on_b.state.notifications)
        new_ids = job_ids(on_b, len(from_b) + 3, 10)[len(from_b):]
        assert len(new_ids) >= 3, new_ids
        assert time.monotonic() - killed_at < 8
        assert "now the job leader" in b.log()
        assert {j[:8] for j in new_ids[-2:]} != prefixes   # b's own jobs now
        assert len(on_b.state.notifications) > before


def test_the_listen_connection_can_use_its_own_url(start_server, db, schema):
    """Behind PgBouncer in transaction mode the write path goes through the pooler while LISTEN and the leader lock
    need PostgreSQL itself: --listen-database-url splits them. Here the LISTEN URL logs in as another role, and
    pg_stat_activity shows which connection went where."""
    from urllib.parse import urlsplit, urlunsplit

    role, password = "gstratum_listen_test", "listen-test-password"
    with db.cursor() as cur:
        cur.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
                    f"CREATE ROLE {role} LOGIN PASSWORD '{password}'; END IF; END $$")
    parts = urlsplit(schema)
    listen_url = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
    server = start_server("--notify-interval", "1", "--listen-database-url", listen_url)
    with server.miner("listen.split") as client:
        assert len(job_ids(client, 3, 10)) >= 3      # jobs flow: the leader's lock and LISTEN work on that URL
    with db.cursor() as cur:
        cur.execute("SELECT application_name, usename FROM pg_stat_activity WHERE application_name LIKE 'gstratum%%'"
                    " AND backend_type = 'client backend'")
        sessions = set(cur.fetchall())
    assert ("gstratum-listen", role) in sessions
    assert ("gstratum", role) not in sessions          # the write path stayed on --database-url
    assert "now the job leader" in server.log()
