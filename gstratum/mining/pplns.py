"""PPLNS paid straight from the coinbase, exact to the satoshi (pure, no I/O): the window of recent shares and the
split of one block reward among the miners in it.

The rule, for each job:
- R = the template's coinbasevalue; fee = floor(R x pool_fee / 100), the percentage read as an exact decimal;
  D = R - fee.
- The window: accepted shares, newest first, taken while the running sum of their difficulty is below the target;
  the share that reaches the target is included. Sums are exact decimals: 25 shares of 0.002 add up to 0.05, not
  the floats' 0.05000000000000003.
- credit(a) = floor(D x w(a) / W), W the window's actual total (an unfilled window splits all of D); an empty window
  pays all of R to the payout address. due(a) = credit(a) + balance(a).
- Payees: by due, largest first (ties by address), room = R: skip a miner once max_outputs payees are chosen or when
  its due is below min_output; otherwise pay min(due, room) unless that is below min_output.
- The payout address gets one output of what is left, marked fee, left out when 0. Outputs add up to exactly R.
- A block the node accepts moves balance(a) by credit(a) - paid(a) for every miner in the window or paid; an orphaned
  block's change is reversed.

Readings where the words leave room (each a choice that conserves satoshis):
- Payee order in the coinbase: as chosen (due descending, then address ascending by code point); the fee output last.
  Amounts are then non-increasing too, since only the last payee can be cut by room.
- max_outputs counts payee outputs only, never the fee output.
- An empty window (no share at all) pays all of R to the payout address and pays no balance, even a large one:
  credits, paid and deltas are empty and every balance stays as it was.
- Balances are integers that the accounting never drives below zero: paid(a) <= due(a) = credit(a) + balance(a), so
  balance + credit - paid >= 0 whenever balance >= 0. Reversing an orphaned block restores exactly the state before
  it when blocks are reversed newest first (as a reorg does). Reversing an OLDER block after a newer one paid out the
  balance it created leaves that miner below zero: a debt, since the newer coinbase paid satoshis the orphaned one
  no longer funds. split() accepts such a balance (its due is smaller, it is repaid from later credits) rather than
  lose or invent satoshis.
- Addresses are opaque strings here; the caller keys them as the node normalises them (validateaddress).
"""
from __future__ import annotations

import decimal
import functools
import heapq
import operator
from itertools import compress, repeat
from array import array
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Iterable, Mapping

from gstratum.mining.bitcoin import DIFF1, target_from_nbits

MAX_MONEY = 21_000_000 * 100_000_000

DEFAULT_WINDOW_FACTOR = Decimal(2)     # --pplns-window F: the window sums to F x the network difficulty
DEFAULT_POOL_FEE = Decimal(0)          # --pool-fee PERCENT
DEFAULT_MIN_OUTPUT = 10_000            # --pplns-min-output SATS
# --pplns-max-outputs N. With every payee and the fee output P2TR (43 bytes, the largest standard output), a 100-byte
# scriptSig and 16 merkle branches, 25 payees keep: the V1 mining.notify line under 4,096 bytes (half the 8,192-byte
# line cap ESP-Miner's hardening work proposes; coinb2 is sent as hex, 86 characters a payee), the coinbase under 2,048
# bytes (a quarter of the 8,192-byte stack of the Bitaxe task that decodes it; a third of the Avalon Nano 3s's
# 6,208-byte coinbase field) and a Stratum V2 NewExtendedMiningJob under 2,048 bytes (a quarter of ESP-Miner's
# 8,192-byte frame limit). tests/test_pplns.py measures these on gstratum's own coinbase and notify line.
DEFAULT_MAX_OUTPUTS = 25
# Shares older than the window are kept until the newer ones sum to this many times the target, so a retarget that
# raises the network difficulty by up to 25 % still finds the window's older shares in memory (beyond it, the window
# reports itself incomplete and the caller reloads it).
DEFAULT_RETAIN = Decimal("1.25")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICROSECOND = timedelta(microseconds=1)
_ZERO = Decimal(0)
_COMPACT_AFTER = 1 << 16       # dropped shares at the head of the columns before they are cut off

