"""Per-worker running totals kept in memory, for logs and (later) the stats API."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


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


@dataclass
class PoolStats:
    workers: dict[str, WorkerTotals] = field(default_factory=dict)

    def share(self, worker: str, accepted: bool, difficulty: float, now: float) -> None:
        totals = self.workers.get(worker)
        if totals is None:
            totals = self.workers[worker] = WorkerTotals(first_share=now)
        if accepted:
            totals.accepted += 1
            totals.difficulty_sum += difficulty
        else:
            totals.rejected += 1
        totals.last_share = now

    def summary(self, now: float | None = None, top: int = 5) -> str:
        now = time.time() if now is None else now
        ranked = sorted(self.workers.items(), key=lambda item: item[1].difficulty_sum, reverse=True)[:top]
        parts = [f"{name} acc={t.accepted} rej={t.rejected} {t.hashrate(now) / 1e6:.2f}MH/s" for name, t in ranked]
        return f"workers={len(self.workers)} " + "; ".join(parts)
