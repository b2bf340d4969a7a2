"""The writer against a real PostgreSQL: batches, idempotent retries, poison rows, the journal."""
from __future__ import annotations

import time

import psycopg2

from gstratum.storage.db import Database
from gstratum.storage.journal import Journal, read_batches
from gstratum.storage.records import Recorder, text
from gstratum.storage.writer import Writer

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


def test_admin_params_and_targets_with_nul_and_lone_surrogates_are_stored_not_set_aside(schema, tmp_path, db):
    """jsonb refuses the escapes \\u0000 and a lone \\ud800 that ujson writes for them: the recorder cleans the
    document first."""
    import ujson

    writer, recorder = make(schema, tmp_path)
    target = f"adm-{time.time_ns()}\ud800"
    recorder.admin_action("message", target, ujson.dumps({"text": "a\x00b\ud800"}), "127.0.0.1")
    assert writer._flush_queue() is True and writer.rows_rejected == 0
    assert query(db, "SELECT params->>'text' FROM admin_actions WHERE target = %s",
                 text(target)) == [("a\ufffdb\ufffd",)]


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


def test_rollup_equals_aggregate_over_raw_shares_even_after_replays(schema, tmp_path, db):
    writer, recorder = make(schema, tmp_path, batch=7)
    tag = f"roll-{time.time_ns()}"
    conn_id = f"{time.time_ns():032x}"
    for i in range(40):
        recorder.share(conn_id, f"{tag}-{i % 3}", "job", "00000000", "00000000", f"{i:08x}", None, 0.5 + i % 2,
                       1.0, None if i % 5 else 23)
    recorder.share(conn_id, f"{tag}-claimed", "job", None, None, None, None, 1.0, None, 24)
    batch = list(writer._queue)
    assert writer._flush_queue() is True
    writer._write(batch)          # a full replay of the same rows changes nothing
    writer._write(batch[:13])
    raw = query(db, "SELECT worker, count(*) FILTER (WHERE accepted), count(*) FILTER (WHERE NOT accepted), "
                    "coalesce(sum(difficulty) FILTER (WHERE accepted), 0) FROM shares WHERE worker LIKE %s "
                    "AND error_code IS DISTINCT FROM 24 GROUP BY worker ORDER BY worker", f"{tag}-%")
    rolled = query(db, "SELECT worker, sum(accepted), sum(rejected), sum(difficulty_sum) FROM worker_minutes "
                       "WHERE worker LIKE %s GROUP BY worker ORDER BY worker", f"{tag}-%")
    assert [(w, a, r, float(d)) for w, a, r, d in raw] == [(w, int(a), int(r), float(d)) for w, a, r, d in rolled]
    assert len(raw) == 3
    assert query(db, "SELECT count(*) FROM worker_minutes WHERE worker = %s", f"{tag}-claimed") == [(0,)]


def test_a_systematic_error_keeps_rows_queued_not_set_aside(schema, tmp_path, db):
    """Only rows the database refuses for their content are set aside; an error about the statement itself
    (here a missing table) leaves every row queued for a retry."""
    from gstratum.storage.records import TABLES, Table

    broken = dict(TABLES)
    spec = TABLES["authorizations"]
    broken["authorizations"] = Table("no_such_table", spec.columns, spec.template)
    writer, recorder = make(schema, tmp_path)
    writer.tables = broken
    recorder.authorized(f"{time.time_ns():032x}", "kept", "127.0.0.1", True)
    assert writer._flush_queue() is False
    assert writer.pending == 1 and writer.rows_rejected == 0
    writer.tables = TABLES
    assert writer._flush_queue() is True and writer.pending == 0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60)
@given(names=st.lists(st.one_of(st.text(st.characters(exclude_categories=()), max_size=40),   # lone surrogates too
                                st.sampled_from(['"', "\\", "{}", "NULL", ",", " a ", "\\\"", "'", "%s", "\u2603", "",
                                                 "\ud800", "x\udfffy"])),
                      min_size=1, max_size=8))
def test_array_literals_round_trip_any_client_text(schema, tmp_path_factory, names):
    """The writer builds PostgreSQL array literals itself (records.column_arrays): whatever a miner calls itself
    must come back byte for byte (NUL and lone surrogates become U+FFFD: text cannot hold them), and none is set
    aside."""
    writer, recorder = make(schema, tmp_path_factory.mktemp("arrays"))
    conn_id = f"{time.time_ns():032x}"
    for name in names:
        # 24 (unauthorized): no rollup row, so these names stay out of the dashboard's worker list
        recorder.share(conn_id, name, name, "00000000", "00000000", "00000000", None, 0.5, None, 24)
    assert writer._flush_queue() is True
    with psycopg2.connect(schema) as conn:
        stored = query(conn, "SELECT worker, job_id FROM shares WHERE connection_id = %s", conn_id)
    conn.close()
    expected = sorted((text(n),) * 2 for n in names)
    assert sorted(stored) == expected and writer.rows_rejected == 0
