"""`run --workers N`: a supervisor process and N pre-forked worker processes, each with its own gevent hub.

Every worker binds the Stratum port with SO_REUSEPORT, so the kernel spreads new connections over them; extranonce1
stays unique because all allocate from the same PostgreSQL sequence, and one job stream reaches all of them through
the cluster's LISTEN/NOTIFY. The supervisor starts the embedded PostgreSQL if no URL is given, restarts a worker that
dies, forwards SIGTERM/SIGINT, and on SIGHUP replaces the workers one by one (start the new one, then let the old
one drain its miners with client.reconnect).
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import gevent
import gevent.event
import ujson

from gstratum.config import env_name, secret_environment
from gstratum.greenlets import Loops, spawn_logged, stop_greenlet

log = logging.getLogger(__name__)

WORKER_ENV = "GSTRATUM_WORKER"


def worker_environment(cfg, database_url: str) -> dict[str, str]:
    """The secrets a worker needs, as environment variables: the resolved database URL (the embedded server's
    carries its password) and every other secret setting (see config.secret_environment)."""
    return {**secret_environment(cfg), env_name("database_url"): database_url}


def worker_argv(argv: list[str], secrets: Iterable[str]) -> list[str]:
    """Our own command line for a worker: --workers and --takeover removed, and every flag whose value is one of
    `secrets` (in any spelling argparse accepts: `--flag VALUE`, `--flag=VALUE`, an abbreviation), since a command
    line is world-readable; the worker finds those values in its environment instead (worker_environment)."""
    hidden = {value for value in secrets if value}
    out, skip = [], False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--workers" or (arg.startswith("--") and "=" not in arg and following in hidden):
            skip = True
            continue
        if arg.startswith("--workers=") or arg == "--takeover" or arg in hidden:
            continue
        if arg.startswith("--") and arg.partition("=")[2] in hidden:
            continue
        out.append(arg)
    return out + ["--workers", "1"]


class Supervisor:
    def __init__(self, count: int, argv: list[str], environment: dict[str, str] | None = None) -> None:
        self.count = count
        self.argv = argv
        self.environment = environment or {}   # secrets for the workers: never on their command line
        self.workers: dict[int, subprocess.Popen] = {}
        self.retiring: list[subprocess.Popen] = []   # replaced by a rolling restart, until they exit
        self.stopping = False
        self.restarts = 0

    def _spawn(self, index: int) -> subprocess.Popen:
        env = dict(os.environ, **self.environment, **{WORKER_ENV: str(index)})
        proc = subprocess.Popen([sys.executable, "-m", "gstratum", *self.argv], env=env)
        log.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    def start(self) -> None:
        for index in range(self.count):
            self.workers[index] = self._spawn(index)

    def watch(self) -> None:
        """Restart workers that die while we are not stopping (at most one restart per second per worker)."""
        while not self.stopping:
            gevent.sleep(1.0)
            self.retiring = [proc for proc in self.retiring if proc.poll() is None]
            for index, proc in list(self.workers.items()):
                code = proc.poll()
                if code is not None and not self.stopping:
                    self.restarts += 1
                    log.error("worker %d (pid %d) exited with %s; restarting", index, proc.pid, code)
                    self.workers[index] = self._spawn(index)

    def rolling_restart(self) -> None:
        """SIGHUP: for each worker, start its replacement, then ask the old one to drain (SIGUSR1). A stop that
        comes meanwhile ends the restart and also reaches the workers already replaced (`retiring`): none is left
        running without a supervisor."""
        for index, old in list(self.workers.items()):
            if self.stopping:
                return
            self.retiring.append(old)
            self.workers[index] = self._spawn(index)
            time.sleep(1.0)   # let the new worker bind before the old one stops accepting
            if self.stopping:   # stop() has signalled the old one itself
                return
            old.send_signal(signal.SIGUSR1)
            log.info("worker %d: pid %d replaced by pid %d", index, old.pid, self.workers[index].pid)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        self.stopping = True
        procs = [*self.workers.values(), *self.retiring]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()


def read_snapshots(directory: Path, max_age: float = 15.0) -> list[dict]:
    """The workers' latest snapshots (each rewrites its file every 2 s; stale files are ignored)."""
    snaps = []
    for path in directory.glob("*.json"):
        try:
            snap = ujson.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if time.time() - snap.get("at", 0) <= max_age:
            snaps.append(snap)
    return snaps


def serve_http(cfg, database_url: str):
    """One HTTP side port for all workers: their snapshots summed, admin actions published to all of them."""
    from gstratum.cluster.bus import Bus
    from gstratum.net.takeover import open_listener
    from gstratum.ops import http
    from gstratum.ops.admin import ADMIN_CHANNEL
    from gstratum.storage.db import Database
    from gstratum.storage.records import make_server_id

    db = Database(database_url, size=2)   # admin actions: their row and the NOTIFY
    bus = Bus(cfg.listen_database_url or database_url, db, cfg.cluster, make_server_id())   # publish only
    directory = cfg.runtime_dir / str(cfg.port)

    def admin(action, worker, params, source):
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO admin_actions (id, action, target, params, source, acted_at) "
                        "VALUES (gen_random_uuid(), %s, %s, %s::jsonb, %s, now())",
                        (action, worker, ujson.dumps(params), source))
        return {"published": bus.publish(ADMIN_CHANNEL, {"action": action, "worker": worker, "params": params})}

    api = http.StatsApi(http.api_database(database_url), functools.partial(read_snapshots, directory), admin=admin,
                        admin_token=cfg.admin_token, cluster=cfg.cluster)
    return http.serve(api, open_listener(cfg.http_host, cfg.http_port, share=False))


def supervise(count: int, database_url: str, argv: list[str], cfg) -> int:
    flag_secrets = (database_url, cfg.database_url, cfg.listen_database_url, *cfg.bitcoind)   # secret flags' values
    supervisor = Supervisor(count, worker_argv(argv, flag_secrets), worker_environment(cfg, database_url))
    if cfg.http_port:
        serve_http(cfg, database_url)
    stopped = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    gevent.signal_handler(signal.SIGHUP, lambda: spawn_logged(supervisor.rolling_restart, name="rolling-restart"))
    supervisor.start()
    watcher = Loops().spawn("worker-watch", supervisor.watch)   # restarted if it raises
    stopped.wait()
    log.info("stopping %d workers", len(supervisor.workers))
    watcher.stop()
    supervisor.stop()
    return 0
