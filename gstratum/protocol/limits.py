"""Per-connection cost metering against floods (sans-IO: the caller supplies the clock and acts on the verdict).

Every request costs `request_cost`, every error reply `error_cost` more; the balance drains at `decay` per second.
Past `soft`, the connection's next read is delayed (a polite client barely notices, a flood is slowed down);
past `hard`, it is closed. Honest miners stay far below: a few requests a second at most.
"""
from __future__ import annotations

from dataclasses import dataclass

OK, SLOW, CLOSE = 0, 1, 2


@dataclass(frozen=True)
class CostPolicy:
    request_cost: float = 1.0
    error_cost: float = 5.0
    soft: float = 500.0
    hard: float = 2000.0
    decay: float = 100.0          # per second
    max_delay: float = 1.0        # longest single delay past the soft limit


class CostMeter:
    __slots__ = ("policy", "balance", "updated")

    def __init__(self, policy: CostPolicy, now: float) -> None:
        self.policy = policy
        self.balance = 0.0
        self.updated = now

    def charge(self, requests: int, errors: int, now: float) -> int:
        policy = self.policy
        self.balance = max(0.0, self.balance - (now - self.updated) * policy.decay)
        self.updated = now
        self.balance += requests * policy.request_cost + errors * policy.error_cost
        if self.balance > policy.hard:
            return CLOSE
        if self.balance > policy.soft:
            return SLOW
        return OK

    def delay(self) -> float:
        """How long to pause so the balance drains back under the soft limit."""
        excess = self.balance - self.policy.soft
        return min(max(excess, 0.0) / self.policy.decay, self.policy.max_delay)
