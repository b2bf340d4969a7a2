"""ckpool's per-user stats JSON (`GET /users/ADDRESS`), so dashboards and firmware that read a ckpool user file
(solo.ckpool.org/users/ADDRESS: ckstats, miners' status pages) read gstratum unchanged. Pure: numbers in, the
document out.

The shape is what ckpool's stratifier.c writes to logs/users/USER once a minute (statsupdate; read back by
read_userstats), field by field with its jansson type:

    user:   hashrate1m, hashrate5m, hashrate1hr, hashrate1d, hashrate7d   strings (suffix_string, below)
            lastshare (int, epoch s), workers (int), shares (int64), bestshare (real), bestever (int64),
            authorised (int64, epoch s), then worker: [...]
    worker: workername (string), the five hashrates (strings), lastshare (int), shares (int64), bestshare (real),
            bestever (int64)

How gstratum fills them (from the worker_minutes rollup, the authorizations and the live process snapshots):
- hashrateN: Σ accepted difficulty × 2³² / seconds over the rollup minutes covering the last N (rollup.SPAN_WINDOWS);
  ckpool's are decaying averages over the same spans, formatted the same way.
- lastshare: the newest share's time; workers: the user's connections now (ckpool: its authorised clients).
- shares: accepted difficulty ever (ckpool adds each accepted share's difficulty to an int64), truncated.
- bestshare: the best share since the pool's last block (ckpool resets it when the pool solves a block);
  bestever: the best ever, truncated to an integer like ckpool's int64.
- authorised: the first accepted mining.authorize of any of the user's logins (ckpool: the first authorisation).
- worker[]: each login USER or USER.NAME with a share in the last WORKER_IDLE_SECONDS (ckpool drops a worker idle
  longer), workername the whole login as ckpool writes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

WORKER_IDLE_SECONDS = 600_000     # ckpool's statsupdate: "Drop storage of workers idle for 1 week"
HASHRATE_KEYS = {"1m": "hashrate1m", "5m": "hashrate5m", "1hr": "hashrate1hr", "1d": "hashrate1d", "7d": "hashrate7d"}


@dataclass(frozen=True, slots=True)
class WorkerStats:
    name: str
    hashrates: dict[str, float]   # rollup.SPAN_WINDOWS label -> hashes per second
    last_share: float | None      # epoch seconds
    shares: float                 # accepted difficulty ever
    best_share: float             # best achieved difficulty since the pool's last block
    best_ever: float


def suffix_string(value: float) -> str:
    """ckpool's libckpool.c suffix_string(val, buf, 16, 0): below 1000 the integer part ("532"), else three
    significant digits and an SI letter ("2.18T", "1e+03K" just below a million, as C's %.3g writes it)."""
    for threshold, letter in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= threshold:
            return "%.3g%s" % (value / threshold, letter)
    return "%d" % max(int(value), 0)


def _hashrates(rates: dict[str, float]) -> dict[str, str]:
    return {key: suffix_string(rates.get(label, 0.0)) for label, key in HASHRATE_KEYS.items()}


def user_document(workers: list[WorkerStats], connections: int, authorised: float | None, now: float) -> dict:
    """The user file's fields in ckpool's order. `workers`: every login of the user; the user's numbers add up all
    of them, its worker[] lists those with a share within WORKER_IDLE_SECONDS of `now`."""
    rates = {label: sum(w.hashrates.get(label, 0.0) for w in workers) for label in HASHRATE_KEYS}
    last = max((w.last_share for w in workers if w.last_share), default=0)
    listed = [w for w in sorted(workers, key=lambda w: w.name)
              if w.last_share and now - w.last_share <= WORKER_IDLE_SECONDS]
    return {**_hashrates(rates), "lastshare": int(last), "workers": int(connections),
            "shares": int(sum(w.shares for w in workers)),
            "bestshare": float(max((w.best_share for w in workers), default=0.0)),
            "bestever": int(max((w.best_ever for w in workers), default=0.0)),
            "authorised": int(authorised or 0),
            "worker": [{"workername": w.name, **_hashrates(w.hashrates), "lastshare": int(w.last_share or 0),
                        "shares": int(w.shares), "bestshare": float(w.best_share), "bestever": int(w.best_ever)}
                       for w in listed]}


def encode(document: dict) -> bytes:
    """As ckpool writes the file: indented by one space, one field a line, a newline at the end."""
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()