# Additions and multiplications by integers, never rounded: any result that would need rounding raises instead.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN,
                         traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation, decimal.Overflow,
                                decimal.DivisionByZero])


# --- exact numbers -----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _decimal_of_float(value: float) -> Decimal:
    return Decimal(repr(value))


def exact_difficulty(value: float | int | str | Decimal) -> Decimal:
    """A share difficulty as an exact Decimal; a float through its shortest repr (0.002 is Decimal('0.002'), not the
    double's 0.002000000000000000041633...). Vardiff values repeat, so floats are converted once and shared."""
    if isinstance(value, float):
        result = _decimal_of_float(value)
    elif isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            result = Decimal(value)
        except decimal.InvalidOperation:
            raise ValueError(f"difficulty must be a number, got {value!r}") from None
    else:
        raise TypeError(f"difficulty must be a float, int, str or Decimal, got {type(value).__name__}")
    if not result.is_finite() or result <= 0:
        raise ValueError(f"difficulty must be a finite number > 0, got {value!r}")
    return result


def exact_percent(value: str | Decimal | int | float) -> Fraction:
    """A percentage in [0, 100] as an exact fraction: '1.5' is 3/2 (a float through its shortest repr)."""
    if isinstance(value, bool):
        raise TypeError("a percentage must be a number, got a bool")
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, (str, Decimal, int)):
        raise TypeError(f"a percentage must be a str, Decimal or int, got {type(value).__name__}")
    try:
        number = Decimal(value)
    except decimal.InvalidOperation:
        raise ValueError(f"a percentage must be a number, got {value!r}") from None
    if not number.is_finite() or not 0 <= number <= 100:
        raise ValueError(f"a percentage must be within 0..100, got {value!r}")
    return Fraction(number)


def _positive_ratio(value, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, Fraction)):
        raise TypeError(f"{name} must be an int, str, Decimal or Fraction, got {type(value).__name__}")
    try:
        ratio = Fraction(value)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if ratio <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return ratio


def network_difficulty(nbits: int) -> Fraction:
    """The network difficulty of a compact target, exactly: DIFF1 / target (a repeating decimal in general)."""
    target = target_from_nbits(nbits)
    if target <= 0:
        raise ValueError(f"nbits {nbits:#x} has no positive target")
    return Fraction(DIFF1, target)


def window_target(factor: str | Decimal | int, nbits: int) -> Fraction:
    """--pplns-window F: the window's target, F x the network difficulty of `nbits`, exactly."""
    return _positive_ratio(factor, "window factor") * network_difficulty(nbits)


def _micros(moment: datetime) -> int:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(f"a share's time must be a timezone-aware datetime, got {moment!r}")
    return (moment - EPOCH) // _ONE_MICROSECOND


