"""The HTTP side port (gevent.pywsgi, in the same hub as the Stratum server): Prometheus /metrics, the JSON stats
API, the dashboard at /, and token-protected admin actions.

The API reads the `worker_minutes` rollup and small tables only, never the raw shares; live numbers (miners online,
current difficulty, recent jobs) come from process snapshots — this process's own, or with --workers every
worker's, summed by the supervisor that serves this port.

A dashboard must never cost the pool its writes: the API reads on its own small connection pool (`api_database`),
never the writer's, every read transaction is cut off by `statement_timeout` (an HTTP 503 then), and the answers of
the read endpoints are cached per path for a few seconds, so any number of open dashboards costs one computation
per path and period.
"""
from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote

import gevent.event
import psycopg2
import ujson
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gstratum.config import Config
from gstratum.mining.address import normalize_address
from gstratum.storage import rollup
from gstratum.storage.db import STATEMENT_CANCELLED, Database, PoolBusy
from gstratum.storage.records import user_of
from gstratum.ops import ckpool
from gstratum.ops.admin import ACTIONS as ADMIN_ACTION_NAMES
from gstratum.ops.metrics import PoolCollector
from gstratum.errors import first_line

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024
API_STATEMENT_TIMEOUT = 2.0   # seconds a read may take (and wait for one of the API's connections); then 503
API_POOL_SIZE = 2
API_CACHE_SECONDS = 2.0       # an answer of a read endpoint is served again for this long (the dashboard polls at 3 s)
API_CACHE_PATHS = 512         # distinct paths kept (/api/workers/<name> has as many as there are workers)
CACHED_PREFIXES = ("/api/", "/users/")    # the read endpoints whose answers the cache keeps
HTML, SCRIPT = "text/html; charset=utf-8", "text/javascript; charset=utf-8"
# the dashboard (its pages share common.js; no build step, nothing from a CDN: the pool may run offline)
PAGES = {"/": ("index.html", HTML), "/index.html": ("index.html", HTML), "/miner.html": ("miner.html", HTML),
         "/common.js": ("common.js", SCRIPT)}
USER_PAYOUTS = 20             # a miner's most recent blocks shown by /api/users/<address>


def api_database(url: str) -> Database:
    """The API's own connections: a slow or blocked read can only cost an HTTP 503, never a writer's connection."""
    return Database(url, size=API_POOL_SIZE, application_name="gstratum-api",
                    statement_timeout=API_STATEMENT_TIMEOUT, wait=API_STATEMENT_TIMEOUT)


