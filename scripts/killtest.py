#!/usr/bin/env python3
"""Measure the loss window of a SIGKILL under load: how many acknowledged events are missing from the database
after the server is killed outright, and how old the oldest missing one was at the moment of the kill.

Miners (threads) send mining.authorize in a loop; each `true` reply is an acknowledged event, stamped with the time
it arrived. After the kill, the rows in `authorizations` are compared with the acknowledged set.

    .venv/bin/python scripts/killtest.py --miners 50 --seconds 5            # its own server + embedded PostgreSQL
    .venv/bin/python scripts/killtest.py --database-url postgresql://...     # a given database
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from gstratum.client import StratumClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0, help="load before the kill")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--writer-interval", default="0.05")
    args = parser.parse_args()
    embedded = None
    if not args.database_url:
        from gstratum.storage.embedded_pg import EmbeddedPostgres

        embedded = EmbeddedPostgres(ROOT / ".gstratum" / "killtest-pgdata").start()
        args.database_url = embedded.url
    work = Path(tempfile.mkdtemp(prefix="gstratum-kill-"))
    port = free_port()
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(port),
                               "--http-port", "0", "--database-url", args.database_url,
                               "--journal-dir", str(work / "journal")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, GSTRATUM_WRITER_INTERVAL=args.writer_interval))
    while b"stratum listening" not in (work / "server.log").read_bytes():
        if server.poll() is not None:
            print((work / "server.log").read_text(), file=sys.stderr)
            return 1
        time.sleep(0.05)
    tag = f"kill{time.time_ns()}"
    acked: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def miner(index: int) -> None:
        try:
            client = StratumClient("127.0.0.1", port, timeout=5)
            client.subscribe()
            count = 0
            while not stop.is_set():
                name = f"{tag}-{index}-{count}"
                client.authorize(name)
                with lock:
                    acked[name] = time.time()
                count += 1
        except (OSError, ConnectionError, Exception):  # the kill ends every miner
            return

    threads = [threading.Thread(target=miner, args=(i,), daemon=True) for i in range(args.miners)]
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    killed_at = time.time()
    server.send_signal(signal.SIGKILL)
    server.wait()
    stop.set()
    for t in threads:
        t.join(5)
    with lock:
        acknowledged = {k: v for k, v in acked.items() if v <= killed_at}
    conn = psycopg2.connect(args.database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT worker FROM authorizations WHERE worker LIKE %s", (f"{tag}-%",))
        stored = {row[0] for row in cur.fetchall()}
    conn.close()
    missing = [acknowledged[k] for k in acknowledged if k not in stored]
    rate = len(acknowledged) / args.seconds
    report = {"acknowledged": len(acknowledged), "stored": len(stored & set(acknowledged)), "missing": len(missing),
              "events_per_second": round(rate), "writer_interval_s": float(args.writer_interval),
              "oldest_missing_ms": round((killed_at - min(missing)) * 1000, 1) if missing else 0.0,
              "missing_as_ms_of_events": round(len(missing) / rate * 1000, 1) if rate else 0.0}
    print(json.dumps(report))
    if embedded is not None and embedded.started_here:
        embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