def _moment(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


# --- the window --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowSnapshot:
    """What split() needs from the window at one moment, detached from the live window."""
    weights: Mapping[str, Decimal]      # per address: the sum of its counted shares' difficulty
    total: Decimal                      # W, the sum of every counted share's difficulty
    shares: int                         # counted shares
    start: datetime                     # the newest uncounted share's time (EPOCH when every share counts)
    end: datetime                       # the newest counted share's time
    target: Fraction
    complete: bool                      # False: older shares that would count are not in memory (reload them)


class Window:
    """The PPLNS window, maintained share by share: shares are appended newest last and trimmed from the oldest end,
    so the counted shares are always the minimal newest suffix whose difficulty sums to at least the target (all of
    them while the total is below it). Per-address sums and the total are kept exact and up to date, so a snapshot
    costs one copy of the per-address sums, and a share costs O(1) amortised.

    Storage is three columns (address, difficulty, time in microseconds) with a moving head, cut off now and then;
    addresses and difficulties are shared objects, so a share costs about 24 bytes plus its slot in the columns.

    Shares older than the window are kept while the newer ones sum to less than target x retain, so a larger target
    (a retarget, or set_target) can take them back. A window built from stored shares starts with `preceding`: the
    time of the newest share NOT appended (None when there is none); it is the window's start until older shares
    are taken, and marks the window incomplete if the target is not reached.
    """

    __slots__ = ("_addresses", "_difficulties", "_times", "_head", "_cut", "_sums", "_total", "_retained_total",
                 "_refs", "_names", "_target", "_retain", "_keep", "_newest", "_dropped_at", "_dropped")

    def __init__(self, target, *, retain=DEFAULT_RETAIN, preceding: datetime | None = None) -> None:
        self._addresses: list[str] = []
        self._difficulties: list[Decimal] = []
        self._times = array("q")
        self._head = 0                  # the oldest share kept
        self._cut = 0                   # the oldest share counted
        self._sums: dict[str, Decimal] = {}
        self._total = _ZERO             # counted shares
        self._retained_total = _ZERO    # every share kept
        self._refs: dict[str, int] = {}     # shares kept per address
        self._names: dict[str, str] = {}    # the one string object of each address kept
        self._retain = _positive_ratio(retain, "retain")
        if self._retain < 1:
            raise ValueError(f"retain must be >= 1, got {retain!r}")
        self._dropped_at = None if preceding is None else _micros(preceding)
        self._dropped = preceding is not None   # some share older than every kept one exists
        self._newest = self._dropped_at
        self._set_target(target)

    # -- reading --------------------------------------------------------------------------------------------------
    @property
    def target(self) -> Fraction:
        return self._target

    @property
    def total(self) -> Decimal:
        """W: the counted shares' difficulty, exactly."""
        return self._total

    @property
    def shares(self) -> int:
        """Shares counted."""
        return len(self._times) - self._cut

    @property
    def kept(self) -> int:
        """Shares in memory, counted or kept for a larger target."""
        return len(self._times) - self._head

    @property
    def addresses(self) -> int:
        return len(self._sums)

    @property
    def complete(self) -> bool:
        """The window is exactly the rule's: it reaches the target, or no older share exists outside it."""
        return not self._dropped or self._reaches(self._total)

    def weight(self, address: str) -> Decimal:
        return self._sums.get(address, _ZERO)

    def snapshot(self, job_created_at: datetime) -> WindowSnapshot:
        """The window for one job; an empty window's start and end are the job's creation time."""
        times = self._times
        if len(times) == self._cut:
            start = end = job_created_at
        else:
            end = _moment(times[-1])
            if self._cut > self._head:
                start = _moment(times[self._cut - 1])
            elif self._dropped_at is not None:
                start = _moment(self._dropped_at)
            else:
                start = EPOCH
        return WindowSnapshot(weights=MappingProxyType(dict(self._sums)), total=self._total, shares=self.shares,
                              start=start, end=end, target=self._target, complete=self.complete)

    # -- changing ---------------------------------------------------------------------------------------------------
    def append(self, address: str, difficulty: float | Decimal, submitted_at: datetime) -> None:
        """An accepted share, newer than every share before it (times strictly increase)."""
        with decimal.localcontext(_EXACT):
            self._add(address, difficulty, submitted_at)
            self._rebalance(grow=False)

    def extend(self, shares: Iterable[tuple[str, float | Decimal, datetime]]) -> None:
        """Many shares, oldest first (e.g. loaded from the database)."""
        with decimal.localcontext(_EXACT):
            for address, difficulty, submitted_at in shares:
                self._add(address, difficulty, submitted_at)
                self._rebalance(grow=False)

    def set_target(self, target) -> None:
        """A new target (a retarget changed the network difficulty, or the operator's D): the window grows back over
        kept shares or trims at once."""
        self._set_target(target)

    # -- inside ---------------------------------------------------------------------------------------------------
    def _set_target(self, target) -> None:
        self._target = _positive_ratio(target, "window target")
        self._keep = self._target * self._retain
        with decimal.localcontext(_EXACT):
            self._rebalance()

    def _reaches(self, amount: Decimal) -> bool:
        return _at_least(amount, self._target)

    def _add(self, address: str, difficulty, submitted_at: datetime) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"a share's address must be a non-empty str, got {address!r}")
        value = exact_difficulty(difficulty)
        moment = _micros(submitted_at)
        if self._newest is not None and moment <= self._newest:
            raise ValueError(f"share times must strictly increase: {submitted_at.isoformat()} is not after "
                             f"{_moment(self._newest).isoformat()}")
        # one string object per address, however many shares it has (a row's string is a new object each time)
        address = self._names.setdefault(address, address)
        self._refs[address] = self._refs.get(address, 0) + 1
        self._newest = moment
        self._addresses.append(address)
        self._difficulties.append(value)
        self._times.append(moment)
        sums = self._sums
        sums[address] = sums.get(address, _ZERO) + value
        self._total += value
        self._retained_total += value

    def _rebalance(self, grow: bool = True) -> None:
        """Restore the invariants after an append (which never needs to grow back) or a new target (call under the
        exact context)."""
        addresses, difficulties, sums = self._addresses, self._difficulties, self._sums
        head, cut, last = self._head, self._cut, len(difficulties) - 1
        total = self._total
        # grow back over kept shares while the counted ones fall short of the target
        while grow and cut > head and not _at_least(total, self._target):
            cut -= 1
            value, address = difficulties[cut], addresses[cut]
            sums[address] = sums.get(address, _ZERO) + value
            total += value
        # trim while the counted shares without their oldest still reach the target
        while cut < last:
            value = difficulties[cut]
            rest = total - value
            if not _at_least(rest, self._target):
                break
            address = addresses[cut]
            remaining = sums[address] - value
            if remaining:
                sums[address] = remaining
            else:
                del sums[address]
            total = rest
            cut += 1
        self._total, self._cut = total, cut
        # forget the oldest kept shares while the newer ones alone reach target x retain
        kept_total, refs, times = self._retained_total, self._refs, self._times
        while head < cut:
            value = difficulties[head]
            rest = kept_total - value
            if not _at_least(rest, self._keep):
                break
            address = addresses[head]
            count = refs[address] - 1
            if count:
                refs[address] = count
            else:
                del refs[address], self._names[address]
            kept_total = rest
            self._dropped_at = times[head]
            self._dropped = True
            head += 1
        self._retained_total, self._head = kept_total, head
        if head >= _COMPACT_AFTER and 2 * head >= len(difficulties):
            del addresses[:head], difficulties[:head], times[:head]
            self._head, self._cut = 0, cut - head


