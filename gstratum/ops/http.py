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
from pathlib import Path
from urllib.parse import unquote

import gevent.event
import psycopg2
import ujson
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gstratum.storage import rollup
from gstratum.storage.db import STATEMENT_CANCELLED, Database, PoolBusy
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
    `admin(action, worker, params, source)`."""

    def __init__(self, db, snapshots, admin=None, admin_token: str | None = None,
                 cache: ResponseCache | None = None) -> None:
        self.db = db
        self.snapshots = snapshots
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
            if method == "GET" and path.startswith("/api/"):   # the read endpoints: one computation per path and period
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
        if path in ("/", "/index.html"):
            page = STATIC / "index.html"
            if not page.exists():
                raise HttpError("404 Not Found", "dashboard not installed")
            return "200 OK", "text/html; charset=utf-8", page.read_bytes()
        if path == "/healthz":      # the process is alive and its event loop turns
            return "200 OK", "application/json", _json({"alive": True})
        if path == "/readyz":       # fresh work for miners and a healthy writer (every process, with --workers)
            snaps = self.snapshots()
            reasons = [r for snap in snaps for r in snap.get("not_ready", [])] or ([] if snaps else ["no process"])
            body = _json({"ready": not reasons, "not_ready": reasons})
            return ("200 OK" if not reasons else "503 Service Unavailable"), "application/json", body
        if path.startswith("/api/users/"):
            name = unquote(path[len("/api/users/"):])
            found = self.user(name)
            if found is None:
                raise HttpError("404 Not Found", "no such user")
            return "200 OK", "application/json", _json(found)
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

    def workers(self, name: str | None = None) -> list[dict]:
        live: dict[str, dict] = {}
        for snap in self.snapshots():
            for worker, info in snap["workers"].items():
                entry = live.setdefault(worker, {"connections": 0, "difficulty": None})
                entry["connections"] += info["connections"]
                entry["difficulty"] = info["difficulty"]
        rows = self._query(rollup.WORKER_TOTALS, (name, name))
        out = {}
        for worker, accepted, rejected, recent, last in rows:
            info = live.get(worker, {"connections": 0, "difficulty": None})
            out[worker] = {"name": worker, "connections": info["connections"], "accepted": int(accepted),
                           "rejected": int(rejected), "difficulty": info["difficulty"],
                           "hashrate": rollup.hashrate(recent, rollup.RECENT_SECONDS), "last_share": float(last) if last else None}
        for worker, info in live.items():
            if worker not in out and (name is None or worker == name):
                out[worker] = {"name": worker, "connections": info["connections"], "accepted": 0, "rejected": 0,
                               "difficulty": info["difficulty"], "hashrate": 0.0, "last_share": None}
        best = self.best_shares(list(out))
        for worker, entry in out.items():
            entry["best_share"], entry["best_share_since_block"] = best.get(worker, (0.0, 0.0))
        return sorted(out.values(), key=lambda w: w["hashrate"], reverse=True)

    def blocks(self, limit: int) -> list[dict]:
        rows = self._query("SELECT height, block_hash, worker, username, reward, status, results, "
                           "extract(epoch FROM found_at), attempts, reason FROM blocks "
                           "ORDER BY found_at DESC LIMIT %s", (limit,))
        return [{"height": h, "block_hash": b, "worker": w, "user": u, "reward": r, "status": st, "results": res,
                 "found_at": float(t), "attempts": n, "reason": why}
                for h, b, w, u, r, st, res, t, n, why in rows]

    def best_shares(self, workers: list[str]) -> dict[str, tuple[float, float]]:
        """worker -> (best share ever, best share since the pool's last block found)."""
        rows = self._query(rollup.BEST_SHARES, (workers,))
        return {w: (float(best), float(since)) for w, best, since in rows}

    def user(self, name: str) -> dict | None:
        """A user (the part of a login before the first dot): its workers and totals, hashrate, best shares."""
        workers = [w for w in self.workers() if w["name"] == name or w["name"].startswith(name + ".")]
        if not workers:
            return None
        return {"user": name, "workers": workers, "connections": sum(w["connections"] for w in workers),
                "accepted": sum(w["accepted"] for w in workers), "rejected": sum(w["rejected"] for w in workers),
                "hashrate": sum(w["hashrate"] for w in workers),
                "best_share": max(w["best_share"] for w in workers),
                "best_share_since_block": max(w["best_share_since_block"] for w in workers)}

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
