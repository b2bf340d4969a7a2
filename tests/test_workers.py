"""`run --workers 2`: two processes share the port; miners land on both; one job stream; unique extranonce1."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from gstratum.client import StratumClient

from .conftest import ROOT, free_port, query, wait_until


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