def _at_least(amount: Decimal, target: Fraction) -> bool:
    """amount >= target, exactly (amount x denominator >= numerator; exact under _EXACT)."""
    if target.denominator == 1:
        return amount >= target.numerator
    return amount * target.denominator >= target.numerator


# --- the split -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Output:
    address: str
    amount: int
    fee: bool           # the payout address's output: fee, rounding and credits carried, minus balances paid out


@dataclass(frozen=True)
class Split:
    """One job's coinbase payments and the balance changes that go with them if its block is accepted."""
    reward: int                         # R
    fee: int                            # floor(R x pool_fee / 100)
    distributable: int                  # D = R - fee
    window_total: Decimal               # W
    credits: Mapping[str, int]          # floor(D x w(a) / W), every miner in the window
    balances: Mapping[str, int]         # the balances the split was computed with (non-zero ones)
    paid: Mapping[str, int]             # payees, in coinbase order
    deltas: Mapping[str, int]           # credit - paid, every miner in the window or paid
    outputs: tuple[Output, ...]         # in coinbase order: payees (due descending, then address), the fee output
    payout_address: str
    min_output: int
    max_outputs: int

    @property
    def pool_keeps(self) -> int:
        """The pool's own satoshis in this coinbase: the fee and the rounding (all of R for an empty window)."""
        return self.reward - sum(self.credits.values())

    @property
    def carried(self) -> int:
        """The net change of all balances if the block is accepted (negative when more balance is paid than kept)."""
        return sum(self.deltas.values())

    def due(self, address: str) -> int:
        return self.credits.get(address, 0) + self.balances.get(address, 0)

    def problems(self) -> list[str]:
        """Every way this split breaks the rule's accounting (empty when it conserves every satoshi)."""
        found = []
        total = sum(output.amount for output in self.outputs)
        if total != self.reward:
            found.append(f"outputs add up to {total}, not R = {self.reward}")
        found += [f"{o.address} gets {o.amount} sat" for o in self.outputs if o.amount <= 0]
        payees = [o for o in self.outputs if not o.fee]
        fee_outputs = [o for o in self.outputs if o.fee]
        if len(payees) > self.max_outputs:
            found.append(f"{len(payees)} payee outputs, over max_outputs {self.max_outputs}")
        found += [f"{o.address} paid {o.amount}, under min_output {self.min_output}"
                  for o in payees if o.amount < self.min_output]
        if len({o.address for o in payees}) != len(payees):
            found.append("a payee has two outputs")
        if {o.address: o.amount for o in payees} != dict(self.paid):
            found.append("payee outputs and paid disagree")
        kept = self.reward - sum(self.paid.values())
        expected_fee_outputs = [Output(self.payout_address, kept, True)] if kept else []
        if fee_outputs != expected_fee_outputs or (fee_outputs and self.outputs[-1] != fee_outputs[0]):
            found.append(f"the fee output must be the last, one, of R - paid = {kept} to {self.payout_address}")
        if kept != self.pool_keeps + self.carried:
            found.append(f"the fee output {kept} is not the pool's {self.pool_keeps} plus carried {self.carried}")
        if self.fee + self.distributable != self.reward or not 0 <= self.fee <= self.reward:
            found.append(f"fee {self.fee} + D {self.distributable} is not R {self.reward}")
        credited = sum(self.credits.values())
        if credited > self.distributable or (self.credits and self.distributable - credited >= len(self.credits)):
            found.append(f"credits add up to {credited} of D = {self.distributable}: more than D, or rounding lost "
                         f"a satoshi per miner or more")
        for address in self.credits.keys() | self.paid.keys() | self.deltas.keys():
            credit, paid = self.credits.get(address, 0), self.paid.get(address, 0)
            if self.deltas.get(address) != credit - paid:
                found.append(f"{address}: delta {self.deltas.get(address)} is not credit {credit} - paid {paid}")
            if paid > max(self.due(address), 0):
                found.append(f"{address}: paid {paid}, more than its due {self.due(address)}")
            before = self.balances.get(address, 0)
            if before + credit - paid < min(before, 0):
                found.append(f"{address}: balance {before} would become {before + credit - paid}")
        chosen = list(self.paid)
        if chosen != sorted(chosen, key=lambda a: (-self.due(a), a)):
            found.append("payees are not in due order (largest first, then address)")
        return found

    def conserves(self) -> bool:
        return not self.problems()


