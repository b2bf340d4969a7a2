"""Operator commands: `stats` (pool and top workers from the database), `admin` (actions through the HTTP API),
`maintain` (share partitions, as the table owner)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import time
import urllib.request

from gstratum.storage import rollup


def add_stats_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", dest="database_url", default=os.environ.get("DATABASE_URL"),
                        help="postgresql:// URL (default DATABASE_URL)")
    parser.add_argument("--top", type=int, default=10, help="workers to list")


def _human(rate: float) -> str:
    for unit in ("H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s"):
        if rate < 1000:
            return f"{rate:.2f} {unit}"
        rate /= 1000
    return f"{rate:.2f} EH/s"


def run_stats(args: argparse.Namespace) -> int:
    import psycopg2

    if not args.database_url:
        print("stats: give --database-url or DATABASE_URL", file=sys.stderr)
        return 2
    with psycopg2.connect(args.database_url) as conn, conn.cursor() as cur:
        rates = rollup.pool_hashrates(cur)
        print("pool hashrate:" + "".join(f"  {label} {_human(rate)}" for label, rate in rates.items()))
        cur.execute("SELECT count(*) FROM connections c WHERE opened_at > now() - interval '1 day' AND NOT EXISTS "
                    "(SELECT 1 FROM disconnections d WHERE d.connection_id = c.id)")
        print(f"connections open (opened in the last day, not closed): {cur.fetchone()[0]}")
        cur.execute("SELECT count(*), max(height) FROM blocks")
        blocks, height = cur.fetchone()
        print(f"blocks found: {blocks}" + (f" (last at height {height})" if blocks else ""))
        cur.execute(f"SELECT * FROM ({rollup.WORKER_TOTALS}) AS w ORDER BY 4 DESC, 2 DESC LIMIT %s",
                    (None, None, args.top))
        rows = cur.fetchall()
    print(f"\n{'worker':<32} {'accepted':>10} {'rejected':>9} {'hashrate (10m)':>16}  last share")
    for worker, accepted, rejected, recent, last in rows:
        printable = worker.encode("unicode_escape").decode()[:32]
        print(f"{printable:<32} {accepted:>10} {rejected:>9} {_human(rollup.hashrate(recent, rollup.RECENT_SECONDS)):>16}  "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(float(last)))}")
    return 0


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http", default="http://127.0.0.1:8080", help="the server's HTTP side port")
    parser.add_argument("--token", default=os.environ.get("GSTRATUM_ADMIN_TOKEN"),
                        help="admin token (default GSTRATUM_ADMIN_TOKEN)")
    sub = parser.add_subparsers(dest="action", required=True)
    reconnect = sub.add_parser("reconnect", help="send client.reconnect")
    reconnect.add_argument("--worker")
    reconnect.add_argument("--host", help="send miners to another host")
    reconnect.add_argument("--port", type=int)
    reconnect.add_argument("--period", type=float, default=0.0, help="spread over this many seconds")
    message = sub.add_parser("message", help="send client.show_message")
    message.add_argument("text")
    message.add_argument("--worker")
    difficulty = sub.add_parser("difficulty", help="set a worker's difficulty")
    difficulty.add_argument("worker")
    difficulty.add_argument("difficulty", type=float)
    disconnect = sub.add_parser("disconnect", help="disconnect a worker")
    disconnect.add_argument("worker")


def run_admin(args: argparse.Namespace) -> int:
    if not args.token:
        print("admin: give --token or GSTRATUM_ADMIN_TOKEN", file=sys.stderr)
        return 2
    body = {k: v for k, v in vars(args).items()
            if k in ("worker", "host", "port", "period", "text", "difficulty") and v is not None}
    request = urllib.request.Request(f"{args.http.rstrip('/')}/api/admin/{args.action}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {args.token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"admin: {exc.code} {exc.read().decode()}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"admin: {exc.reason}", file=sys.stderr)
        return 1


def add_maintain_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", dest="database_url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--retention-days", dest="retention_days", type=int, default=30)


def run_maintain(args: argparse.Namespace) -> int:
    from gstratum.storage.db import Database
    from gstratum.storage.retention import Retention

    if not args.database_url:
        print("maintain: give --database-url or DATABASE_URL", file=sys.stderr)
        return 2
    db = Database(args.database_url)
    db.apply_schema()
    created, dropped = Retention(db, args.retention_days).run_once()
    print(f"created {len(created)} partitions, dropped {len(dropped)}: {dropped or '-'}")
    db.close()
    return 0


