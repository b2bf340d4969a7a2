"""The HTTP side port (gevent.pywsgi, in the same hub as the Stratum server): Prometheus /metrics, the JSON stats
API, the dashboard at /, and token-protected admin actions.

The API reads the `worker_minutes` rollup and small tables only, never the raw shares; live numbers (miners online,
current difficulty, recent jobs) come from process snapshots — this process's own, or with --workers every
worker's, summed by the supervisor that serves this port.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from urllib.parse import unquote

import psycopg2
import ujson
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gstratum.storage import rollup
from gstratum.ops.admin import ACTIONS as ADMIN_ACTION_NAMES
from gstratum.ops.metrics import PoolCollector
from gstratum.errors import first_line

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024


class HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StatsApi:
    """WSGI application. `snapshots()` -> list of process snapshots; `admin(action, worker, params, source)`."""

    def __init__(self, db, snapshots, admin=None, admin_token: str | None = None) -> None:
        self.db = db
        self.snapshots = snapshots
        self.admin = admin
        self.admin_token = admin_token
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PoolCollector(self.snapshots))

    # -- WSGI -----------------------------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            status, content_type, body = self.route(method, path, environ)
        except HttpError as err:
            status, content_type, body = err.status, "application/json", _json({"error": err.message})
        except psycopg2.Error as exc:
            log.warning("stats API: database error: %s", first_line(exc))
            status, content_type, body = "503 Service Unavailable", "application/json", _json(
                {"error": "database unavailable"})
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

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