class ResponseCache:
    """Answers per key (the request path) for `ttl` seconds. A request that finds a computation of its key under way
    waits for that one instead of starting its own, so N concurrent dashboards cost one. At most `size` keys are
    kept, the least recently used dropped first: distinct paths cannot grow it without bound. Failures are not kept
    (they are shared with the requests that waited for them)."""

    def __init__(self, ttl: float = API_CACHE_SECONDS, size: int = API_CACHE_PATHS, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.hits = 0
        self._answers: OrderedDict = OrderedDict()     # key -> (expires at, answer)
        self._pending: dict[str, gevent.event.AsyncResult] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str, compute):
        entry = self._answers.get(key)
        if entry is not None and entry[0] > self.clock():
            self._answers.move_to_end(key)
            self.hits += 1
            return entry[1]
        pending = self._pending.get(key)
        if pending is not None:
            self.hits += 1
            return pending.get()
        pending = self._pending[key] = gevent.event.AsyncResult()
        try:
            answer = compute()
        except BaseException as exc:
            pending.set_exception(exc if isinstance(exc, Exception) else RuntimeError("computation interrupted"))
            raise
        finally:
            del self._pending[key]
        self._answers[key] = (self.clock() + self.ttl, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
        pending.set(answer)
        return answer


class ApiCollector:
    """/metrics: what the API costs the database (its transactions) and how often the cache answered instead."""

    def __init__(self, api: "StatsApi") -> None:
        self.api = api

    def collect(self):
        yield CounterMetricFamily("gstratum_api_db_transactions", "database transactions run by the HTTP API",
                                  value=self.api.db.transactions)
        yield CounterMetricFamily("gstratum_api_cache_hits", "API answers served from the per-path cache",
                                  value=self.api.cache.hits)


class HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StatsApi:
    """WSGI application. `db`: the API's own Database (`api_database`); `snapshots()` -> list of process snapshots;
    `admin(action, worker, params, source)`; `cluster`: the pool (`--cluster`) whose blocks, balances and PPLNS
    split it shows (one database may hold several pools)."""

    def __init__(self, db, snapshots, admin=None, admin_token: str | None = None,
                 cache: ResponseCache | None = None, cluster: str = Config.cluster) -> None:
        self.db = db
        self.snapshots = snapshots
        self.cluster = cluster
        self.admin = admin
        self.admin_token = admin_token
        self.cache = cache if cache is not None else ResponseCache()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PoolCollector(self.snapshots))
        self.registry.register(ApiCollector(self))

    # -- WSGI -----------------------------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method == "GET" and path.startswith(CACHED_PREFIXES):   # one computation per path and period
                status, content_type, body = self.cache.get(path, lambda: self.answer(method, path, environ))
            else:
                status, content_type, body = self.answer(method, path, environ)
        except psycopg2.Error as exc:
            log.warning("stats API: database error: %s", first_line(exc))
            reason = "database too slow" if isinstance(exc, (STATEMENT_CANCELLED, PoolBusy)) else "database unavailable"
            status, content_type, body = "503 Service Unavailable", "application/json", _json({"error": reason})
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    def answer(self, method: str, path: str, environ) -> tuple[str, str, bytes]:
        """(status, content type, body); an HttpError (a 404 for an unknown worker, say) is an answer too."""
        try:
            return self.route(method, path, environ)
        except HttpError as err:
            return err.status, "application/json", _json({"error": err.message})

    def route(self, method: str, path: str, environ) -> tuple[str, str, bytes]:
        if method == "POST" and path.startswith("/api/admin/"):
            return self._admin(path.rsplit("/", 1)[1], environ)
        if method != "GET":
            raise HttpError("405 Method Not Allowed", "method not allowed")
        if path in PAGES:
            name, content_type = PAGES[path]
            page = STATIC / name
            if not page.exists():
                raise HttpError("404 Not Found", "dashboard not installed")
            return "200 OK", content_type, page.read_bytes()
        if path == "/healthz":      # the process is alive and its event loop turns
            return "200 OK", "application/json", _json({"alive": True})
        if path == "/readyz":       # fresh work for miners and a healthy writer (every process, with --workers)
            snaps = self.snapshots()
            reasons = [r for snap in snaps for r in snap.get("not_ready", [])] or ([] if snaps else ["no process"])
            body = _json({"ready": not reasons, "not_ready": reasons})
            return ("200 OK" if not reasons else "503 Service Unavailable"), "application/json", body
        if path.startswith("/api/users/"):
            name = unquote(path[len("/api/users/"):])
            found = self.user(name) if name else None
            if found is None:
                raise HttpError("404 Not Found", "no such user")
            return "200 OK", "application/json", _json(found)
        if path.startswith("/users/"):          # ckpool's user file, for tools written for ckpool
            name = unquote(path[len("/users/"):])
            found = self.ckpool_user(name) if name else None
            if found is None:
                raise HttpError("404 Not Found", "no such user")
            return "200 OK", "application/json", ckpool.encode(found)
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/api/pool":
            return "200 OK", "application/json", _json(self.pool())
        if path == "/api/workers":
            return "200 OK", "application/json", _json({"workers": self.workers()})
        if path.startswith("/api/workers/"):
            name = unquote(path[len("/api/workers/"):])
            found = self.workers(name)
            if not found:
                raise HttpError("404 Not Found", "no such worker")
            worker = found[0]
            worker["history"] = self._history(name)
            return "200 OK", "application/json", _json(worker)
        if path == "/api/blocks":
            return "200 OK", "application/json", _json({"blocks": self.blocks(100)})
        if path.startswith("/api/blocks/"):
            found = self.block(unquote(path[len("/api/blocks/"):]))
            if found is None:
                raise HttpError("404 Not Found", "no such block")
            return "200 OK", "application/json", _json(found)
        if path == "/api/balances":
            return "200 OK", "application/json", _json(self.balances())
        if path == "/api/pplns":
            return "200 OK", "application/json", _json(self.pplns())
        raise HttpError("404 Not Found", "not found")

    # -- data -----------------------------------------------------------------------------------------------------
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def pool(self) -> dict:
        snaps = self.snapshots()
        with self.db.connection() as conn, conn.cursor() as cur:
            hashrate = rollup.pool_hashrates(cur)
        (shares,), = self._query("SELECT coalesce(sum(accepted + rejected), 0) FROM worker_minutes "
                                 "WHERE minute >= date_trunc('minute', now()) - interval '5 minutes'")
        jobs = _merge_jobs(snaps)
        return {"miners_online": sum(s["subscribed"] for s in snaps),
                "workers_online": len({w for s in snaps for w in s["workers"]}),
                "hashrate": hashrate, "shares_per_second": float(shares) / 300.0,
                "current_job": jobs[0] if jobs else None, "recent_jobs": jobs,
                "blocks": self.blocks(10), "hashrate_history": self._history(None),
                "blocks_pending": sum(s.get("blocks_pending", 0) for s in snaps)}

    def _history(self, worker: str | None) -> list[dict]:
        rows = self._query("SELECT extract(epoch FROM minute), sum(difficulty_sum) FROM worker_minutes "
                           "WHERE minute >= now() - interval '60 minutes' AND (%s::text IS NULL OR worker = %s) "
                           "GROUP BY minute ORDER BY minute", (worker, worker))
        return [{"t": float(t), "hashrate": rollup.hashrate(d, 60)} for t, d in rows]

    def _live(self) -> dict[str, dict]:
        """worker -> {"connections", "difficulty"} now, over every process's snapshot."""
        live: dict[str, dict] = {}
        for snap in self.snapshots():
            for worker, info in snap["workers"].items():
                entry = live.setdefault(worker, {"connections": 0, "difficulty": None})
                entry["connections"] += info["connections"]
                entry["difficulty"] = info["difficulty"]
        return live

    def workers(self, name: str | None = None) -> list[dict]:
        live = self._live()
        rows = self._query(rollup.WORKER_TOTALS, (name, name))
        out = {worker: _worker_entry(worker, accepted, rejected, recent, last, live.get(worker))
               for worker, accepted, rejected, recent, last in rows}
        for worker, info in live.items():
            if worker not in out and (name is None or worker == name):
                out[worker] = _worker_entry(worker, 0, 0, 0, None, info)
        self._add_best_shares(out)
        return sorted(out.values(), key=lambda w: w["hashrate"], reverse=True)

    def _add_best_shares(self, entries: dict[str, dict]) -> None:
        best = self.best_shares(list(entries))
        for worker, entry in entries.items():
            entry["best_share"], entry["best_share_since_block"] = best.get(worker, (0.0, 0.0))

    def blocks(self, limit: int) -> list[dict]:
        """The pool's newest blocks, each with its coinbase outputs (`payouts`, null for a block without a PPLNS
        split) and its PPLNS window (null when none was recorded)."""
        rows = self._query(f"SELECT {BLOCK_COLUMNS}, p.outputs, p.n FROM (SELECT {BLOCK_FIELDS} FROM blocks "
                           "WHERE cluster = %s ORDER BY found_at DESC LIMIT %s) AS b LEFT JOIN LATERAL ("
                           "SELECT json_agg(json_build_object('address', address, 'amount', paid, 'fee', fee) "
                           "ORDER BY position) FILTER (WHERE paid > 0) AS outputs, count(*) AS n FROM block_payouts "
                           "WHERE block_payouts.cluster = b.cluster AND block_payouts.block_hash = b.block_hash"
                           ") AS p ON true ORDER BY b.found_at DESC", (self.cluster, limit))
        return [{**_block_entry(row[:-2]), "payouts": (row[-2] or []) if row[-1] else None} for row in rows]

    def block(self, block_hash: str) -> dict | None:
        """One block of the pool with its whole split: every miner of its window (weight, credit, the balance the
        split used, what the coinbase paid, what was carried to the balance: credit - paid) and the fee output
        (nothing carried: the fee is no balance)."""
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE cluster = %s AND block_hash = %s "
                        "ORDER BY found_at LIMIT 1", (self.cluster, block_hash))
            found = cur.fetchone()
            if found is None:
                return None
            cur.execute("SELECT address, fee, weight, credit, balance, paid, position FROM block_payouts "
                        "WHERE cluster = %s AND block_hash = %s ORDER BY position NULLS LAST, credit DESC, address",
                        (self.cluster, block_hash))
            split = cur.fetchall()
        outputs = [{"address": a, "amount": paid, "fee": fee} for a, fee, _, _, _, paid, _ in split if paid > 0]
        return {**_block_entry(found), "payouts": outputs if split else None,
                "split": [{"address": a, "fee": fee, "weight": _decimal_text(weight), "credit": credit,
                           "balance_before": balance, "paid": paid, "carried": 0 if fee else credit - paid,
                           "position": position}
                          for a, fee, weight, credit, balance, paid, position in split]}

    def balances(self) -> list[dict]:
        """What each miner is owed and has not been paid, largest first; a zero balance is left out."""
        rows = self._query("SELECT address, balance FROM balances WHERE cluster = %s AND balance <> 0 "
                           "ORDER BY balance DESC, address", (self.cluster,))
        return [{"address": address, "balance": balance} for address, balance in rows]

    def _split(self, cur) -> dict:
        """The split the pool pays now (pplns_current), or {} when there is none (no PPLNS, or no job yet)."""
        cur.execute("SELECT split FROM pplns_current WHERE cluster = %s", (self.cluster,))
        row = cur.fetchone()
        return row[0] if row is not None and isinstance(row[0], dict) else {}

    def pplns(self) -> dict:
        """The current split: the window, every miner in it or holding a balance (weight, share, credit, due,
        paid) and the coinbase outputs. With no split yet: an empty window and zeros."""
        with self.db.connection() as conn, conn.cursor() as cur:
            split = self._split(cur)
        window = split.get("window") or {}
        return {"job_id": split.get("job_id"), "created_at": _iso(split.get("created_at")),
                "height": split.get("height"), "reward": split.get("reward", 0), "fee": split.get("fee", 0),
                "pool_fee_percent": split.get("pool_fee_percent", "0"),
                "window": {"start": _iso(window.get("start")), "end": _iso(window.get("end")),
                           "total": window.get("total", "0"), "shares": window.get("shares", 0),
                           "target": window.get("target", "0"), "complete": window.get("complete", False)},
                "miners": split.get("miners", []), "outputs": split.get("outputs", [])}

    def best_shares(self, workers: list[str]) -> dict[str, tuple[float, float]]:
        """worker -> (best share ever, best share since the pool's last block found)."""
        rows = self._query(rollup.BEST_SHARES, (workers,))
        return {w: (float(best), float(since)) for w, best, since in rows}

    def _user_workers(self, address: str) -> tuple[list[tuple], dict[str, dict]]:
        """The rollup rows (rollup.USER_WORKERS) and the live connections of the logins of a user."""
        spellings = _spellings(address)
        rows = self._query(rollup.USER_WORKERS, (*spellings, *rollup.user_patterns(spellings)))
        live = {w: info for w, info in self._live().items() if user_of(w) in spellings}
        return rows, live

    def user(self, name: str) -> dict | None:
        """A user (the part of a login before the first dot; in PPLNS and solo mode the address, normalised): its
        workers of the last 24 h or connected, totals, hashrate, best shares, and `pplns`: its weight in the current
        window, what the next block would pay it, its balance and its last payouts. None (a 404) only when nothing
        at all is known of it."""
        address = normalize_address(name)
        rows, live = self._user_workers(address)
        entries = {row[0]: _worker_entry(*row[:5], live.get(row[0])) for row in rows if row[5]}
        for worker, info in live.items():
            entries.setdefault(worker, _worker_entry(worker, 0, 0, 0, None, info))
        self._add_best_shares(entries)
        workers = sorted(entries.values(), key=lambda w: w["hashrate"], reverse=True)
        pplns, known = self._user_pplns(address)
        if not rows and not live and not known:
            return None
        return {"user": address, "workers": workers, "connections": sum(w["connections"] for w in workers),
                "accepted": sum(w["accepted"] for w in workers), "rejected": sum(w["rejected"] for w in workers),
                "hashrate": sum(w["hashrate"] for w in workers),
                "best_share": max((w["best_share"] for w in workers), default=0.0),
                "best_share_since_block": max((w["best_share_since_block"] for w in workers), default=0.0),
                "pplns": pplns}

    def _user_pplns(self, address: str) -> tuple[dict, bool]:
        """(what the user is owed and why, whether PPLNS knows the address at all: in the current split, holding a
        balance row, or in a block's split). Its payouts: its rows of the newest blocks' splits; the pool's payout
        address also has its fee outputs there (fee true, nothing carried: the fee is no balance)."""
        with self.db.connection() as conn, conn.cursor() as cur:
            split = self._split(cur)
            cur.execute("SELECT balance FROM balances WHERE cluster = %s AND address = %s", (self.cluster, address))
            balance = cur.fetchone()
            cur.execute("SELECT p.block_hash, b.height, b.status, b.found_at, p.credit, p.balance, p.paid, "
                        "b.balances_applied, p.fee FROM block_payouts p CROSS JOIN LATERAL (SELECT height, status, "
                        "found_at, balances_applied FROM blocks WHERE blocks.cluster = p.cluster AND "
                        "blocks.block_hash = p.block_hash ORDER BY found_at LIMIT 1) AS b "
                        "WHERE p.cluster = %s AND p.address = %s ORDER BY b.found_at DESC, p.fee LIMIT %s",
                        (self.cluster, address, USER_PAYOUTS))
            payouts = cur.fetchall()
        window = split.get("window") or {}
        miner = next((m for m in split.get("miners", []) if m.get("address") == address), None)
        mine = miner or {}
        return {"window": {"weight": mine.get("weight", "0"), "share": mine.get("share", 0.0),
                           "total": window.get("total", "0"), "start": _iso(window.get("start")),
                           "end": _iso(window.get("end"))},
                "next_block": {"credit": mine.get("credit", 0), "due": mine.get("due", 0), "paid": mine.get("paid", 0)},
                "balance": balance[0] if balance is not None else 0,
                "payouts": [{"block_hash": h, "height": height, "status": status, "found_at": _iso(found),
                             "credit": credit, "balance_before": before, "paid": paid,
                             "carried": 0 if fee else credit - paid, "applied": applied, "fee": fee}
                            for h, height, status, found, credit, before, paid, applied, fee in payouts]}, \
            bool(miner is not None or balance is not None or payouts)

    def ckpool_user(self, name: str) -> dict | None:
        """ckpool's user file for the user (gstratum/ops/ckpool.py: the shape and how each field is filled); None
        (a 404) only when nothing at all is known of it."""
        address = normalize_address(name)
        rows, live = self._user_workers(address)
        names = sorted({row[0] for row in rows} | set(live))
        if not names:
            return None if not self._user_pplns(address)[1] else ckpool.user_document([], 0, None, time.time())
        best = self.best_shares(names)
        (authorised,), = self._query("SELECT extract(epoch FROM min(requested_at)) FROM authorizations "
                                     "WHERE authorized AND worker = ANY(%s)", (names,))
        rollup_rows = {row[0]: row for row in rows}
        stats = []
        for worker in names:     # a login connected but without a share yet counts its connections, nothing else
            _, _, _, _, last, _, ever, *spans = rollup_rows.get(worker, (worker, 0, 0, 0, None, False, 0.0))
            rates = {label: rollup.hashrate(spans[2 * i], float(spans[2 * i + 1]))
                     for i, label in enumerate(rollup.SPAN_WINDOWS) if spans}
            best_ever, since_block = best.get(worker, (0.0, 0.0))
            stats.append(ckpool.WorkerStats(worker, rates, float(last) if last else None, float(ever), since_block,
                                            best_ever))
        connections = sum(info["connections"] for info in live.values())
        return ckpool.user_document(stats, connections, float(authorised) if authorised else None, time.time())

    # -- admin ----------------------------------------------------------------------------------------------------
    def _admin(self, action: str, environ) -> tuple[str, str, bytes]:
        if not self.admin_token or self.admin is None:
            raise HttpError("404 Not Found", "admin endpoints are off (set GSTRATUM_ADMIN_TOKEN)")
        given = environ.get("HTTP_AUTHORIZATION", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            log.warning("admin %s refused: bad token from %s", action[:32], environ.get("REMOTE_ADDR"))
            raise HttpError("401 Unauthorized", "bad or missing admin token")
        if action not in ADMIN_ACTION_NAMES:
            raise HttpError("404 Not Found", f"unknown admin action; use one of {', '.join(ADMIN_ACTION_NAMES)}")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            raise HttpError("413 Payload Too Large", "body too large")
        try:
            body = ujson.loads(environ["wsgi.input"].read(length) or b"{}")
        except ValueError:
            raise HttpError("400 Bad Request", "body must be JSON") from None
        if not isinstance(body, dict):
            raise HttpError("400 Bad Request", "body must be a JSON object")
        worker = body.pop("worker", None)
        if worker is not None and not isinstance(worker, str):
            raise HttpError("400 Bad Request", "worker must be a string")
        if action == "difficulty" and (worker is None or not _positive(body.get("difficulty"))):
            raise HttpError("400 Bad Request", "difficulty needs a worker and a positive difficulty")
        if action == "disconnect" and worker is None:
            raise HttpError("400 Bad Request", "disconnect needs a worker")
        if action == "message" and not isinstance(body.get("text"), str):
            raise HttpError("400 Bad Request", "message needs a text")
        result = self.admin(action, worker, body, environ.get("REMOTE_ADDR", "?"))
        return "200 OK", "application/json", _json({"action": action, "worker": worker, **result})


BLOCK_FIELDS = ("cluster, height, block_hash, worker, username, reward, status, results, found_at, attempts, reason, "
                "window_start, window_end, window_total, window_shares")
BLOCK_COLUMNS = ("height, block_hash, worker, username, reward, status, results, extract(epoch FROM found_at), "
                 "attempts, reason, window_start, window_end, window_total, window_shares")


def _block_entry(row: tuple) -> dict:
    """A blocks row (BLOCK_COLUMNS) for the API; `window` null when the block has none (not a PPLNS block)."""
    h, b, w, u, r, st, res, t, n, why, start, end, total, shares = row
    window = None if end is None else {"start": _iso(start), "end": _iso(end), "total": _decimal_text(total),
                                       "shares": shares}
    return {"height": h, "block_hash": b, "worker": w, "user": u, "reward": r, "status": st, "results": res,
            "found_at": float(t), "attempts": n, "reason": why, "window": window}


def _worker_entry(worker: str, accepted, rejected, recent, last, live: dict | None) -> dict:
    info = live or {"connections": 0, "difficulty": None}
    return {"name": worker, "connections": info["connections"], "accepted": int(accepted), "rejected": int(rejected),
            "difficulty": info["difficulty"], "hashrate": rollup.hashrate(recent, rollup.RECENT_SECONDS),
            "last_share": float(last) if last else None}


def _spellings(address: str) -> list[str]:
    """How a user's logins may spell it: a bech32 address in lower or upper case (both valid, the same address);
    anything else exactly as normalised. Always two, for rollup.USER_WORKERS."""
    upper = address.upper()
    return [address, upper] if upper != address and normalize_address(upper) == address else [address, address]


def _iso(value) -> str | None:
    """ISO 8601 in UTC with microseconds and the offset (2026-12-03T15:04:05.123456+00:00), from a timestamp or an
    ISO text; a text that is not one is passed through rather than fail the whole answer."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _decimal_text(value: Decimal | None) -> str | None:
    """An exact decimal as plain text without trailing zeros ("0.00002", "1500"): never 2E-5, never a float."""
    if value is None:
        return None
    text = format(value, "f")
    return (text.rstrip("0").rstrip(".") if "." in text else text) or "0"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _merge_jobs(snaps: list[dict]) -> list[dict]:
    """The same job seen by several processes: miners reached add up, fan-out is the slowest."""
    merged: dict[str, dict] = {}
    for snap in snaps:
        for job in snap["recent_jobs"]:
            entry = merged.get(job["job_id"])
            if entry is None:
                merged[job["job_id"]] = dict(job)
            else:
                entry["miners_reached"] += job["miners_reached"]
                entry["fanout_ms"] = max(entry["fanout_ms"], job["fanout_ms"])
    return sorted(merged.values(), key=lambda j: j["created_at"], reverse=True)


def _json(obj) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False).encode()


def serve(app, listener) -> WSGIServer:
    """Serve `app` on an already bound listener (gstratum.net.takeover.open_listener)."""
    server = WSGIServer(listener, app, log=None, error_log=log)
    server.start()
    log.info("http listening on %s:%d (/metrics, /api/pool, /api/workers, /)", *listener.getsockname()[:2])
    return server
