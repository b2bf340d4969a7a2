"""The status model of a found block (gstratum/mining/blockstatus.py): transitions, submitblock answers, and the
decisions taken from the nodes' chains. Pure."""
from __future__ import annotations

import pytest

from gstratum.mining.blockstatus import (
    CONFIRMATIONS, STALE_DEPTH, TRANSITIONS, Answer, BlockStatus, BlockRecord, NodeView, Place, allowed, combine,
    judge_answer, judge_rpc_error, keeper_outcome, pending_outcome, place)

S = BlockStatus
OURS, OTHER, PARENT = "aa" * 32, "bb" * 32, "cc" * 32


def test_every_status_has_its_transitions_and_final_ones_have_none():
    assert set(TRANSITIONS) == set(BlockStatus) | {None}
    for final in (S.CANDIDATE, S.REJECTED, S.STALE, S.CONFIRMED):
        assert not TRANSITIONS[final]
    assert allowed(S.PENDING, S.SUBMITTED) and allowed(S.PENDING, S.PENDING) and allowed(S.PENDING, S.STALE)
    assert allowed(S.SUBMITTED, S.ORPHANED) and allowed(S.ORPHANED, S.SUBMITTED) and allowed(S.ORPHANED, S.CONFIRMED)
    assert not allowed(S.SUBMITTED, S.PENDING)       # an accepted block never goes back to being resubmitted
    assert not allowed(S.REJECTED, S.SUBMITTED) and not allowed(S.CONFIRMED, S.ORPHANED)
    assert not allowed(None, S.CONFIRMED) and not allowed(None, S.ORPHANED)   # only the keeper's, on a known row


@pytest.mark.parametrize("answer, verdict", [
    (None, Answer.ACCEPTED), ("duplicate", Answer.ACCEPTED),
    ("inconclusive", Answer.INCONCLUSIVE), ("duplicate-inconclusive", Answer.INCONCLUSIVE),
    ("prev-blk-not-found", Answer.NO_VERDICT),      # the node is behind: it says nothing about the block
    ("bad-prevblk", Answer.NO_VERDICT), ("time-too-new", Answer.NO_VERDICT),
    ("high-hash", Answer.INVALID), ("bad-txnmrklroot", Answer.INVALID), ("bad-cb-amount", Answer.INVALID),
    ("duplicate-invalid", Answer.INVALID), ("time-too-old", Answer.INVALID),
])
def test_submitblock_answers(answer, verdict):
    assert judge_answer(answer) is verdict


def test_rpc_errors_are_final_only_for_undecodable_bytes():
    assert judge_rpc_error(-22) is Answer.INVALID
    assert judge_rpc_error(-28) is Answer.NO_VERDICT      # warming up
    assert judge_rpc_error(-1) is Answer.NO_VERDICT


def test_one_acceptance_wins_then_a_refusal_then_inconclusive():
    assert combine([Answer.NO_VERDICT, Answer.ACCEPTED, Answer.INVALID]) is Answer.ACCEPTED
    assert combine([Answer.NO_VERDICT, Answer.INVALID, Answer.INCONCLUSIVE]) is Answer.INVALID
    assert combine([Answer.NO_VERDICT, Answer.INCONCLUSIVE]) is Answer.INCONCLUSIVE
    assert combine([Answer.NO_VERDICT, Answer.NO_VERDICT]) is Answer.NO_VERDICT
    assert combine([]) is Answer.NO_VERDICT


def test_nodes_behind_or_without_the_parent_say_nothing():
    views = {"lagging": NodeView(tip_height=99, at_height=None, knows_parent=False),
             "elsewhere": NodeView(tip_height=120, at_height=OTHER, knows_parent=False)}
    assert place(views, OURS, 100).place is Place.UNKNOWN
    assert pending_outcome(place(views, OURS, 100)) is S.PENDING
    assert keeper_outcome(S.SUBMITTED, place(views, OURS, 100)) is None     # a lagging standby orphans nothing


def test_on_chain_counts_the_deepest_view_and_displaced_the_shallowest():
    views = {"a": NodeView(199, OURS, True), "b": NodeView(150, OURS, True), "c": NodeView(90, None, False)}
    placement = place(views, OURS, 100)
    assert placement.place is Place.ON_CHAIN and placement.depth == 100 and placement.speakers == ("a", "b")
    assert keeper_outcome(S.SUBMITTED, placement) is S.CONFIRMED
    views = {"a": NodeView(105, OTHER, True), "b": NodeView(101, OTHER, True)}
    placement = place(views, OURS, 100)
    assert placement.place is Place.DISPLACED and placement.depth == 2 and placement.other == OTHER


def test_disagreeing_nodes_change_nothing():
    views = {"a": NodeView(105, OURS, True), "b": NodeView(105, OTHER, True)}
    assert place(views, OURS, 100).place is Place.SPLIT and place(views, OURS, 100).holders == ("a",)
    assert keeper_outcome(S.SUBMITTED, place(views, OURS, 100)) is None
    assert keeper_outcome(S.ORPHANED, place(views, OURS, 100)) is None
    # a pending block one node has on its active chain was accepted by it: the keeper takes it from there
    assert pending_outcome(place(views, OURS, 100)) is S.SUBMITTED


def test_the_keeper_follows_reorgs_both_ways():
    displaced = place({"a": NodeView(101, OTHER, True)}, OURS, 100)
    back = place({"a": NodeView(101, OURS, True)}, OURS, 100)
    deep = place({"a": NodeView(100 + CONFIRMATIONS - 1, OURS, True)}, OURS, 100)
    assert keeper_outcome(S.SUBMITTED, displaced) is S.ORPHANED
    assert keeper_outcome(S.ORPHANED, displaced) is None
    assert keeper_outcome(S.ORPHANED, back) is S.SUBMITTED
    assert keeper_outcome(S.SUBMITTED, back) is None
    assert keeper_outcome(S.ORPHANED, deep) is S.CONFIRMED


def test_a_pending_block_is_stale_only_when_buried_stale_depth_deep():
    shallow = place({"a": NodeView(100 + STALE_DEPTH - 2, OTHER, True)}, OURS, 100)
    buried = place({"a": NodeView(100 + STALE_DEPTH - 1, OTHER, True)}, OURS, 100)
    assert shallow.depth == STALE_DEPTH - 1 and pending_outcome(shallow) is S.PENDING
    assert buried.depth == STALE_DEPTH and pending_outcome(buried) is S.STALE
    # inconclusive, then connected: on the active chain means accepted
    assert pending_outcome(place({"a": NodeView(100, OURS, True)}, OURS, 100)) is S.SUBMITTED


def test_a_found_block_round_trips_through_its_dict():
    raw = bytes(range(80)) + b"\x01" + bytes(200)
    block = BlockRecord(row_id="0" * 32, block_hash=OURS, height=101, prevhash=PARENT, block=raw, header=raw[:80].hex(),
                       worker="alice.rig", username="alice", connection_id="1" * 32, job_id="j1", reward=5_000_000_000,
                       found_at=1.5, cluster="gstratum")
    assert BlockRecord.from_dict(block.as_dict()) == block
    assert BlockRecord.from_dict(block.as_dict(with_block=False), raw) == block
    with pytest.raises(ValueError):
        BlockRecord.from_dict(block.as_dict(with_block=False), raw[:-1])      # truncated
    with pytest.raises(KeyError):
        BlockRecord.from_dict({"row_id": "x"})
