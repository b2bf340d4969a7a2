"""The server runs as the least-privilege role from etc/postgres/002_app_role.sql."""
from __future__ import annotations

import time
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest

from gstratum.client import StratumClient

from .conftest import query


@pytest.fixture
def app_role_url(schema, db):
    """A login for gstratum_app (the schema files were applied by the owner in the `schema` fixture)."""
    from gstratum.storage.db import SCHEMA_DIR

    with db.cursor() as cur:
        cur.execute((SCHEMA_DIR / "002_app_role.sql").read_text())
        cur.execute("ALTER ROLE gstratum_app LOGIN PASSWORD 'app-secret'")
    parts = urlparse(schema)
    netloc = f"gstratum_app:app-secret@{parts.hostname}:{parts.port}"
    return urlunparse(parts._replace(netloc=netloc))


def test_server_works_as_least_privilege_role(app_role_url, tmp_path, db):
    from .conftest import ServerProcess

    server = ServerProcess(app_role_url, tmp_path, "--difficulty", "0.0001")
    try:
        worker = f"least-{time.time_ns()}"
        with StratumClient(server.host, server.port) as client:
            sub = client.subscribe()
            client.authorize(worker)
        assert "schema present" in server.log()
    finally:
        server.stop()
    assert query(db, "SELECT count(*) FROM authorizations WHERE worker = %s", worker) == [(1,)]
    assert query(db, "SELECT count(*) FROM subscriptions WHERE extranonce1 = %s", sub.extranonce1) == [(1,)]
    # and the role can do nothing more than that
    conn = psycopg2.connect(app_role_url)
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            with conn.cursor() as cur:
                cur.execute("DROP TABLE shares")
        conn.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            with conn.cursor() as cur:
                cur.execute("DELETE FROM shares")
    finally:
        conn.close()
    assert "app-secret" not in server.log()


# -- closed by default: the embedded PostgreSQL asks for its password ---------------------------------------------

