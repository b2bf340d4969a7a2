"""Variable difficulty: steer each miner toward one share every `target_interval` seconds.

Pure arithmetic on (shares, elapsed time): no I/O, so it is tested with a fake clock. Hysteresis: the estimate must
be off by more than `tolerance` (e.g. 2x) before anything changes, and no more than one retarget per
`retarget_after` seconds, so a miner is not flooded with set_difficulty on a lucky or unlucky streak.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VardiffPolicy:
    target_interval: float = 10.0      # seconds per share wanted
    retarget_after: float = 60.0       # at most one retarget per this many seconds
    tolerance: float = 2.0             # change only when off by more than this factor
    max_step: float = 16.0             # largest change in one retarget (either way)
    min_difficulty: float = 1e-10
    max_difficulty: float = 2.0**40
    enabled: bool = True

    def due_cutoff(self, now: float) -> float:
        """Miners whose vardiff window started at or before this moment may be due a retarget (-inf: never)."""
        return now - self.retarget_after if self.enabled else float("-inf")


class Vardiff:
    """One miner's window. After a decrease, the next window must show the share rate going up; if it did not
    (a proxy that clamps every difficulty below 1 up to 1, firmware with a floor of its own), the difficulty is not
    lowered again: lowering it further would only credit the same work at ever smaller difficulties."""

    __slots__ = ("policy", "since", "shares", "rate_when_lowered", "unresponsive")

    def __init__(self, policy: VardiffPolicy, now: float) -> None:
        self.policy = policy
        self.since = now
        self.shares = 0
        self.rate_when_lowered: float | None = None   # shares/s in the window that led to the last decrease
        self.unresponsive = False

    def reset(self, now: float) -> None:
        self.since = now
        self.shares = 0

    def note_share(self) -> None:
        self.shares += 1

    def proposal(self, difficulty: float, now: float) -> float | None:
        """A new difficulty when one is due, else None. Call on every accepted share and from a periodic sweep."""
        policy = self.policy
        if not policy.enabled:
            return None
        elapsed = now - self.since
        if elapsed < policy.retarget_after:
            return None
        wanted_shares = elapsed / policy.target_interval
        rate = self.shares / elapsed
        if self.rate_when_lowered is not None:        # the window after a decrease: did the miner follow?
            self.unresponsive = rate <= self.rate_when_lowered * 1.25
            self.rate_when_lowered = None
        # With no share at all, assume we are at least max_step too hard only after a long silence.
        ratio = max(self.shares, 0.5) / wanted_shares
        if 1 / policy.tolerance <= ratio <= policy.tolerance:
            self.reset(now)
            return None
        ratio = min(max(ratio, 1 / policy.max_step), policy.max_step)
        if ratio < 1:
            if self.unresponsive:
                self.reset(now)
                return None
            self.rate_when_lowered = rate
        else:
            self.unresponsive = False
        new = min(max(difficulty * ratio, policy.min_difficulty), policy.max_difficulty)
        self.reset(now)
        if new == difficulty:
            return None
        return new
