"""Vardiff arithmetic with a fake clock, and its effect on a session."""
from __future__ import annotations

import pytest

from gstratum.mining.vardiff import Vardiff, VardiffPolicy

POLICY = VardiffPolicy(target_interval=10, retarget_after=60, tolerance=2, max_step=16, min_difficulty=0.001,
                       max_difficulty=1e6)


def shares(vd: Vardiff, count: int) -> None:
    for _ in range(count):
        vd.note_share()


def test_no_retarget_before_the_interval():
    vd = Vardiff(POLICY, now=0)
    shares(vd, 600)
    assert vd.proposal(1.0, now=59) is None


def test_too_many_shares_raise_difficulty():
    vd = Vardiff(POLICY, now=0)
    shares(vd, 60)          # 1 share/s, 10x the wanted rate
    assert vd.proposal(1.0, now=60) == pytest.approx(10.0)


def test_too_few_shares_lower_difficulty_bounded_by_max_step():
    vd = Vardiff(POLICY, now=0)
    assert vd.proposal(64.0, now=600) == pytest.approx(4.0)   # silence: at most a 16x step down


def test_within_tolerance_nothing_changes_and_window_restarts():
    vd = Vardiff(POLICY, now=0)
    shares(vd, 9)           # 9 of 6 wanted: within 2x
    assert vd.proposal(5.0, now=60) is None
    assert vd.shares == 0 and vd.since == 60


def test_bounds():
    vd = Vardiff(POLICY, now=0)
    shares(vd, 100_000)
    assert vd.proposal(1e6, now=60) is None      # already at max
    vd = Vardiff(POLICY, now=0)
    assert vd.proposal(0.001, now=1000) is None  # already at min


def test_disabled_policy_never_proposes():
    vd = Vardiff(VardiffPolicy(enabled=False), now=0)
    shares(vd, 1000)
    assert vd.proposal(1.0, now=1e6) is None


def test_due_cutoff_marks_who_the_broadcast_must_check():
    policy = VardiffPolicy(retarget_after=60.0)
    assert policy.due_cutoff(1000.0) == 940.0
    assert VardiffPolicy(enabled=False).due_cutoff(1000.0) == float("-inf")   # never due: every miner the fast path


def test_difficulty_is_not_lowered_again_when_the_share_rate_does_not_respond():
    """A proxy that clamps every difficulty below 1 up to 1 sends the same few shares whatever we set: after one
    decrease that changed nothing, vardiff stops lowering (it used to walk such a proxy down to 1e-10)."""
    from gstratum.mining.vardiff import Vardiff, VardiffPolicy

    policy = VardiffPolicy(target_interval=10, retarget_after=60, min_difficulty=1e-10)
    vardiff = Vardiff(policy, 0.0)
    difficulty, now = 1.0, 0.0
    for _ in range(10):            # one share a minute, whatever the difficulty: 6x too few
        vardiff.note_share()
        now += 60
        proposal = vardiff.proposal(difficulty, now)
        if proposal is not None:
            difficulty = proposal
    assert abs(difficulty - 1 / 6) < 1e-12, difficulty      # one decrease (6x too few shares), then none
    assert vardiff.unresponsive
    # an honest miner that follows the decrease keeps being steered down
    honest, difficulty, now, rate = Vardiff(policy, 0.0), 1.0, 0.0, 1 / 60
    for _ in range(4):
        for _ in range(max(1, round(rate * 60))):
            honest.note_share()
        now += 60
        proposal = honest.proposal(difficulty, now)
        if proposal is not None:
            rate *= difficulty / proposal            # its share rate follows the difficulty
            difficulty = proposal
    assert difficulty < 1.0 / 5 and not honest.unresponsive
