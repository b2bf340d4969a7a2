"""One share, one credit (issue 17, item 1), on the sans-IO core: a share repeated by a resumed session, under
another job id with the same coinbase, or under a retarget's alias is a duplicate (22), recorded as rejected; the
ledger is bounded by live work. (Across real connections, processes and a SIGHUP: test_duplicates_live.py.)"""
from __future__ import annotations

import dataclasses
import time

from gstratum.mining.ledger import ShareLedger
from gstratum.protocol.session import Subscription
from gstratum.protocol.notify import notify_params

from .sessions import Harness
from .test_submit_paths import NOW, Pair


def accepted_rows(pair: Pair) -> list[tuple]:
    return [r for r in pair.share_rows() if r[10]]


def test_a_share_repeated_after_a_resume_on_this_process_is_a_duplicate():
    first = Pair()
    first.subscribe_and_authorize()
    job = first.job()
    nonce, ntime = first.share(job, 1e-6)
    assert first.code("w", job[0], "00000001", ntime, nonce) is None
    session_id = first.session.session_id
    extranonce1 = first.session.extranonce1
    # the miner reconnects and resumes: a new Session (a new connection) with the same extranonce1
    again = Pair(harness=first.harness, connection_id="0" * 31 + "2")
    again.harness.subscriptions.resolve = lambda request, session: Subscription(session_id, extranonce1, True)
    result = again.send("mining.subscribe", ["pair/1", session_id])["result"]
    assert result[1] == extranonce1
    again.extranonce1 = bytes.fromhex(extranonce1)
    assert again.send("mining.authorize", ["w", "x"])["result"] is True
    for _ in range(3):                      # one share gave 4 accepted rows after 3 reconnects before the fix
        assert again.code("w", job[0], "00000001", ntime, nonce) == 22
    rows = first.share_rows()
    assert [r[11] for r in rows] == [None, 22, 22, 22] and len(accepted_rows(first)) == 1


def test_the_same_work_under_another_job_id_is_a_duplicate():
    """A template refreshed without new transactions gives a job with a new id and the same coinbase: the same
    header, the same work. Before: a duplicate filter per job id credited it once per job."""
    pair = Pair()
    pair.subscribe_and_authorize()
    job = pair.job()
    nonce, ntime = pair.share(job, 1e-6)
    assert pair.code("w", job[0], "00000001", ntime, nonce) is None
    twin = dataclasses.replace(pair.book.current, job_id=pair.book.current.job_id + "b", clean_jobs=False,
                               encoded={}, _template=None, _variants={})
    pair.book.add(twin)
    pair.notifications += [{"method": "mining.notify", "params": notify_params(twin)}]
    assert pair.code("w", twin.job_id, "00000001", ntime, nonce) == 22
    assert len(accepted_rows(pair)) == 1


def test_a_retarget_alias_does_not_credit_the_same_work_twice():
    pair = Pair(difficulty=1e-7)
    pair.subscribe_and_authorize()
    job = pair.job()
    nonce, ntime = pair.share(job, 1e-5)            # meets the old difficulty and the new one
    assert pair.code("w", job[0], "00000001", ntime, nonce) is None
    pair.send("mining.suggest_difficulty", [1e-5])
    resent = pair.job()
    assert resent[0] != job[0]
    assert pair.code("w", resent[0], "00000001", ntime, nonce) == 22


def test_two_miners_never_collide_and_a_new_block_frees_the_ledger():
    harness = Harness(difficulty=1e-6, clock=lambda: NOW)
    a = Pair(harness=harness, connection_id="a" * 32)
    b = Pair(harness=harness, connection_id="b" * 32)
    a.subscribe_and_authorize()
    b.subscribe_and_authorize()
    assert a.extranonce1 != b.extranonce1
    job = a.job()
    for pair in (a, b):                              # the same extranonce2 and ntime: different headers
        nonce, ntime = pair.share(job, 1e-6)
        assert pair.code("w", job[0], "00000001", ntime, nonce) is None
    assert len(harness.ledger) == 2
    a.deliver(clean=True)
    new = a.job()
    nonce, ntime = a.share(new, 1e-6)
    assert a.code("w", new[0], "00000001", ntime, nonce) is None
    assert len(harness.ledger) == 1                  # the old block's shares went with it


def test_the_ledger_hands_over_only_live_work():
    live = {"aa" * 32}
    ledger = ShareLedger(lambda: live)
    en1 = bytes.fromhex("0000000000000007")
    assert ledger.claim("aa" * 32, en1, 0x1234) and not ledger.claim("aa" * 32, en1, 0x1234)
    handed = ledger.accepted_of(en1)
    assert handed == {"aa" * 32: ["0000000000001234"]}
    other = ShareLedger(lambda: live)
    assert other.inherit(en1, {**handed, "bb" * 32: ["0000000000000001"]}) == 1     # a dead block's entry dropped
    assert other.seen("aa" * 32, en1, 0x1234) and not other.seen("aa" * 32, bytes(8), 0x1234)


# -- version rolling on a template that signals inside the mask (issue 17, item 8) --------------------------------

SIGNALLING = 0x30000000      # a real Core v31 regtest past height 144: a deployment on bit 28, inside 1fffe000


