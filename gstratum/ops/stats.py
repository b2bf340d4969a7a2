"""Per-worker running totals kept in memory, for the periodic stats log line.

Bounded: a worker idle for longer than `idle_expiry` is forgotten (at the next summary), and at most `max_workers`
are kept (a new name past the cap pushes out the one idle longest). Both are needed: expiry alone lets a burst of
names (a proxy's thousands of devices, or a miner inventing names it authorizes) grow the table until the next
summary; the cap alone would keep a worker that left days ago as long as few others come. Forgetting costs little:
these totals only rank the busiest workers of the last hour in the log; the database keeps the real history.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_WORKERS = 100_000
IDLE_EXPIRY = 3600.0    # seconds without a share


@dataclass(slots=True)
class WorkerTotals:
    accepted: int = 0
    rejected: int = 0
    difficulty_sum: float = 0.0
    first_share: float = 0.0
    last_share: float = 0.0

    def hashrate(self, now: float) -> float:
        """Hashes per second estimated from accepted work: sum(difficulty) * 2**32 / seconds."""
        seconds = max(now - self.first_share, 1.0)
        return self.difficulty_sum * 2**32 / seconds


class PoolStats:
    def __init__(self, max_workers: int = MAX_WORKERS, idle_expiry: float = IDLE_EXPIRY) -> None:
        self.max_workers = max_workers
        self.idle_expiry = idle_expiry
        self.workers: OrderedDict[str, WorkerTotals] = OrderedDict()   # least recently active first
        self.forgotten = 0

    def share(self, worker: str, accepted: bool, difficulty: float, now: float) -> None:
        workers = self.workers
        totals = workers.get(worker)
        if totals is None:
            if len(workers) >= self.max_workers:
                workers.popitem(last=False)
                self.forgotten += 1
            totals = workers[worker] = WorkerTotals(first_share=now)
        else:
            workers.move_to_end(worker)
        if accepted:
            totals.accepted += 1
            totals.difficulty_sum += difficulty
        else:
            totals.rejected += 1
        totals.last_share = now

    def expire(self, now: float) -> None:
        """Forget workers idle for longer than `idle_expiry` (the least recently active come first)."""
        workers, cutoff = self.workers, now - self.idle_expiry
        while workers:
            name, totals = next(iter(workers.items()))
            if totals.last_share >= cutoff:
                break
            del workers[name]
            self.forgotten += 1

    def summary(self, now: float | None = None, top: int = 5) -> str:
        now = time.time() if now is None else now
        self.expire(now)
        ranked = sorted(self.workers.items(), key=lambda item: item[1].difficulty_sum, reverse=True)[:top]
        parts = [f"{name} acc={t.accepted} rej={t.rejected} {t.hashrate(now) / 1e6:.2f}MH/s" for name, t in ranked]
        return f"workers={len(self.workers)} " + "; ".join(parts)
