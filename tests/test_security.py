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
