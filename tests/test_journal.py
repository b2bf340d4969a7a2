"""The spill journal and client text: whatever a row holds and whatever the disk does, appending never raises, the
file only ever holds whole lines, and nothing is lost while the disk is full."""
from __future__ import annotations

import time

import pytest

from gstratum.storage.journal import Journal, read_batches
from gstratum.storage.records import Recorder, json_text, text
from gstratum.storage.writer import Writer

from .conftest import wait_until


@pytest.mark.parametrize("raw, stored", [
    ("plain.rig1", "plain.rig1"),
    ("a\x00b", "a\ufffdb"),
    ("\ud800x", "\ufffdx"),                        # a lone high surrogate (JSON "\ud800x")
    ("x\udfff", "x\ufffd"),                        # a lone low surrogate
    ("\udbff\udc00", "\ufffd\ufffd"),              # a pair never decoded into one character: no UTF-8 form either
    ("caf\u00e9 \u2603 \U0001f600", "caf\u00e9 \u2603 \U0001f600"),   # real characters are kept
    (None, None),
])
def test_text_replaces_what_utf8_and_postgresql_cannot_hold(raw, stored):
    assert text(raw) == stored
    if stored is not None:
        stored.encode("utf-8")


def test_json_text_cleans_escapes_jsonb_refuses():
    cleaned = json_text('{"text": "a\\u0000b\\ud800", "k\\udc00": ["\\ud83d\\ude00"]}')
    assert cleaned == '{"text":"a\ufffdb\ufffd","k\ufffd":["\U0001f600"]}'
    assert json_text("not json") == '"not json"'


def test_every_client_text_field_is_cleaned_by_the_recorder():
    rows = []
    recorder = Recorder(lambda table, row: rows.append((table, row)), "srv", clock=lambda: 1.0)
    bad = "\ud800\x00"
    recorder.subscribed("c", "s", "sd", "0000000000000001", 4, bad, bad, False)
    recorder.authorized("c", bad, "127.0.0.1", True)
    recorder.share("c", bad, bad, "00000000", "00000000", "00000000", None, 1.0, None, 21)
    recorder.connection_closed("c", bad, 3)
    recorder.admin_action("message", bad, '{"text": "\\ud800"}', bad)
    for table, row in rows:
        for value in row:
            if isinstance(value, str):
                value.encode("utf-8")
                assert "\x00" not in value and "\\ud800" not in value, (table, row)


def test_append_never_raises_whatever_the_row_holds(tmp_path):
    journal = Journal(tmp_path, "odd")
    journal.open()
    journal.append("authorizations", ("id1", "c", "\ud800x", "127.0.0.1", True, 1.0))   # not cleaned upstream
    journal.append("shares", ("id2", "c", "w", "j", None, None, None, None, float("inf"), float("nan"), True, None,
                              1.0))
    journal.append("jobs", ("id3", object()))          # cannot be encoded at all: dropped and counted at sync
    assert journal.sync() is True
    rows = [row for batch in read_batches(journal.path, 10) for row in batch]
    assert [table for table, _ in rows] == ["authorizations", "shares"]
    assert rows[0][1][2] == "\ufffdx"
    assert journal.rows_unencodable == 1
    journal.close()


def test_a_full_disk_keeps_rows_buffered_and_the_file_whole_then_writes_them_when_space_returns(tiny_disk):
    disk = tiny_disk("64k")
    journal = Journal(disk.path / "journal", "full")
    journal.open()
    for i in range(10):
        journal.append("authorizations", (f"id{i}", "c", f"w{i}", "127.0.0.1", True, 1.0))
    assert journal.sync() is True
    size = journal.path.stat().st_size
    disk.fill()
    # more than one page: some of it may be written before the disk refuses, and must be cut back
    for i in range(10, 400):
        journal.append("authorizations", (f"id{i}", "c", f"w{i}-" + "x" * 40, "127.0.0.1", True, 1.0))
    assert journal.sync() is False
    assert not journal.healthy and journal.failures == 1 and "space" in journal.last_error.lower()
    assert journal.path.stat().st_size == size and journal.buffered == 390
    assert journal.sync() is False and journal.failures == 1          # no retry before the backoff
    disk.free()
    assert wait_until(journal.retry_due, timeout=5)
    assert journal.sync() is True and journal.healthy
    rows = [row for batch in read_batches(journal.path, 1000) for _, row in batch]
    assert [row[0] for row in rows] == [f"id{i}" for i in range(400)]
    journal.close()


def test_writer_keeps_rows_in_memory_while_the_journal_fails_bounded_and_counted(tiny_disk):
    """No database (a closed port) and a full disk: rows past the queue stay in memory up to max_memory; past it
    they are dropped and counted; once space returns they move to the journal."""
    from gstratum.storage.db import Database

    disk = tiny_disk("64k")
    journal = Journal(disk.path / "journal", "mem")
    journal.open()
    writer = Writer(Database("postgresql://gstratum@127.0.0.1:1/none?connect_timeout=1"), batch=10, max_queue=10,
                    journal=journal, max_memory=30)
    recorder = Recorder(writer.put, "srv")
    disk.fill()
    for i in range(20):
        recorder.authorized("c", f"w{i}", "127.0.0.1", True)
    assert writer.pending == 10 and journal.buffered == 10     # past the queue: spilled
    writer._keep_journal()                                    # the disk refuses: taken back into memory
    assert writer.pending == 20 and journal.buffered == 0 and not journal.healthy
    for i in range(20, 40):
        recorder.authorized("c", f"w{i}", "127.0.0.1", True)
    assert writer.pending == 30 and writer.rows_dropped == 10
    disk.free()
    assert wait_until(journal.retry_due, timeout=5)
    writer._keep_journal()
    writer._keep_journal()
    assert writer.pending == 10 and journal.healthy
    assert sum(len(batch) for batch in read_batches(journal.path, 100)) == 20
    journal.close()


def test_set_aside_on_a_full_disk_returns_false_instead_of_raising(tiny_disk):
    disk = tiny_disk("64k")
    journal = Journal(disk.path / "journal", "aside")
    journal.open()
    disk.fill()
    assert journal.set_aside("authorizations", ("id", "c", "w" * 5000, "127.0.0.1", True, time.time())) is False
    journal.close()
