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

# The hashrate windows of ckpool's user and worker stats (hashrate1m ... hashrate7d), in seconds.
SPAN_WINDOWS = {"1m": 60, "5m": 300, "1hr": 3600, "1d": 86400, "7d": 604800}


def _span_columns() -> str:
    """For each SPAN_WINDOWS window of N seconds: the difficulty of the rollup minutes that cover the last N seconds
    (from the minute holding now - N, so at least N seconds of shares even in the first second of a minute) and the
    seconds those minutes span up to now. hashrate(difficulty, seconds) is then unbiased for any N, even 60."""
    columns = []
    for seconds in SPAN_WINDOWS.values():
        start = f"date_trunc('minute', now() - interval '{seconds} seconds')"
        columns.append(f"coalesce(sum(difficulty_sum) FILTER (WHERE minute >= {start}), 0), "
                       f"extract(epoch FROM now() - {start})")
    return ", ".join(columns)


def user_patterns(spellings: list[str]) -> list[str]:
    """LIKE patterns for the logins of a user: `USER.anything`, the user's text escaped."""
    escaped = (s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for s in spellings)
    return [f"{s}.%" for s in escaped]


# The workers of one user (a login is USER[.WORKER]), each with: accepted, rejected (24 h), difficulty over
# RECENT_SECONDS, last share (epoch), whether it has a row in the last 24 h, its difficulty ever, then the
# SPAN_WINDOWS pairs (difficulty, seconds). %s four times: two spellings of the user (an address may be
# written in upper or lower case: see gstratum.mining.address.normalize_address) and their user_patterns. The
# prefix match uses worker_minutes_user_idx (text_pattern_ops): it reads that user's rows only, in any collation.
USER_WORKERS = (
    "SELECT worker, coalesce(sum(accepted) FILTER (WHERE minute >= now() - interval '24 hours'), 0), "
    "coalesce(sum(rejected) FILTER (WHERE minute >= now() - interval '24 hours'), 0), "
    f"coalesce(sum(difficulty_sum) FILTER (WHERE minute >= now() - interval '{RECENT_SECONDS} seconds'), 0), "
    "extract(epoch FROM max(last_share)), max(minute) >= now() - interval '24 hours', sum(difficulty_sum), "
    f"{_span_columns()} "
    "FROM worker_minutes WHERE worker = %s OR worker = %s OR worker LIKE %s OR worker LIKE %s GROUP BY worker")
