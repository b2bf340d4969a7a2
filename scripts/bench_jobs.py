#!/usr/bin/env python3
"""Job delivery delay: from a job's creation (its `created_at` row, written by the leader that made it) to its arrival
at the miners of the leader and of a follower process, over a run at a fixed interval.

    .venv/bin/python scripts/bench_jobs.py --miners 1000 --seconds 60 --interval 1

Starts two gstratum processes in one pool (one cluster name) on the embedded PostgreSQL (or DATABASE_URL), runs the
load tool against each with half the miners, and prints p50/p99/max of the first and the last arrival per job.
Loopback only; stops by itself.
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
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=1000, help="in all, half on each process")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    import psycopg2

    from gstratum.storage.embedded_pg import EmbeddedPostgres

    embedded = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        embedded = EmbeddedPostgres(ROOT / ".gstratum" / "bench-pgdata").start()
        url = embedded.url
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    cluster = f"bench{uuid.uuid4().hex[:8]}"
    servers = []
    try:
        for name in ("leader", "follower"):
            port = free_port()
            log = open(work / f"{name}.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(port),
                                     "--http-port", "0", "--database-url", url, "--cluster", cluster,
                                     "--notify-interval", str(args.interval), "--clean-every", "1000",
                                     "--journal-dir", str(work / f"journal-{name}")], cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while "stratum listening" not in (work / f"{name}.log").read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start:\n{(work / f'{name}.log').read_text()}")
                time.sleep(0.1)
            servers.append((name, port, proc))
        loads = []
        for name, port, proc in servers:
            out = work / f"{name}.json"
            loads.append((name, out, subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--port", str(port), "--miners",
                 str(args.miners // 2), "--procs", "1", "--ramp", "1000", "--duration", str(args.seconds),
                 "--src-ips", "4", "--json", str(out)], stdout=subprocess.DEVNULL)))
        for _, _, load in loads:
            load.wait(args.seconds + 300)
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT job_id, extract(epoch FROM created_at)::float8 FROM jobs WHERE cluster = %s", (cluster,))
            created = dict(cur.fetchall())
        print(f"| process | jobs | miners | first arrival p50 / p99 / max (ms) | last arrival p50 / p99 / max (ms) |")
        print("|---|---|---|---|---|")
        for name, out, _ in loads:
            report = json.loads(out.read_text())
            jobs = [j for j in report["jobs"] if j["job_id"] in created and j["fraction"] >= 0.999]
            first = [(j["first_at"] - created[j["job_id"]]) * 1000 for j in jobs]
            last = [(j["last_at"] - created[j["job_id"]]) * 1000 for j in jobs]
            print(f"| {name} | {len(jobs)} | {report['subscribed']} | {percentile(first, 50):.1f} / "
                  f"{percentile(first, 99):.1f} / {max(first):.1f} | {percentile(last, 50):.1f} / "
                  f"{percentile(last, 99):.1f} / {max(last):.1f} |")
    finally:
        for _, _, proc in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if embedded is not None:
            embedded.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