def test_the_embedded_postgres_refuses_a_connection_without_its_password(embedded_pg):
    """Every local user could otherwise connect as the superuser (and run programs with COPY ... PROGRAM)."""
    import os
    import stat

    from gstratum.storage.embedded_pg import DB_NAME, DB_USER, secret_path

    for password in (None, "wrong-password"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=embedded_pg.port, user=DB_USER, dbname=DB_NAME,
                             password=password, connect_timeout=5)
    with psycopg2.connect(embedded_pg.url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (DB_USER,)
    conn.close()
    secret = secret_path(embedded_pg.pgdata).stat()
    assert stat.S_IMODE(secret.st_mode) == 0o600 and secret.st_uid == os.geteuid()
    rules = [line.split() for line in (embedded_pg.pgdata / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules


def _trust_folder(pgdata, running: bool):
    """A data folder as an older gstratum left it: initdb --auth=trust, no secret, a table of its own; running
    (started the way that release started it) or stopped."""
    from gstratum.storage.embedded_pg import DB_USER, EmbeddedPostgres

    from .conftest import free_port

    old = EmbeddedPostgres(pgdata.resolve())
    old.pgdata.mkdir(mode=0o700)
    old._prepare_root()
    old._pg("initdb", "--auth=trust", "--encoding=utf8", "-U", DB_USER, "-D", str(old.pgdata))
    old.port = free_port()
    old._pg("pg_ctl", "-w", "-D", str(old.pgdata), "-l", str(old.pgdata / "server.log"), "-o",
            f"-h 127.0.0.1 -p {old.port} -k ''", "start")
    for dbname, sql in (("postgres", "CREATE DATABASE gstratum"), ("gstratum", "CREATE TABLE kept (x int)")):
        conn = psycopg2.connect(host="127.0.0.1", port=old.port, user=DB_USER, dbname=dbname)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.close()
    if not running:
        old.stop()
    return old


def _assert_closed_and_intact(pg) -> None:
    from gstratum.storage.embedded_pg import DB_NAME, DB_USER

    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(host="127.0.0.1", port=pg.port, user=DB_USER, dbname=DB_NAME, connect_timeout=5)
    conn = psycopg2.connect(pg.url, connect_timeout=5)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('kept') IS NOT NULL")
        assert cur.fetchone() == (True,)
    conn.close()


@pytest.fixture
def scratch_pgdata():
    """A data folder path of its own under the worktree's .gstratum, removed afterwards. Not under pytest's tmp_path:
    as root, PostgreSQL runs as `pgserver`, which must traverse the parent folders, and any pytest starting on the
    machine makes /tmp/pytest-of-root private again (0700) while initdb runs."""
    import shutil
    import uuid

    from .conftest import ROOT

    folder = ROOT / ".gstratum" / f"scratch-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    yield folder / "pgdata"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_a_trust_folder_of_an_older_release_is_upgraded_in_place(scratch_pgdata, running):
    """Stopped: the password is set in single-user mode before the server listens. Running (an older process still
    uses it): set over the trusted connection, pg_hba.conf rewritten, reloaded. Either way the data stays, a
    connection without the password is refused from then on, and the next start finds it closed."""
    from gstratum.storage.embedded_pg import EmbeddedPostgres, secret_path

    pgdata = scratch_pgdata
    old = _trust_folder(pgdata, running)
    try:
        pg = EmbeddedPostgres(pgdata).start()
        assert secret_path(pg.pgdata).exists()
        _assert_closed_and_intact(pg)
        pg.release()
        assert not pg.is_running()
        again = EmbeddedPostgres(pgdata).start()
        _assert_closed_and_intact(again)
        again.release()
    finally:
        old.stop("immediate")


def _published_ports(compose: str) -> dict[str, list[str]]:
    """service -> its `ports:` entries, read from the compose file's text (no YAML library in the venv, and no
    Docker engine on these machines: the file is what can be checked)."""
    import re

    services, current, in_ports, ports_indent = {}, None, False, 0
    for line in compose.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        service = re.fullmatch(r"  ([A-Za-z0-9_-]+):", line)
        if service:
            current, in_ports = service.group(1), False
            continue
        if line.strip() == "ports:":
            in_ports, ports_indent = True, indent
            continue
        if in_ports and indent > ports_indent and line.lstrip().startswith("- "):
            entry = line.split("#", 1)[0].strip()[2:].strip().strip("\"'")
            services.setdefault(current, []).append(entry)
        elif indent <= ports_indent:
            in_ports = False
    return services


def test_compose_publishes_only_stratum_beyond_this_host():
    """PostgreSQL (superuser password in the file) and the HTTP side port (metrics, API, admin) are published on
    the host's loopback; Stratum is for miners, so it stays on every interface."""
    from .conftest import ROOT

    compose = (ROOT / "docker-compose.yaml").read_text()
    published = _published_ports(compose)
    assert set(published) == {"postgres", "gstratum"}, published
    entries = [entry for service in published.values() for entry in service]
    for entry in entries:
        parts = entry.split(":")
        assert parts[-1] == "3333" or (len(parts) == 3 and parts[0] == "127.0.0.1"), entry
    assert {entry.split(":")[-1] for entry in entries} == {"5432", "3333", "8080"}
    # the development password stays the default, overridable from the environment, and both services agree
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-luxor}" in compose
    assert "postgresql://luxor:${POSTGRES_PASSWORD:-luxor}@postgres:5432/luxor" in compose
    command = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")][-1]
    assert "--database-url" not in command


def test_blocknotify_reaches_the_embedded_postgres_with_its_password(embedded_pg):
    """`python -m gstratum blocknotify` without a URL finds the embedded server in --pgdata (url_for: the one place
    that builds its URL) and delivers the notice."""
    import os
    import subprocess
    import sys

    from gstratum.cluster.bus import Bus
    from gstratum.node.work import BLOCKNOTIFY_CHANNEL

    from .conftest import ROOT, new_cluster_name, wait_until

    cluster = new_cluster_name()
    listener = psycopg2.connect(embedded_pg.url)
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute(f'LISTEN "{Bus.channel_of(cluster, BLOCKNOTIFY_CHANNEL)}"')
        env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
        result = subprocess.run([sys.executable, "-m", "gstratum", "blocknotify", "00ff", "--pgdata",
                                 str(embedded_pg.pgdata), "--cluster", cluster], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        def heard():
            listener.poll()
            return [note.payload for note in listener.notifies]

        assert wait_until(heard) == ['{"block":"00ff"}']
    finally:
        listener.close()
