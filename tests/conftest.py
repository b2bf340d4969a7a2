"""Shared fixtures: a real PostgreSQL (embedded unless DATABASE_URL is set) and real server processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from hypothesis import HealthCheck, settings

# Shared 2-core CI machines are noisy: judge properties by their outcome, never by how long a draw took.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent

# Tests using any of these need a PostgreSQL or real server processes: they are `integration` tests, so the pure
# suite runs alone in seconds with `scripts/test -m "not integration"` (no database at all).
INTEGRATION_FIXTURES = {"database_url", "embedded_pg", "schema", "db", "start_server", "server", "fresh_db",
                        "tiny_disk"}


def pytest_collection_modifyitems(items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def database_url():
    """A PostgreSQL URL for the whole run: DATABASE_URL when given, else an embedded server in .gstratum/."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from gstratum.storage.embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(ROOT / ".gstratum" / "test-pgdata").start()
    yield pg.url
    pg.release()


@pytest.fixture(scope="session")
def embedded_pg(database_url):
    """The embedded server itself, for tests that stop and start the database (skipped with DATABASE_URL)."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the database is given by DATABASE_URL; this test needs to own it (embedded PostgreSQL)")
    from gstratum.storage.embedded_pg import EmbeddedPostgres

    return EmbeddedPostgres(ROOT / ".gstratum" / "test-pgdata").start()


@pytest.fixture(scope="session")
def schema(database_url):
    """Apply the schema once, the same way the server does."""
    from gstratum.storage.db import Database

    from gstratum.storage.retention import Retention

    db = Database(database_url)
    db.apply_schema()
    Retention(db, days=30).ensure_partitions()
    db.close()
    return database_url


@pytest.fixture
def db(schema):
    conn = psycopg2.connect(schema)
    conn.autocommit = True
    yield conn
    conn.close()


def query(conn, sql: str, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def wait_rows(conn, sql: str, *params, expect, timeout: float = 10.0):
    """Poll until the query returns `expect` (rows are written asynchronously by the writer); return the last rows."""
    deadline = time.monotonic() + timeout
    while True:
        rows = query(conn, sql, *params)
        if rows == expect or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def wait_until(probe, until=bool, timeout: float = 10.0, every: float = 0.05):
    """Call `probe` until `until(value)` holds or `timeout` passes; return the last value (the caller asserts on it,
    so a failure shows what was seen). The condition, not a sleep, decides how long a test waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def new_cluster_name() -> str:
    """A pool namespace of its own for a test server, so no test hears another test's job stream or leader."""
    return f"t{uuid.uuid4().hex[:16]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`python -m gstratum run` in a subprocess on a free port, with its log captured to a file."""

    def __init__(self, database_url: str, tmp_path: Path, *args: str, port: int | None = None,
                 env: dict | None = None, cluster: str | None = None) -> None:
        self.port = port or free_port()
        self.http_port = free_port()
        self.host = "127.0.0.1"
        self.log_path = tmp_path / f"server-{self.port}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.journal_dir = tmp_path / "journal"
        cmd = [sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(self.port),
               "--database-url", database_url, "--journal-dir", str(self.journal_dir),
               "--http-port", str(self.http_port), "--cluster", cluster or new_cluster_name(), *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_listening()
        except RuntimeError:
            self.stop(signal.SIGKILL)     # a server that never became ready must not outlive the test
            raise

    def _wait_listening(self, timeout: float = 30.0) -> None:
        """Until /healthz answers: the HTTP side port starts after every Stratum port listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"server did not start listening within {timeout}s:\n{self.log()}")

    def healthy(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def miner(self, worker: str, timeout: float = 10.0):
        """A client connected, subscribed and authorized as `worker` (use it as a context manager)."""
        from gstratum.client import StratumClient

        client = StratumClient(self.host, self.port, timeout=timeout)
        client.subscribe()
        client.authorize(worker)
        return client

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def start_server(schema, tmp_path):
    """Factory: start_server(*flags) -> ServerProcess; all are stopped at the end of the test."""
    servers: list[ServerProcess] = []

    def start(*args: str, port: int | None = None, env: dict | None = None, cluster: str | None = None) -> ServerProcess:
        server = ServerProcess(schema, tmp_path, *args, port=port, env=env, cluster=cluster)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def server(start_server):
    return start_server("--notify-interval", "30")


class TinyDisk:
    """A small tmpfs of our own: a real file system that runs out of space (ENOSPC) when `fill()` says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free byte (writes elsewhere on this disk now fail with ENOSPC)."""
        with open(self.filler, "ab", buffering=0) as handle:
            block = b"\0" * 4096
            try:
                while True:
                    handle.write(block)
            except OSError:
                pass
            try:                       # the last partial page, if any
                while handle.write(b"\0"):
                    pass
            except OSError:
                pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """tiny_disk(size) -> TinyDisk mounted under tmp_path (skipped where mounting is not permitted)."""
    mounts: list[Path] = []

    def mount(size: str = "1m") -> TinyDisk:
        path = tmp_path / f"tinydisk{len(mounts)}"
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounts.append(path)
        return TinyDisk(path)

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
