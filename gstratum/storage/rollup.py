"""Reading the `worker_minutes` rollup: the one definition of the pool's hashrate, for the API and the CLI.

Hashrate = Σ accepted difficulty × 2³² / seconds (a share of difficulty 1 takes 2³² hashes on average).
"""
from __future__ import annotations

HASHES_PER_DIFFICULTY = 2**32
WINDOWS = {"10m": 600, "1h": 3600, "24h": 86400}
RECENT_SECONDS = 600     # a worker's hashrate: over the last 10 minutes

POOL_DIFFICULTY = ("SELECT coalesce(sum(difficulty_sum), 0) FROM worker_minutes "
                   "WHERE minute >= now() - make_interval(secs => %s)")
# worker, accepted and rejected over 24 h, difficulty over RECENT_SECONDS, last share (epoch); %s twice: a name or NULL
WORKER_TOTALS = (
    "SELECT worker, sum(accepted), sum(rejected), "
    f"coalesce(sum(difficulty_sum) FILTER (WHERE minute >= now() - interval '{RECENT_SECONDS} seconds'), 0), "
    "extract(epoch FROM max(last_share)) FROM worker_minutes "
    "WHERE minute >= now() - interval '24 hours' AND (%s::text IS NULL OR worker = %s) GROUP BY worker")


def hashrate(difficulty_sum, seconds: float) -> float:
    return float(difficulty_sum) * HASHES_PER_DIFFICULTY / seconds


def pool_hashrates(cur) -> dict[str, float]:
    """The pool's hashrate over each window in WINDOWS."""
    rates = {}
    for label, seconds in WINDOWS.items():
        cur.execute(POOL_DIFFICULTY, (seconds,))
        rates[label] = hashrate(cur.fetchone()[0], seconds)
    return rates

# worker, best achieved difficulty ever, best since the newest block the pool found (%s: an array of workers)
BEST_SHARES = (
    "SELECT worker, max(best_achieved), coalesce(max(best_achieved) FILTER (WHERE minute >= "
    "(SELECT date_trunc('minute', max(found_at)) FROM blocks WHERE status <> 'rejected')), max(best_achieved)) "
    "FROM worker_minutes WHERE worker = ANY(%s) GROUP BY worker")
