"""`run --workers 2`: two processes share the port; miners land on both; one job stream; unique extranonce1."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from gstratum.client import StratumClient

from .conftest import ROOT, free_port, process_alive, query, wait_until


def test_two_workers_share_the_port(schema, tmp_path, db):
    port = free_port()
    http_port = free_port()
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "2", "--database-url", schema, "--notify-interval", "1",
                                 "--http-port", str(http_port), "--runtime-dir", str(tmp_path / "run"),
                                 "--journal-dir", str(tmp_path / "journal")], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 30
        while log_path.read_text().count("stratum listening") < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        clients = []
        for i in range(40):
            client = StratumClient("127.0.0.1", port, timeout=10, source_address=(f"127.0.0.{1 + i % 20}", 0))
            clients.append(client)
        subs = [c.subscribe() for c in clients]
        assert len({s.extranonce1 for s in subs}) == 40
        # the kernel spread the connections over both workers (each records its own server id)
        servers = wait_until(lambda: query(db, "SELECT count(DISTINCT c.server_id) FROM connections c JOIN "
                                               "subscriptions s ON s.connection_id = c.id WHERE s.extranonce1 = ANY(%s)",
                                           [s.extranonce1 for s in subs]), lambda rows: rows == [(2,)])
        assert servers == [(2,)]
        # every miner gets the same next job, whichever worker it is on
        seen = []
        for c in clients:
            c.wait_for("mining.notify", after=3, timeout=10)
            seen.append({m["params"][0] for m in c.state.notifications if m["method"] == "mining.notify"})
        assert len(set.intersection(*seen)) >= 2, seen
        # one HTTP port for the whole server: the supervisor sums both workers' snapshots
        metrics = wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode(),
            lambda text: "gstratum_processes 2.0" in text and "gstratum_miners_subscribed 40.0" in text)
        assert "gstratum_processes 2.0" in metrics and "gstratum_miners_subscribed 40.0" in metrics
        for c in clients:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log_path.read_text()
    assert text.count("all rows written") == 2 and "Traceback" not in text


def _worker_pids(text: str) -> list[int]:
    import re

    return [int(pid) for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", text)]


def test_workers_get_the_database_password_in_their_environment_never_on_their_command_line(embedded_pg, tmp_path):
    """A command line is world-readable (/proc/PID/cmdline, `ps`); an environment only by the same user. The
    supervisor resolves the embedded PostgreSQL (its URL carries the password) and hands it to every worker, also
    to those a SIGHUP starts, in the environment."""
    import stat
    from pathlib import Path

    from gstratum.storage.embedded_pg import read_secret

    from .conftest import new_cluster_name

    secret = read_secret(embedded_pg.pgdata).encode()
    port, log_path = free_port(), tmp_path / "workers.log"
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "2", "--pgdata", str(embedded_pg.pgdata), "--http-port", "0",
                                 "--cluster", new_cluster_name(), "--runtime-dir", str(tmp_path / "run"),
                                 "--journal-dir", str(tmp_path / "journal")], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env, PYTHONUNBUFFERED="1"))

    def listening(count: int) -> str:
        text = wait_until(log_path.read_text,
                          lambda t: t.count("stratum listening") >= count or proc.poll() is not None, timeout=60)
        assert text.count("stratum listening") >= count, text
        return text

    def assert_hidden(pids: list[int]) -> None:
        for pid in pids:
            assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ")
            assert secret in environ.read_bytes()                 # the channel it took instead
            assert stat.S_IMODE(environ.stat().st_mode) == 0o400   # readable by the same user only

    seen: list[int] = []
    try:
        pids = _worker_pids(listening(2))
        assert len(pids) == 2
        assert_hidden(pids)
        assert secret not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        with StratumClient("127.0.0.1", port, timeout=10) as client:   # the workers reach the database
            assert client.subscribe().extranonce1
            assert client.authorize("hidden.rig") is True
        proc.send_signal(signal.SIGHUP)     # rolling restart: two new workers
        seen = _worker_pids(listening(4))
        pids = seen[2:]
        assert len(pids) == 2
        assert_hidden([pid for pid in pids if Path(f"/proc/{pid}").exists()])
        with StratumClient("127.0.0.1", port, timeout=10) as client:
            assert client.subscribe().extranonce1
    finally:
        proc.send_signal(signal.SIGTERM)    # possibly while the rolling restart still runs
        assert proc.wait(90) == 0
    # no worker outlives its supervisor, not even one the restart had replaced but not yet told to drain
    assert wait_until(lambda: [pid for pid in seen if process_alive(pid)], lambda alive: not alive, timeout=60) == []
    assert "Traceback" not in log_path.read_text()


def test_worker_command_lines_leave_out_every_secret_flag_in_any_spelling():
    from gstratum.net.supervisor import worker_argv

    url, listen, node = "postgresql://u:pw@db/x", "postgresql://u:pw@db:5432/x", "http://rpc:pw@node:8332"
    argv = ["run", "--port", "3333", "--database-url", url, f"--listen-database-url={listen}", "--bitcoind", node,
            "--workers", "2", "--takeover", "--proxy-protocol", "--notify-interval", "5"]
    assert worker_argv(argv, [url, listen, node]) == ["run", "--port", "3333", "--proxy-protocol",
                                                      "--notify-interval", "5", "--workers", "1"]
    # argparse accepts unique abbreviations: the value decides, not the spelling of the flag
    assert worker_argv(["run", "--database", url, "--workers=3"], [url]) == ["run", "--workers", "1"]