def signalling_pair() -> tuple[Pair, list]:
    pair = Pair()
    pair.send("mining.configure", [["version-rolling"], {"version-rolling.mask": "1fffe000"}])
    pair.subscribe_and_authorize()
    job = dataclasses.replace(pair.book.current, job_id="sig1", version=f"{SIGNALLING:08x}", clean_jobs=False,
                              encoded={}, _template=None, _variants={})
    pair.book.add(job)
    return pair, notify_params(job)


def test_firmware_that_sends_the_bits_it_changed_is_judged_on_the_header_it_hashed():
    """The Bitaxe's ESP-Miner submits rolled XOR job version: bit 28 arrives cleared. Before the fix every such
    share missed (0 accepted of 10)."""
    pair, job = signalling_pair()
    accepted = 0
    for en2 in range(1, 11):
        rolled = SIGNALLING | (en2 << 13)                  # the ASIC rolls bits 13.. and keeps bit 28
        nonce, ntime = pair.share(job, 1e-6, extranonce2=en2.to_bytes(4, "big"), version=rolled)
        delta = rolled ^ SIGNALLING
        assert delta & (1 << 28) == 0
        accepted += pair.code("w", "sig1", f"{en2:08x}", ntime, nonce, f"{delta:08x}") is None
    assert accepted == 10


def test_firmware_that_sends_all_masked_bits_is_judged_on_the_header_it_hashed():
    pair, job = signalling_pair()
    rolled = SIGNALLING | (5 << 13)
    nonce, ntime = pair.share(job, 1e-6, version=rolled)
    assert pair.code("w", "sig1", "00000001", ntime, nonce, f"{rolled & 0x1FFFE000:08x}") is None
    # and the same work in the other convention is the same header: a duplicate, not a second credit
    assert pair.code("w", "sig1", "00000001", ntime, nonce, f"{rolled ^ SIGNALLING:08x}") == 22


def test_a_block_from_a_delta_miner_keeps_the_templates_signalling_bit():
    pair = Pair(nbits=0x207FFFFF)
    pair.send("mining.configure", [["version-rolling"], {"version-rolling.mask": "1fffe000"}])
    pair.subscribe_and_authorize()
    job = dataclasses.replace(pair.book.current, job_id="sig2", version=f"{SIGNALLING:08x}", clean_jobs=False,
                              encoded={}, _template=None, _variants={})
    pair.book.add(job)
    rolled = SIGNALLING | (3 << 13)
    nonce, ntime = pair.share(notify_params(job), 1e-6, version=rolled)
    assert pair.code("w", "sig2", "00000001", ntime, nonce, f"{rolled ^ SIGNALLING:08x}") is None
    (found,) = pair.blocks
    assert int.from_bytes(found.header[:4], "little") == rolled and rolled & (1 << 28)


def test_a_full_version_with_the_jobs_outer_bits_is_accepted_and_others_refused():
    pair, job = signalling_pair()
    rolled = SIGNALLING | (9 << 13)
    nonce, ntime = pair.share(job, 1e-6, version=rolled)
    assert pair.code("w", "sig1", "00000001", ntime, nonce, f"{rolled:08x}") is None
    assert pair.code("w", "sig1", "00000002", ntime, nonce, "e0000000") == 20     # outer bits not the job's


# -- bounded per-connection state (issue 17, item 4) ---------------------------------------------------------------

def test_suggest_difficulty_in_a_loop_keeps_a_bounded_alias_table_and_stays_cheap():
    from gstratum.mining.difficulty import MAX_ALIASES

    pair = Pair(difficulty=1e-6)
    pair.send("mining.subscribe", ["flood/1"])      # subscribed, never authorized
    started = time.process_time()
    for i in range(20_000):
        pair.send("mining.suggest_difficulty", [1e-6 * (1 + i % 2)])
    spent = time.process_time() - started
    assert len(pair.session.channel.schedule._aliases) <= MAX_ALIASES
    assert spent < 20.0     # was quadratic: each alias rebuilt the whole table (50,000 took minutes)
    assert pair.share_rows() == []


def test_the_same_difficulty_suggested_again_resends_nothing():
    pair = Pair(difficulty=1e-6)
    pair.subscribe_and_authorize()
    before = len(pair.notifications)
    pair.send("mining.suggest_difficulty", [1e-6])
    assert len(pair.notifications) == before


def test_worker_names_per_connection_are_capped_and_a_repeat_adds_no_row():
    from gstratum.protocol.session import MAX_WORKERS_PER_CONNECTION

    pair = Pair()
    pair.send("mining.subscribe", ["proxy/1"])
    for i in range(MAX_WORKERS_PER_CONNECTION):
        assert pair.send("mining.authorize", [f"farm.{i}", "x"])["result"] is True
    over = pair.send("mining.authorize", ["farm.one-more", "x"])
    assert over["error"][0] == 24 and "Too many workers" in over["error"][1]
    assert pair.send("mining.authorize", ["farm.0", "x"])["result"] is True     # a name it holds: still fine
    rows = [r for t, r in pair.rows if t == "authorizations"]
    assert len(rows) == MAX_WORKERS_PER_CONNECTION
    assert len(pair.session.workers) == MAX_WORKERS_PER_CONNECTION


def test_shares_from_a_connection_that_never_authorized_are_counted_not_stored():
    pair = Pair()
    pair.send("mining.subscribe", ["junk/1"])
    job = pair.job()
    for i in range(500):
        assert pair.code("nobody", job[0], f"{i:08x}", job[7], "00000000") == 24
    assert pair.share_rows() == [] and pair.metrics.shares == {"unauthorized": 500}
