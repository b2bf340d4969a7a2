#!/usr/bin/env python3
"""PPLNS accounting cost: a window of 1,000,000 shares over 5,000 addresses, kept share by share, and one split.

    .venv/bin/python scripts/bench_pplns.py [--shares 1000000] [--addresses 5000] [--coinbase-sizes]

Prints the time to append the shares (nothing trimmed yet), to append more at steady state (each share trims about
one), to lower the target (a bulk trim), to take a snapshot, and to split with a balance for every address and
--pplns-max-outputs at its default. --coinbase-sizes prints, for N payees, gstratum's worst-case coinbase, its
mining.notify line and a Stratum V2 NewExtendedMiningJob (the sizes tests/test_pplns.py holds the default to).
Pure CPU, one process, no network.
"""
from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gstratum.mining import pplns  # noqa: E402

VARDIFF = [256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 0.5, 1.5, 3000.25]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, action, count: int | None = None):
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    per = f"  ({seconds / count * 1e6:.2f} µs each)" if count else ""
    print(f"{label:<52} {seconds * 1000:10.1f} ms{per}")
    return result


def shares(rng: random.Random, addresses: list[str], count: int, start: datetime, weights: list[float]):
    """(address, difficulty, time) oldest first: addresses drawn by a skewed hashrate, one vardiff each."""
    picks = rng.choices(range(len(addresses)), weights=weights, k=count)
    step = timedelta(microseconds=1000)
    return [(addresses[i], VARDIFF[i % len(VARDIFF)], start + step * n) for n, i in enumerate(picks)]


def reference_loop() -> None:
    """This machine's speed right now, for comparing runs: an idle 2020s core does about 0.03-0.05 µs a turn."""
    def loop():
        total = 0
        for i in range(1_000_000):
            total += i * i
        return total
    timed("reference loop (1,000,000 x `total += i * i`)", loop, 1_000_000)


def bench(count: int, address_count: int) -> None:
    reference_loop()
    rng = random.Random(1)
    addresses = [f"bc1q{i:036d}" for i in range(address_count)]
    weights = [1 / (1 + i) ** 0.8 for i in range(address_count)]
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    first = shares(rng, addresses, count, start, weights)
    total = sum(Decimal(repr(difficulty)) for _, difficulty, _ in first)
    print(f"{count:,} shares over {address_count:,} addresses, difficulty total {total:.6E}; RSS {rss_mib():.0f} MiB")

    window = pplns.Window(total * 10)       # nothing is trimmed while the first shares go in
    timed(f"append {count:,} shares (no trim)", lambda: [window.append(*share) for share in first], count)
    print(f"{'':<52} window: {window.shares:,} shares, {window.addresses:,} addresses; RSS {rss_mib():.0f} MiB")

    timed("set_target to the total (same window)", lambda: window.set_target(total))
    more = shares(rng, addresses, count // 10, first[-1][2] + timedelta(seconds=1), weights)
    timed(f"append {len(more):,} more at steady state (each trims)", lambda: [window.append(*s) for s in more],
          len(more))
    print(f"{'':<52} window: {window.shares:,} shares, {window.kept:,} kept; RSS {rss_mib():.0f} MiB")
    timed("lower the target by 10 % (bulk trim)", lambda: window.set_target(window.target * 9 / 10))
    print(f"{'':<52} window: {window.shares:,} shares, {window.kept:,} kept")

    snapshot = timed("snapshot", lambda: window.snapshot(datetime.now(timezone.utc)))
    balances = {address: rng.randrange(0, 2_000_000) for address in addresses}
    reward = 312_500_000 + 4_321_987
    result = timed(f"split ({len(snapshot.weights):,} in window, {len(balances):,} balances, "
                   f"max {pplns.DEFAULT_MAX_OUTPUTS})",
                   lambda: pplns.split(reward, "2", snapshot.weights, balances, pplns.DEFAULT_MIN_OUTPUT,
                                       pplns.DEFAULT_MAX_OUTPUTS, payout_address="bc1qpool"))
    timed("conserves() check", result.conserves)
    print(f"{'':<52} {len(result.outputs)} outputs, fee output {result.outputs[-1].amount:,} sat, "
          f"{sum(1 for d in result.deltas.values() if d > 0):,} credits carried; RSS {rss_mib():.0f} MiB")
    reference_loop()


def coinbase_sizes() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_pplns import coinbase_sizes as sizes

    print("payees  coinbase  coinb2 hex  notify line  V2 job payload   (all P2TR, 100-byte scriptSig, 16 branches)")
    for payees in (0, 1, 5, 10, 15, 20, 25, 30, 40, 50, 100, 150, 180):
        row = sizes(payees)
        print(f"{payees:6d}  {row['coinbase']:8,d}  {row['coinb2_hex']:10,d}  {row['line']:11,d}  "
              f"{row['v2_payload']:14,d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=1_000_000)
    parser.add_argument("--addresses", type=int, default=5_000)
    parser.add_argument("--coinbase-sizes", action="store_true")
    args = parser.parse_args()
    if args.coinbase_sizes:
        coinbase_sizes()
    else:
        bench(args.shares, args.addresses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
