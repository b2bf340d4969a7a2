"""The writer against a real PostgreSQL: batches, idempotent retries, poison rows, the journal."""
from __future__ import annotations

import time

from gstratum.db import Database
from gstratum.journal import Journal, read_batches
from gstratum.records import Recorder
from gstratum.writer import Writer

from .conftest import query


def make(schema, tmp_path, **kwargs):
    db = Database(schema)
    journal = Journal(tmp_path / "journal", f"test-{time.time_ns()}")
    journal.open()
    writer = Writer(db, journal=journal, **kwargs)
    return writer, Recorder(writer.put, "writer-test")


def test_poison_row_is_set_aside_and_the_rest_written(schema, tmp_path, db):
    writer, recorder = make(schema, tmp_path, batch=100)
    tag = f"poison-{time.time_ns()}"
    for i in range(10):
        recorder.authorized("00000000000000000000000000000001", f"{tag}-{i}", "127.0.0.1", True)
    # a row the database refuses for what it is: extranonce1 must be 16 lowercase hex (CHECK constraint)
    recorder.subscribed("00000000000000000000000000000001", tag, "d" + tag, "NOT-HEX", 4, None, None, False)
    for i in range(10, 20):
        recorder.authorized("00000000000000000000000000000001", f"{tag}-{i}", "127.0.0.1", True)
    assert writer._flush_queue() is True
    assert query(db, "SELECT count(*) FROM authorizations WHERE worker LIKE %s", f"{tag}-%") == [(20,)]
    assert writer.rows_rejected == 1
    (table, row), = [b for batch in read_batches(writer.journal.rejected_path, 10) for b in batch]
    assert table == "subscriptions" and row[4] == "NOT-HEX"


def test_retried_batch_does_not_duplicate(schema, tmp_path, db):
    writer, recorder = make(schema, tmp_path)
    tag = f"dup-{time.time_ns()}"
    recorder.authorized("00000000000000000000000000000002", tag, "127.0.0.1", True)
    batch = list(writer._queue)
    writer._write(batch)
    writer._write(batch)    # as if the first attempt had reached the database before the connection failed
    assert query(db, "SELECT count(*) FROM authorizations WHERE worker = %s", tag) == [(1,)]


def test_sql_metacharacters_are_stored_verbatim(schema, tmp_path, db):
    writer, recorder = make(schema, tmp_path)
    nasty = "x'); DROP TABLE shares; --"
    conn_id = f"{time.time_ns():032x}"
    recorder.authorized(conn_id, nasty, "127.0.0.1", True)
    recorder.share(conn_id, nasty, "job'--", "00000000", "00000000", "00000000", None, 1.0, None, 21)
    assert writer._flush_queue() is True
    assert query(db, "SELECT worker FROM authorizations WHERE connection_id = %s", conn_id) == [(nasty,)]
    assert query(db, "SELECT worker, job_id FROM shares WHERE connection_id = %s", conn_id) == [(nasty, "job'--")]
    assert query(db, "SELECT to_regclass('shares') IS NOT NULL") == [(True,)]


def test_nul_in_client_text_is_stored_not_fatal(schema, tmp_path, db):
    writer, recorder = make(schema, tmp_path)
    tag = f"nul-{time.time_ns()}"
    recorder.authorized("00000000000000000000000000000004", tag + "\x00end", "127.0.0.1", True)
    assert writer._flush_queue() is True
    assert query(db, "SELECT worker FROM authorizations WHERE worker LIKE %s", tag + "%") == [(tag + "\ufffdend",)]


def test_overflow_spills_to_journal_and_replays(schema, tmp_path, db):
    writer, recorder = make(schema, tmp_path, batch=10, max_queue=10)
    tag = f"spill-{time.time_ns()}"
    for i in range(35):
        recorder.authorized("00000000000000000000000000000005", f"{tag}-{i}", "127.0.0.1", True)
    assert writer.pending == 10 and writer.spilled == 25
    writer.journal.sync()
    assert writer.journal.path.stat().st_size > 0
    assert writer._flush_queue() is True
    writer._replay()
    assert query(db, "SELECT count(*) FROM authorizations WHERE worker LIKE %s", f"{tag}-%") == [(35,)]
    assert writer.rows_replayed == 25 and writer.journal.pending_files() == []
