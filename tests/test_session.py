"""The sans-IO session: request lines in, reply lines out, rows recorded; no socket, no database."""
from __future__ import annotations

import ujson
from hypothesis import given, settings
from hypothesis import strategies as st

from gstratum.protocol.notify import notify_line

from .sessions import Harness


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


HARNESSES = {}


def make_session(difficulty: float = 1.0, **kwargs):
    harness = Harness(difficulty=difficulty, clock=Clock(), **kwargs)
    session = harness.session("00000000000000000000000000000001", "192.0.2.7")
    HARNESSES[id(session)] = harness
    return session, harness.rows, harness.source


def call(session, method, params, request_id=1):
    line = ujson.dumps({"id": request_id, "method": method, "params": params}).encode()
    return [ujson.loads(out) for out in HARNESSES[id(session)].feed(session, line)]


def test_subscribe_reply_then_difficulty_then_job():
    session, rows, _ = make_session(difficulty=0.0025)
    replies = call(session, "mining.subscribe", ["cpuminer/2.5.1", None])
    assert replies[0]["id"] == 1 and replies[0]["error"] is None
    (sub_d, sub_n), extranonce1, size = replies[0]["result"]
    assert sub_d[0] == "mining.set_difficulty" and sub_n[0] == "mining.notify" and sub_d[1] != sub_n[1]
    assert extranonce1 == "0000000000000001" and size == 4
    assert replies[1] == {"id": None, "method": "mining.set_difficulty", "params": [0.0025]}
    assert replies[2]["method"] == "mining.notify" and replies[2]["params"][8] is True
    assert [t for t, _ in rows] == ["subscriptions"]
    assert rows[0][1][4] == extranonce1 and rows[0][1][6] == "cpuminer/2.5.1"


def test_second_subscribe_is_refused():
    session, _, _ = make_session()
    call(session, "mining.subscribe", [])
    reply = call(session, "mining.subscribe", [], request_id=2)[0]
    assert reply["error"][0] == 20 and reply["id"] == 2


def test_authorize_records_without_password():
    session, rows, _ = make_session()
    assert call(session, "mining.authorize", ["w.1", "pa55word"])[0]["result"] is True
    table, row = rows[-1]
    assert table == "authorizations" and "w.1" in row and "pa55word" not in row


def test_unknown_method_and_request_from_miner_side():
    session, _, _ = make_session()
    assert call(session, "mining.bogus", [])[0]["error"][0] == 20
    # a miner's reply to our client.get_version needs no answer
    assert session.receive_line(b'{"id": 5, "result": "bmminer/2.0", "error": null}').send == []


def test_new_jobs_reach_subscribed_session_with_shared_line():
    session, _, source = make_session()
    call(session, "mining.subscribe", [])
    job = source.next_job(clean_jobs=False, previous=session.services.jobs.current)
    session.services.jobs.add(job)
    assert session.broadcast_lines(job) == [notify_line(job)]
    assert session.broadcast_lines(job)[0] is notify_line(job)  # encoded once, shared


methods = st.sampled_from(["mining.subscribe", "mining.authorize", "mining.submit", "mining.configure",
                           "mining.suggest_difficulty", "mining.suggest_target", "mining.extranonce.subscribe",
                           "client.get_version", "mining.get_transactions", "nope"])
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20) | \
    st.sampled_from(["00000000", "ffffffff", "1fffe000", "0", "zz"])
params = st.lists(scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=30), scalars,
                                                                             max_size=3), max_size=7)


@settings(max_examples=400)
@given(st.lists(st.tuples(methods, params), max_size=12))
def test_no_sequence_of_requests_raises(sequence):
    session, _, _ = make_session()
    for method, p in sequence:
        try:
            line = ujson.dumps({"id": 1, "method": method, "params": p}).encode()
        except OverflowError:
            continue
        for out in HARNESSES[id(session)].feed(session, line):
            message = ujson.loads(out)
            assert "Internal error" not in str(message.get("error")), (method, p, message)