def _amount(value, name: str, minimum: int = 0, maximum: int = MAX_MONEY) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be within {minimum}..{maximum}, got {value}")
    return value


def _weight(address, value) -> Decimal:
    if not isinstance(address, str) or not address:
        raise ValueError(f"a window address must be a non-empty str, got {address!r}")
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise TypeError(f"{address}: a window weight must be a Decimal or int, got {type(value).__name__}")
    if not Decimal(value).is_finite() or value <= 0:
        raise ValueError(f"{address}: a window weight must be finite and > 0, got {value!r}")
    return Decimal(value)


@dataclass(frozen=True)
class Prepared:
    """A window and the balances made ready to split any reward fast. Every address (in the window or owed), in
    ascending order, sits beside its weight as an exact integer on one scale (w x 10^k) and its balance. Built when
    the window or the balances change, off the new-block path; a split is then a few passes of C-level `map` over
    those columns and a partial sort of the dues, each folded with its address's rank into one integer (so equal
    dues keep ascending address order without a Python key function). The payees are always the first dues in that
    order: once one is skipped, every smaller one is too."""

    addresses: tuple[str, ...]          # ascending: the index breaks ties between equal dues
    scaled: tuple[int, ...]             # w(a) x 10^k, exactly (0: not in the window)
    owed: tuple[int, ...]               # balance(a)
    in_window: tuple[bool, ...]         # a is in the window
    ties: tuple[int, ...]               # n - 1 - index: folded into each due's sort key
    window_owed: Mapping[str, int]      # the non-zero balances of the window's miners
    owed_by_address: Mapping[str, int]  # every non-zero balance
    total: int                          # W x 10^k
    window_total: Decimal               # W

    def payees(self, reward: int, fee_percent: str | Decimal, min_output: int = DEFAULT_MIN_OUTPUT,
               max_outputs: int = DEFAULT_MAX_OUTPUTS, shortlist: "Shortlist | None" = None) -> dict[str, int]:
        """What the rule pays each payee of R = `reward`, in coinbase order: the coinbase's outputs without the rest
        of the split (every miner's credit, the balance changes), which `split` gives. With a `shortlist` made for a
        range holding `reward`, only its few miners are looked at: the new-block path."""
        _amount(reward, "reward")
        percent = exact_percent(fee_percent)
        distributable = reward - reward * percent.numerator // (100 * percent.denominator)
        if not self.total:
            return {}
        count, total, scaled, owed = len(self.addresses), self.total, self.scaled, self.owed
        if shortlist is not None and shortlist.low <= reward <= shortlist.high and len(shortlist.indexes) < count:
            keys = [(distributable * scaled[i] // total + owed[i]) * count + self.ties[i] for i in shortlist.indexes]
        else:       # every miner: C-level passes over the columns
            dues = map(operator.add, map(operator.floordiv, map(operator.mul, repeat(distributable, count), scaled),
                                         repeat(total, count)), owed)
            keys = map(operator.add, map(operator.mul, dues, repeat(count, count)), self.ties)
        paid: dict[str, int] = {}
        room = reward
        for key in heapq.nlargest(max_outputs, keys):            # largest due first, then ascending address
            tie = key % count
            due = (key - tie) // count
            amount = min(due, room)
            if due < min_output or amount < min_output:
                break
            paid[self.addresses[count - 1 - tie]] = amount
            room -= amount
        return paid

    def shortlist(self, fee_percent: str | Decimal, max_outputs: int, low: int, high: int) -> "Shortlist":
        """The miners that can be among the payees of any reward in [low, high] (made ahead, off the new-block
        path). due(a) = floor(D x w(a) / W) + balance(a) only grows with D, so for every reward in the range it lies
        in [its due at `low`, its due at `high`]; a miner whose due at `high` is below the max_outputs-th largest
        due at `low` has at least max_outputs miners strictly ahead of it, whatever the reward: it cannot be paid."""
        count = len(self.addresses)
        if not self.total or count <= max_outputs:
            return Shortlist(low, high, tuple(range(count)))
        percent = exact_percent(fee_percent)
        d_low = low - low * percent.numerator // (100 * percent.denominator)
        d_high = high - high * percent.numerator // (100 * percent.denominator)
        total, owed = self.total, self.owed
        lows = [d_low * weight // total + owed[i] for i, weight in enumerate(self.scaled)]
        highs = [d_high * weight // total + owed[i] for i, weight in enumerate(self.scaled)]
        kth = heapq.nlargest(max_outputs, lows)[-1] if max_outputs else max(highs) + 1
        return Shortlist(low, high, tuple(i for i in range(count) if highs[i] >= kth))

    def split(self, reward: int, fee_percent: str | Decimal, min_output: int = DEFAULT_MIN_OUTPUT,
              max_outputs: int = DEFAULT_MAX_OUTPUTS, *, payout_address: str) -> Split:
        """Split R = `reward` by the rule (module docstring)."""
        _amount(reward, "reward")
        _amount(min_output, "min_output", 1)
        _amount(max_outputs, "max_outputs", 0, 2**31)
        if not isinstance(payout_address, str) or not payout_address:
            raise ValueError(f"payout_address must be a non-empty str, got {payout_address!r}")
        percent = exact_percent(fee_percent)
        fee = reward * percent.numerator // (100 * percent.denominator)
        distributable = reward - fee
        addresses = self.addresses
        count = len(addresses)
        credits: dict[str, int] = {}
        if self.total:
            # floor(D x w / W) = D x (w 10^k) // (W 10^k): exact integers, one C-level pass each
            credit_of = map(operator.floordiv, map(operator.mul, repeat(distributable, count), self.scaled),
                            repeat(self.total, count))
            credits = dict(compress(zip(addresses, credit_of), self.in_window))
        paid = self.payees(reward, fee_percent, min_output, max_outputs)
        deltas = dict(credits)
        for address, amount in paid.items():
            deltas[address] = deltas.get(address, 0) - amount
        outputs = [Output(address, amount, False) for address, amount in paid.items()]
        kept = reward - sum(paid.values())
        if kept:
            outputs.append(Output(payout_address, kept, True))
        involved = self.window_owed if credits else MappingProxyType({})
        extra = [a for a in paid if a not in involved and self.owed_by_address.get(a)]   # balance-only payees
        if extra:
            involved = MappingProxyType({**involved, **{a: self.owed_by_address[a] for a in extra}})
        return Split(reward=reward, fee=fee, distributable=distributable, window_total=self.window_total,
                     credits=MappingProxyType(credits), balances=involved,
                     paid=MappingProxyType(paid), deltas=MappingProxyType(deltas), outputs=tuple(outputs),
                     payout_address=payout_address, min_output=min_output, max_outputs=max_outputs)


@dataclass(frozen=True)
class Shortlist:
    """Prepared.shortlist: the indexes of the miners that can be paid for a reward in [low, high]."""

    low: int
    high: int
    indexes: tuple[int, ...]


def prepare(window: Mapping[str, Decimal], balances: Mapping[str, int]) -> Prepared:
    """`window` maps each miner in the window to its counted difficulty (WindowSnapshot.weights), `balances` each
    miner to what it is owed from earlier blocks."""
    weights = {address: _weight(address, value) for address, value in window.items()}
    owed = {}
    for address, balance in balances.items():
        _amount(balance, f"balance of {address}", -MAX_MONEY)
        if balance:
            owed[address] = balance
    addresses = tuple(sorted(weights.keys() | owed.keys()))
    with decimal.localcontext(_EXACT):
        window_total = sum(weights.values(), _ZERO)
        scale = max([0] + [-value.as_tuple().exponent for value in weights.values()])
        scaled = {address: int(value.scaleb(scale)) for address, value in weights.items()}
    count = len(addresses)
    return Prepared(addresses=addresses, scaled=tuple(scaled.get(a, 0) for a in addresses),
                    owed=tuple(owed.get(a, 0) for a in addresses), in_window=tuple(a in scaled for a in addresses),
                    ties=tuple(range(count - 1, -1, -1)),
                    window_owed=MappingProxyType({a: b for a, b in owed.items() if a in scaled}),
                    owed_by_address=MappingProxyType(owed), total=sum(scaled.values()), window_total=window_total)


def split(reward: int, fee_percent: str | Decimal, window: Mapping[str, Decimal], balances: Mapping[str, int],
          min_output: int = DEFAULT_MIN_OUTPUT, max_outputs: int = DEFAULT_MAX_OUTPUTS, *,
          payout_address: str) -> Split:
    """Split R = `reward` for one job by the rule (module docstring): `window` maps each miner in the window to its
    counted difficulty (WindowSnapshot.weights), `balances` each miner to what it is owed from earlier blocks."""
    return prepare(window, balances).split(reward, fee_percent, min_output, max_outputs,
                                           payout_address=payout_address)
