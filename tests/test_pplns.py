"""PPLNS accounting (gstratum.mining.pplns): the split satoshi by satoshi on hand-computed examples, the window's
boundary and timestamps, and property tests of conservation over random sequences of accepted and orphaned blocks."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gstratum.mining import pplns
from gstratum.mining.pplns import (DEFAULT_MAX_OUTPUTS, EPOCH, Output, Window, exact_difficulty, exact_percent,
                                   network_difficulty, split, window_target)

T0 = datetime(2026, 9, 1, 12, 0, 0, tzinfo=timezone.utc)
POOL = "bc1qpool"


def at(micros: int) -> datetime:
    return T0 + timedelta(microseconds=micros)


def window_of(shares, target, **kwargs) -> Window:
    """shares: (address, difficulty) oldest first, one microsecond apart from T0 + 1 µs."""
    window = Window(target, **kwargs)
    window.extend((address, difficulty, at(i + 1)) for i, (address, difficulty) in enumerate(shares))
    return window


# --- the README's worked example ---------------------------------------------------------------------------------

def test_readme_worked_example():
    """R = 312,500,000 subsidy + 4,321,987 fees, a 2 % pool fee, four miners in the window (dave's credit is under
    min-output, bob has a 40,000 sat balance), erin with a 25,000 sat balance and no share, max-outputs 3."""
    reward = 312_500_000 + 4_321_987
    window = {"bc1qalice": Decimal(5_200_000), "bc1qbob": Decimal(2_600_000), "bc1qcarol": Decimal(1_199_850),
              "bc1qdave": Decimal(150)}
    balances = {"bc1qbob": 40_000, "bc1qerin": 25_000}
    result = split(reward, "2", window, balances, min_output=10_000, max_outputs=3, payout_address=POOL)

    assert reward == 316_821_987
    assert result.fee == 6_336_439                  # floor(316,821,987 x 2 / 100) = floor(6,336,439.74)
    assert result.distributable == 310_485_548      # D = R - fee
    assert result.window_total == 9_000_000         # W
    assert dict(result.credits) == {
        "bc1qalice": 179_391_649,   # floor(310,485,548 x 5,200,000 / 9,000,000) = floor(179,391,649.07)
        "bc1qbob": 89_695_824,      # floor(89,695,824.53)
        "bc1qcarol": 41_392_898,    # floor(41,392,898.39)
        "bc1qdave": 5_174,          # floor(5,174.76): under min-output
    }
    assert result.distributable - sum(result.credits.values()) == 3      # rounding, kept by the pool
    # dues: alice 179,391,649; bob 89,695,824 + 40,000 = 89,735,824; carol 41,392,898; erin 25,000; dave 5,174.
    # alice, bob, carol are paid in full; erin's due clears min-output but 3 payees are chosen; dave's does not.
    assert list(result.paid.items()) == [("bc1qalice", 179_391_649), ("bc1qbob", 89_735_824),
                                         ("bc1qcarol", 41_392_898)]
    assert result.outputs == (Output("bc1qalice", 179_391_649, False), Output("bc1qbob", 89_735_824, False),
                              Output("bc1qcarol", 41_392_898, False), Output(POOL, 6_301_616, True))
    # the fee output: fee 6,336,439 + rounding 3 + dave's 5,174 carried - bob's 40,000 balance paid out
    assert 6_336_439 + 3 + 5_174 - 40_000 == 6_301_616
    assert sum(output.amount for output in result.outputs) == reward
    assert dict(result.deltas) == {"bc1qalice": 0, "bc1qbob": -40_000, "bc1qcarol": 0, "bc1qdave": 5_174}
    assert result.pool_keeps == 6_336_442 and result.carried == -34_826
    assert result.problems() == []
    # accepted: bob 0, dave 5,174, erin 25,000 (untouched: neither in the window nor paid)


# --- the fee --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("percent, reward, fee", [
    ("1.5", 312_500_000, 4_687_500),
    (Decimal("1.5"), 312_500_000, 4_687_500),
    (1.1, 312_500_000, 3_437_500),          # a float through its shortest repr: 1.1 %, not 1.1000000000000000888 %
    ("0.1", 999, 0),                        # floor(0.999)
    ("33.333", 1_000_000, 333_330),
    ("0", 312_500_000, 0),
    ("100", 312_500_000, 312_500_000),
    (2, 316_821_987, 6_336_439),
])
def test_fee_is_the_floor_of_an_exact_decimal_percentage(percent, reward, fee):
    result = split(reward, percent, {"a": Decimal(1)}, {}, min_output=1, max_outputs=5, payout_address=POOL)
    assert result.fee == fee and result.distributable == reward - fee
    assert result.conserves()


@pytest.mark.parametrize("percent", ["-1", "100.01", "abc", "NaN", "Infinity", True, None])
def test_a_bad_percentage_is_refused(percent):
    with pytest.raises((ValueError, TypeError)):
        exact_percent(percent)


def test_a_full_fee_still_pays_balances():
    """fee 100 %: D = 0, every credit is 0, but balances are still paid from R (the rule's room is R)."""
    result = split(1_000_000, "100", {"a": Decimal(1)}, {"a": 30_000, "b": 20_000}, min_output=10_000,
                   max_outputs=5, payout_address=POOL)
    assert dict(result.credits) == {"a": 0}
    assert dict(result.paid) == {"a": 30_000, "b": 20_000}
    assert result.outputs[-1] == Output(POOL, 950_000, True)
    assert result.conserves()


# --- the split's rule, case by case ---------------------------------------------------------------------------------

def test_an_empty_window_pays_all_of_R_to_the_payout_address_and_no_balance():
    result = split(312_500_000, "2", {}, {"a": 50_000_000}, min_output=10_000, max_outputs=5, payout_address=POOL)
    assert result.outputs == (Output(POOL, 312_500_000, True),)
    assert not result.credits and not result.paid and not result.deltas
    assert result.pool_keeps == 312_500_000 and result.conserves()


def test_a_zero_reward_has_no_output():
    result = split(0, "2", {"a": Decimal(1)}, {"a": 50_000}, min_output=10_000, max_outputs=5, payout_address=POOL)
    assert result.outputs == () and dict(result.deltas) == {"a": 0} and result.conserves()


def test_an_unfilled_window_splits_all_of_D():
    """The window's actual total is the divisor, however far below the target it is."""
    window = window_of([("a", 1), ("b", 3)], target=1_000_000)
    snapshot = window.snapshot(T0)
    assert snapshot.total == 4 and snapshot.complete and snapshot.start == EPOCH
    result = split(1_000_000, "0", snapshot.weights, {}, min_output=1, max_outputs=5, payout_address=POOL)
    assert dict(result.paid) == {"b": 750_000, "a": 250_000}
    assert len(result.outputs) == 2     # nothing left for the payout address


def test_an_overfilled_window_counts_only_the_newest_shares_that_reach_the_target():
    window = window_of([("old", 100), ("a", 4), ("b", 3), ("a", 3)], target=8)
    snapshot = window.snapshot(T0)
    # newest first: a 3 (sum 3 < 8), b 3 (6 < 8), a 4 (10: reaches 8, included), old: not counted
    assert dict(snapshot.weights) == {"a": 7, "b": 3} and snapshot.total == 10 and snapshot.shares == 3
    result = split(1_000_000, "0", snapshot.weights, {}, min_output=1, max_outputs=5, payout_address=POOL)
    assert dict(result.credits) == {"a": 700_000, "b": 300_000}


def test_ties_are_broken_by_address():
    window = {"bc1qzed": Decimal(1), "bc1qamy": Decimal(1), "bc1qbea": Decimal(1)}
    result = split(3_000_000, "0", window, {}, min_output=10_000, max_outputs=2, payout_address=POOL)
    assert list(result.paid) == ["bc1qamy", "bc1qbea"]
    assert result.outputs[-1] == Output(POOL, 1_000_000, True)
    assert dict(result.deltas) == {"bc1qamy": 0, "bc1qbea": 0, "bc1qzed": 1_000_000}


def carry_until_paid(percent: str, blocks: int) -> int | None:
    """Blocks of 500,000 sat with the same window (small earns under 5 sat a block): the block that pays small."""
    balances: dict[str, int] = {}
    window = {"big": Decimal(999_990), "small": Decimal(10)}
    for block in range(1, blocks + 1):
        result = split(500_000, percent, window, balances, min_output=10_000, max_outputs=5, payout_address=POOL)
        assert result.conserves()
        for address, delta in result.deltas.items():
            balances[address] = balances.get(address, 0) + delta
        if "small" in result.paid:
            assert result.paid["small"] >= 10_000 and balances["small"] == 0
            return block
        assert balances["small"] == result.credits["small"] * block
    return None


def test_a_due_below_min_output_is_carried_and_paid_once_it_has_grown():
    # 5 % fee: D = 475,000, small's credit floor(4.75) = 4; big is paid 474,995 first and 25,005 sat of room are
    # left, so small is paid with the block that takes its due to 10,000: 2,500 x 4
    assert carry_until_paid("5", 3_000) == 2_500


def test_a_balance_is_paid_only_from_the_room_larger_dues_leave():
    """The rule pays the largest dues first from room = R. With no fee and every other credit paid, the room left
    after big (5 sat) never reaches min-output: small's balance keeps growing (until its due outgrows big's)."""
    assert carry_until_paid("0", 3_000) is None


def test_the_last_payee_is_paid_in_part_when_room_runs_out():
    """Balances larger than what the coinbase can return: the largest dues are paid, the last one in part."""
    result = split(100_000, "0", {"a": Decimal(1)}, {"b": 60_000, "c": 70_000}, min_output=1_000, max_outputs=5,
                   payout_address=POOL)
    # dues: a 100,000 (all of D), c 70,000, b 60,000; room 100,000 goes to a, nothing is left
    assert dict(result.paid) == {"a": 100_000}
    result = split(100_000, "50", {"a": Decimal(1)}, {"b": 60_000, "c": 70_000}, min_output=1_000, max_outputs=5,
                   payout_address=POOL)
    # D = 50,000: dues c 70,000, b 60,000, a 50,000; c gets 70,000, b the 30,000 left (in part), a nothing
    assert list(result.paid.items()) == [("c", 70_000), ("b", 30_000)]
    assert dict(result.deltas) == {"a": 50_000, "b": -30_000, "c": -70_000}
    assert len(result.outputs) == 2 and result.conserves()      # no fee output: R - paid = 0


def test_a_part_payment_below_min_output_is_skipped():
    result = split(100_000, "0", {"a": Decimal(95)}, {"b": 50_000}, min_output=10_000, max_outputs=5,
                   payout_address=POOL)
    # dues a 100,000 then b 50,000: a takes all the room; b would get 0 (and anything under 10,000 is skipped)
    assert dict(result.paid) == {"a": 100_000} and dict(result.deltas) == {"a": 0}
    result = split(100_000, "10", {"a": Decimal(95)}, {"b": 50_000}, min_output=10_000, max_outputs=5,
                   payout_address=POOL)
    # D = 90,000: a 90,000 paid, room 10,000 >= min-output: b gets 10,000 of its 50,000
    assert dict(result.paid) == {"a": 90_000, "b": 10_000}
    result = split(100_000, "10.001", {"a": Decimal(95)}, {"b": 50_000}, min_output=10_000, max_outputs=5,
                   payout_address=POOL)
    # fee 10,001: a gets 89,999, room 10,001 -> b 10,001 (paid in part, at min-output)
    assert dict(result.paid) == {"a": 89_999, "b": 10_001}
    result = split(100_000, "9.999", {"a": Decimal(95)}, {"b": 50_000}, min_output=10_000, max_outputs=5,
                   payout_address=POOL)
    # fee 9,999: a gets 90,001, room 9,999 < min-output: b is skipped
    assert dict(result.paid) == {"a": 90_001}
    assert result.outputs[-1] == Output(POOL, 9_999, True)


def test_a_balance_is_paid_out_from_the_fee_output():
    """A miner with no share but a balance over min-output is paid: the fee output shrinks below the fee."""
    result = split(1_000_000, "5", {"a": Decimal(1)}, {"gone": 30_000}, min_output=10_000, max_outputs=5,
                   payout_address=POOL)
    assert dict(result.paid) == {"a": 950_000, "gone": 30_000}
    assert result.outputs[-1] == Output(POOL, 20_000, True)     # fee 50,000 - 30,000 paid out
    assert dict(result.deltas) == {"a": 0, "gone": -30_000}


def test_max_outputs_zero_pays_everything_to_the_payout_address_and_carries_every_credit():
    result = split(1_000_000, "0", {"a": Decimal(3), "b": Decimal(1)}, {}, min_output=1, max_outputs=0,
                   payout_address=POOL)
    assert result.outputs == (Output(POOL, 1_000_000, True),)
    assert dict(result.deltas) == {"a": 750_000, "b": 250_000}


def test_a_negative_balance_is_a_debt_repaid_from_credits():
    result = split(1_000_000, "0", {"a": Decimal(1), "b": Decimal(1)}, {"a": -400_000}, min_output=10_000,
                   max_outputs=5, payout_address=POOL)
    assert dict(result.paid) == {"b": 500_000, "a": 100_000}       # a's due: 500,000 - 400,000
    assert dict(result.deltas) == {"a": 400_000, "b": 0} and result.conserves()
    result = split(1_000_000, "0", {"a": Decimal(1), "b": Decimal(1)}, {"a": -600_000}, min_output=10_000,
                   max_outputs=5, payout_address=POOL)
    assert dict(result.paid) == {"b": 500_000} and result.deltas["a"] == 500_000     # -600,000 -> -100,000


@pytest.mark.parametrize("kwargs, error", [
    ({"reward": -1}, ValueError), ({"reward": pplns.MAX_MONEY + 1}, ValueError), ({"reward": 1.0}, TypeError),
    ({"min_output": 0}, ValueError), ({"max_outputs": -1}, ValueError),
    ({"window": {"a": 0.5}}, TypeError), ({"window": {"a": Decimal(0)}}, ValueError),
    ({"window": {"a": Decimal("NaN")}}, ValueError), ({"window": {"": Decimal(1)}}, ValueError),
    ({"balances": {"a": 1.5}}, TypeError), ({"payout_address": ""}, ValueError),
])
def test_split_refuses_bad_arguments(kwargs, error):
    arguments = {"reward": 1_000, "fee_percent": "1", "window": {"a": Decimal(1)}, "balances": {},
                 "min_output": 1, "max_outputs": 5, "payout_address": POOL} | kwargs
    with pytest.raises(error):
        split(**arguments)


# --- the window -----------------------------------------------------------------------------------------------------

def test_25_shares_of_0_002_are_exactly_0_05():
    """In floats, 25 additions of 0.002 make 0.05000000000000003 and 8 of 0.1 make 0.7999999999999999 (a float window
    would take a 9th share); exactly, they are 0.05 and 0.8, and the 25th (8th) share reaches the target."""
    assert sum([0.002] * 25) != 0.05 and sum([0.1] * 8) < 0.8
    window = window_of([("a", 0.002)] * 30, target=Decimal("0.05"))
    assert window.total == Decimal("0.05") and window.shares == 25
    window = window_of([("a", 0.1)] * 10, target=Decimal("0.8"))
    assert window.total == Decimal("0.8") and window.shares == 8
    assert exact_difficulty(0.002) == Decimal("0.002") and exact_difficulty(1e-20) == Decimal("1E-20")


@pytest.mark.parametrize("target, counted, total", [
    (Decimal("0.006"), 3, Decimal("0.006")),        # the 3rd newest share reaches 0.006 exactly: it is the last in
    (Decimal("0.0059999"), 3, Decimal("0.006")),     # just under: the 3rd share is still the one that reaches it
    (Decimal("0.0060001"), 4, Decimal("0.008")),     # just over: 0.006 is below it, so a 4th share is taken
    (Decimal("0.002"), 1, Decimal("0.002")),        # the newest share alone reaches it
    (Decimal("0.001"), 1, Decimal("0.002")),        # the newest share is always counted
    (Decimal("0.02"), 5, Decimal("0.010")),         # unfilled: every share counts
])
def test_the_share_that_reaches_the_target_is_the_last_counted(target, counted, total):
    window = window_of([("a", 0.002), ("b", 0.002), ("c", 0.002), ("d", 0.002), ("e", 0.002)], target=target)
    assert window.shares == counted and window.total == total
    assert sorted(window.snapshot(T0).weights) == ["a", "b", "c", "d", "e"][5 - counted:]


def test_window_start_and_end():
    window = window_of([("a", 1), ("b", 1), ("c", 1), ("d", 1)], target=2, retain=10)
    snapshot = window.snapshot(T0)
    # counted: d (at 4 µs) and c (3 µs); the newest uncounted share is b (2 µs)
    assert (snapshot.start, snapshot.end) == (at(2), at(4)) and snapshot.shares == 2
    window.set_target(100)      # every share counts: the start is the epoch
    assert (window.snapshot(T0).start, window.snapshot(T0).end) == (EPOCH, at(4))


def test_an_empty_window_starts_and_ends_at_the_jobs_creation():
    created = at(999)
    snapshot = Window(5).snapshot(created)
    assert (snapshot.start, snapshot.end, snapshot.total, snapshot.shares) == (created, created, 0, 0)
    assert dict(snapshot.weights) == {} and snapshot.complete


def test_a_window_loaded_from_storage_starts_after_the_newest_share_not_loaded():
    window = Window(10, preceding=at(0))
    window.extend([("a", 4, at(5)), ("b", 4, at(6))])
    snapshot = window.snapshot(T0)
    assert snapshot.start == at(0) and snapshot.total == 8 and not snapshot.complete   # older shares would count
    window.append("c", 4, at(7))
    assert window.snapshot(T0).start == at(0) and window.complete and window.shares == 3
    window.append("d", 4, at(8))
    assert window.snapshot(T0).start == at(5) and window.shares == 3


def test_share_times_must_strictly_increase_and_be_timezone_aware():
    window = Window(10, preceding=at(3))
    with pytest.raises(ValueError):
        window.append("a", 1, at(3))            # not after the preceding share
    window.append("a", 1, at(4))
    with pytest.raises(ValueError):
        window.append("a", 1, at(4))
    with pytest.raises(ValueError):
        window.append("a", 1, datetime(2026, 9, 2))
    with pytest.raises(ValueError):
        window.append("a", 0, at(5))
    with pytest.raises(TypeError):
        window.append("a", None, at(5))
    assert window.shares == 1 and window.total == 1        # refused shares leave no trace


def test_a_retarget_grows_the_window_back_over_kept_shares_or_reports_it_incomplete():
    shares = [(f"m{i % 7}", 1 + i % 3) for i in range(200)]
    window = window_of(shares, target=100, retain=Decimal("1.25"))
    assert window.total >= 100 and window.kept < 200
    window.set_target(120)                  # +20 %: within what was kept
    assert window.complete and window_matches_rule(window, shares, 120)
    window.set_target(90)                   # down: trims at once
    assert window_matches_rule(window, shares, 90)
    window.set_target(1_000)                # x11: the older shares are gone
    assert not window.complete
    snapshot = window.snapshot(T0)
    assert snapshot.total < 1_000 and snapshot.start > EPOCH


def test_window_target_is_exact_f_times_the_network_difficulty():
    assert network_difficulty(0x1D00FFFF) == 1
    assert network_difficulty(0x207FFFFF) == Fraction(0xFFFF * 2**208, 0x7FFFFF * 2**232)
    assert window_target("2", 0x1D00FFFF) == 2
    assert window_target(Decimal("0.5"), 0x1B0404CB) == Fraction(1, 2) * Fraction(0xFFFF * 2**208, 0x0404CB * 2**192)


def test_the_columns_are_cut_off_without_changing_the_window(monkeypatch):
    monkeypatch.setattr(pplns, "_COMPACT_AFTER", 8)
    shares = [(f"m{i % 5}", 1 + (i * 7) % 4) for i in range(500)]
    window = Window(20, retain=1)
    for i, (address, difficulty) in enumerate(shares):
        window.append(address, difficulty, at(i + 1))
        if i % 37 == 0:
            assert window_matches_rule(window, shares[:i + 1], 20)
    assert len(window._times) < 100
    assert window_matches_rule(window, shares, 20)


def rule(shares, target, created=T0) -> dict:
    """The window by the words of the rule, over every share (oldest first, one µs apart): newest first, taken while
    the running sum is below the target."""
    weights: dict[str, Decimal] = {}
    total, taken = Decimal(0), 0
    for address, difficulty in reversed(shares):
        if total >= target:
            break
        value = exact_difficulty(difficulty)
        weights[address] = weights.get(address, 0) + value
        total += value
        taken += 1
    end = at(len(shares)) if shares else created
    start = created if not shares else (at(len(shares) - taken) if taken < len(shares) else EPOCH)
    return {"weights": weights, "total": total, "shares": taken, "start": start, "end": end}


def window_matches_rule(window: Window, shares, target) -> bool:
    snapshot = window.snapshot(T0)
    expected = rule(shares, Fraction(target))
    return snapshot.complete and {"weights": dict(snapshot.weights), "total": snapshot.total,
                                  "shares": snapshot.shares, "start": snapshot.start, "end": snapshot.end} == expected


difficulties = st.one_of(st.sampled_from([0.001, 0.002, 0.1, 0.3, 1.0, 1.5, 8.0, 512.0, 1e-5, 0.007]),
                         st.decimals(min_value=Decimal("0.001"), max_value=100, places=3, allow_nan=False),
                         st.integers(min_value=1, max_value=50))
addresses = st.sampled_from(["bc1qa", "bc1qb", "bc1qc", "bc1qd", "1Legacy", "3Script", "bc1pt"])


@settings(max_examples=150)
@given(st.lists(st.tuples(addresses, difficulties), max_size=80),
       st.decimals(min_value=Decimal("0.001"), max_value=300, places=3), st.sampled_from([1, Decimal("1.5"), 4]))
def test_the_window_is_the_rule_after_every_share(shares, target, retain):
    window = Window(target, retain=retain)
    for i, (address, difficulty) in enumerate(shares):
        window.append(address, difficulty, at(i + 1))
        assert window_matches_rule(window, shares[:i + 1], target)
        assert window.total == sum(window.snapshot(T0).weights.values())


@settings(max_examples=150)
@given(st.lists(st.one_of(st.tuples(addresses, difficulties),
                          st.decimals(min_value=Decimal("0.01"), max_value=200, places=2)), max_size=80),
       st.decimals(min_value=Decimal("0.01"), max_value=200, places=2))
def test_the_window_is_the_rule_or_says_it_is_incomplete_through_target_changes(steps, target):
    window, shares = Window(target, retain=Decimal("1.5")), []
    for step in steps:
        if isinstance(step, Decimal):
            target = step
            window.set_target(target)
        else:
            shares.append(step)
            window.append(*step, at(len(shares)))
        if window.complete:
            assert window_matches_rule(window, shares, target)
        else:
            expected = rule(shares, Fraction(target))
            # some dropped share would count: the rule's window is larger than the one in memory
            assert window.total < target and window.total < expected["total"]
            assert window.shares < expected["shares"]


# --- properties of the split ---------------------------------------------------------------------------------------

amounts = st.integers(min_value=0, max_value=pplns.MAX_MONEY)
percentages = st.one_of(st.decimals(min_value=0, max_value=100, places=3), st.sampled_from(["0", "1.5", "100", "2"]))
weights_maps = st.dictionaries(addresses, st.decimals(min_value=Decimal("0.001"), max_value=10**6, places=3),
                               max_size=7)
balance_maps = st.dictionaries(addresses, st.integers(min_value=0, max_value=10**9), max_size=7)


@settings(max_examples=300)
@given(amounts, percentages, weights_maps, balance_maps, st.integers(min_value=1, max_value=10**7),
       st.integers(min_value=0, max_value=8))
def test_every_split_keeps_the_rule(reward, percent, window, balances, min_output, max_outputs):
    result = split(reward, percent, window, balances, min_output, max_outputs, payout_address=POOL)
    assert result.problems() == []
    assert sum(output.amount for output in result.outputs) == reward
    assert all(output.amount > 0 for output in result.outputs)
    payees = [output for output in result.outputs if not output.fee]
    assert len(payees) <= max_outputs and all(output.amount >= min_output for output in payees)
    assert [output.amount for output in payees] == sorted((output.amount for output in payees), reverse=True)
    for address, delta in result.deltas.items():
        assert balances.get(address, 0) + delta >= 0
    # the credits against an independent computation in fractions
    fee = int(Fraction(Decimal(str(percent))) * reward / 100)
    total = sum((Fraction(value) for value in window.values()), Fraction(0))
    assert result.fee == fee
    assert dict(result.credits) == {a: int((reward - fee) * Fraction(w) / total) for a, w in window.items()}
    if not window:
        assert result.outputs == ((Output(POOL, reward, True),) if reward else ())
    # the largest dues are paid: nobody skipped has a due over min-output that a payee's due is below
    unpaid = [result.due(a) for a in result.credits.keys() | balances.keys() if a not in result.paid]
    if window and unpaid and len(result.paid) < max_outputs and sum(result.paid.values()) < reward - min_output:
        assert max(unpaid) < min_output


@given(amounts, weights_maps, balance_maps)
def test_the_split_is_deterministic_whatever_the_mappings_order(reward, window, balances):
    first = split(reward, "1", window, balances, 1_000, 3, payout_address=POOL)
    again = split(reward, "1", dict(reversed(window.items())), dict(reversed(balances.items())), 1_000, 3,
                  payout_address=POOL)
    assert first.outputs == again.outputs and dict(first.deltas) == dict(again.deltas)


def test_problems_sees_a_broken_split():
    result = split(1_000_000, "1", {"a": Decimal(1)}, {}, 1_000, 3, payout_address=POOL)
    broken = type(result)(**{**result.__dict__, "outputs": result.outputs[:-1] + (Output(POOL, 9_999, True),)})
    assert not broken.conserves()
    broken = type(result)(**{**result.__dict__, "deltas": {"a": 1}})
    assert any("delta" in problem for problem in broken.problems())


# --- conservation over a sequence of blocks -------------------------------------------------------------------------

class Pool:
    """The caller's side, in memory: balances move with accepted blocks and move back with orphaned ones."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.accepted: list = []        # the splits of blocks accepted and not orphaned, oldest first

    def accept(self, result) -> None:
        for address, delta in result.deltas.items():
            self.balances[address] = self.balances.get(address, 0) + delta
        self.accepted.append(result)

    def orphan(self, index: int) -> None:
        result = self.accepted.pop(index)
        for address, delta in result.deltas.items():
            self.balances[address] -= delta

    def check_conservation(self) -> None:
        """Every satoshi of every accepted block is in a miner's output, the pool's own share (fee and rounding) or
        a balance, none twice; the payout address's outputs hold exactly the pool's share and the balances."""
        rewards = sum(result.reward for result in self.accepted)
        to_miners = sum(sum(result.paid.values()) for result in self.accepted)
        pool_keeps = sum(result.pool_keeps for result in self.accepted)
        owed = sum(self.balances.values())
        assert rewards == to_miners + pool_keeps + owed
        fee_outputs = sum(o.amount for result in self.accepted for o in result.outputs if o.fee)
        assert fee_outputs == pool_keeps + owed
        assert rewards == sum(o.amount for result in self.accepted for o in result.outputs)
        for address in self.balances:
            assert self.balances[address] == sum(result.deltas.get(address, 0) for result in self.accepted)


blocks = st.tuples(st.integers(min_value=0, max_value=10**9), percentages, weights_maps,
                   st.integers(min_value=1, max_value=10**7), st.integers(min_value=0, max_value=6))


@settings(max_examples=150)
@given(st.lists(st.one_of(blocks, st.just("orphan")), max_size=40))
def test_conservation_over_accepted_blocks_and_reorgs(steps):
    """Blocks accepted one after another; a reorg orphans the newest accepted block first. Balances never go
    below zero, and every satoshi is accounted for after every step."""
    pool = Pool()
    for step in steps:
        if step == "orphan":
            if pool.accepted:
                pool.orphan(-1)
        else:
            reward, percent, window, min_output, max_outputs = step
            result = split(reward, percent, window, pool.balances, min_output, max_outputs, payout_address=POOL)
            assert result.conserves()
            pool.accept(result)
        assert all(balance >= 0 for balance in pool.balances.values())
        pool.check_conservation()


@settings(max_examples=150)
@given(st.lists(st.one_of(blocks, st.integers(min_value=0, max_value=100)), max_size=40))
def test_conservation_when_any_accepted_block_is_orphaned(steps):
    """Orphaning an older block after a newer one paid out the balance it created leaves a debt (a negative
    balance), never a lost or invented satoshi; later splits keep the rule with such balances."""
    pool = Pool()
    for step in steps:
        if isinstance(step, int):
            if pool.accepted:
                pool.orphan(step % len(pool.accepted))
        else:
            reward, percent, window, min_output, max_outputs = step
            result = split(reward, percent, window, pool.balances, min_output, max_outputs, payout_address=POOL)
            assert result.conserves()
            pool.accept(result)
        pool.check_conservation()


def test_orphaning_an_older_block_after_its_balance_was_paid_leaves_a_debt():
    pool = Pool()

    def mine():
        return split(100_000, "20", {"a": Decimal(1), "b": Decimal(9)}, pool.balances, 10_000, 5,
                     payout_address=POOL)

    first = mine()              # D = 80,000: a's credit 8,000 is under min-output: carried; b is paid 72,000
    pool.accept(first)
    assert pool.balances["a"] == 8_000 and first.outputs[-1] == Output(POOL, 28_000, True)
    second = mine()             # a's due 16,000 is paid from the 28,000 left after b: its balance is back to 0
    pool.accept(second)
    assert second.paid["a"] == 16_000 and pool.balances["a"] == 0
    pool.orphan(0)              # the first block is gone: the second paid a 8,000 that nothing funds any more
    assert pool.balances["a"] == -8_000
    pool.check_conservation()
    third = mine()              # a's due 8,000 - 8,000 = 0: not paid, its credit repays the debt
    assert "a" not in third.paid and third.deltas["a"] == 8_000
    pool.accept(third)
    assert pool.balances["a"] == 0
    pool.check_conservation()


# --- the max-outputs default against real firmware limits -------------------------------------------------------------

def coinbase_sizes(payees: int) -> dict[str, int]:
    """Worst-case sizes of gstratum's own coinbase with `payees` payee outputs plus the fee output, every one P2TR
    (43 bytes, the largest standard output), a scriptSig at its 100-byte maximum, a witness commitment, and 16
    merkle branches (65,536 transactions, more than any block holds)."""
    from gstratum.mining import block, template
    from gstratum.mining.jobs import Job
    from gstratum.protocol.notify import notify_line

    gbt = {"version": 0x20000000, "previousblockhash": "00" * 32, "bits": "17034219", "curtime": 1_790_000_000,
           "mintime": 1_789_990_000, "height": 1_000_000, "coinbasevalue": 316_821_987, "transactions": [],
           "default_witness_commitment": block.witness_commitment_script([]).hex()}
    tmpl = template.BlockTemplate.from_gbt(gbt)
    taproot = bytes([0x51, 0x20]) + bytes(32)
    outputs = [(1_000_000, taproot)] * (payees + 1)
    extranonce = 4 + 8                                      # extranonce1 + the largest --extranonce2-size
    coinb1, coinb2 = tmpl.coinbase_parts(outputs, b"x" * 100, extranonce)     # the tag is cut to fit 100 bytes
    assert len(coinb1) + extranonce - 42 == 100             # the scriptSig is at its 100-byte maximum
    branches = 16
    job = Job(job_id="ffffffffffffffff", prevhash="00" * 32, coinb1=coinb1.hex(), coinb2=coinb2.hex(),
              merkle_branch=("ab" * 32,) * branches, version="20000000", nbits="17034219", ntime="6a4f1d80",
              clean_jobs=True, height=1_000_000)
    line = notify_line(job)
    assert json.loads(line)["params"][3] == coinb2.hex()
    # Stratum V2 NewExtendedMiningJob: channel_id u32, job_id u32, min_ntime Option<u32> (1 + 4), version u32,
    # version_rolling_allowed bool, merkle_path SEQ0_255[U256] (1 + 32 each), coinbase_tx_prefix and _suffix B0_64K
    # (2 + bytes each): the coinbase without witness and without the extranonce
    v2_payload = 4 + 4 + 5 + 4 + 1 + (1 + 32 * branches) + (2 + len(coinb1)) + (2 + len(coinb2))
    return {"coinbase": len(coinb1) + extranonce + len(coinb2), "coinb2_hex": 2 * len(coinb2), "line": len(line),
            "v2_payload": v2_payload}


def test_the_default_max_outputs_fits_real_firmware_with_margin():
    sizes = coinbase_sizes(DEFAULT_MAX_OUTPUTS)
    assert sizes["line"] <= 4_096           # half of the 8,192-byte line cap proposed for ESP-Miner (PR #1844)
    assert sizes["coinbase"] <= 2_048       # quarter of the Bitaxe "stratum miner" task's 8,192-byte stack
    assert sizes["v2_payload"] <= 2_048     # quarter of ESP-Miner's SV2_MAX_FRAME_SIZE 8,192
    # each payee adds 43 bytes to the coinbase and 86 hex characters to the notify line
    more = coinbase_sizes(DEFAULT_MAX_OUTPUTS + 1)
    assert more["coinbase"] - sizes["coinbase"] == 43 and more["line"] - sizes["line"] == 86


# -- the new-block path: payees from a shortlist made ahead -----------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from([f"m{i:02d}" for i in range(40)]), st.integers(1, 10**6), max_size=40),
       st.dictionaries(st.sampled_from([f"m{i:02d}" for i in range(45)]), st.integers(-10**6, 10**8), max_size=20),
       st.integers(1, 10**10), st.integers(0, 12), st.integers(1, 50_000), st.sampled_from(["0", "1.5", "2", "33"]),
       st.floats(0.5, 2.0))
def test_payees_from_a_shortlist_are_the_splits_payees(weights, balances, reward, max_outputs, min_output, fee, spread):
    window = {a: Decimal(w) * Decimal("0.00001") for a, w in weights.items()}
    prepared = pplns.prepare(window, balances)
    full = prepared.split(reward, fee, min_output, max_outputs, payout_address="pool")
    assert prepared.payees(reward, fee, min_output, max_outputs) == dict(full.paid)
    low, high = sorted((reward, max(1, min(int(reward * spread), pplns.MAX_MONEY))))
    short = prepared.shortlist(fee, max_outputs, low, high)
    assert prepared.payees(reward, fee, min_output, max_outputs, short) == dict(full.paid)
    assert list(full.paid) == list(prepared.payees(reward, fee, min_output, max_outputs, short))   # same order
