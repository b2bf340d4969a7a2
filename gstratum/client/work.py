"""Client-side mining on a live connection: real shares found with the CPU miner, and deliberately bad ones.

Used by `python -m gstratum client --mine/--bad-shares`, by the tests, and by the load tool.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from gstratum.mining import bitcoin
from gstratum.client import StratumClient, StratumRejected
from gstratum.client.miner import find_share
from gstratum.mining.shares import HeaderTemplate


@dataclass
class MiningReport:
    accepted: int = 0
    rejected: dict = field(default_factory=dict)   # error code -> count
    hashes: int = 0
    seconds: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class FoundShare:
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    hash_int: int
    version_bits: str | None = None     # what mining.submit carries when versions are rolled


VERSION_ROLLING_MASK = 0x1FFFE000
ROLLING_CONVENTIONS = ("bip310", "delta")


class JobWork:
    """The current job as the miner sees it: template and extranonces, rebuilt when a new job arrives.

    `version_rolling` rolls the header version inside the negotiated mask like ASIC firmware does (bits 13..27,
    leaving the template's own bits as they are) and submits version_bits in one of the two conventions real miners
    use: "bip310" (the rolled version's bits inside the mask: cgminer, bmminer) or "delta" (only the bits changed,
    rolled XOR job version: the Bitaxe's ESP-Miner)."""

    def __init__(self, client: StratumClient, version_rolling: str | None = None,
                 mask: int = VERSION_ROLLING_MASK) -> None:
        if version_rolling not in (None, *ROLLING_CONVENTIONS):
            raise ValueError(f"version_rolling must be one of {ROLLING_CONVENTIONS}, got {version_rolling!r}")
        self.client = client
        self.params = None
        self.template = None
        self.version_rolling = version_rolling
        self.mask = mask
        self._rolls = itertools.count(1)


    def refresh(self) -> bool:
        params = self.client.state.job
        if params is None:
            return False
        if params is not self.params:
            self.params = params
            job_id, prevhash, coinb1, coinb2, branch, version, nbits, ntime, _ = params
            self.template = HeaderTemplate.from_stratum(prevhash, coinb1, coinb2, branch, version, nbits)
        return True

    def search(self, target: int, tries: int) -> tuple[FoundShare | None, int]:
        """Try `tries` nonces on a fresh extranonce2; (share or None, hashes done)."""
        sub = self.client.subscription
        job_id, _, _, _, _, version, _, ntime, _ = self.params
        size = sub.extranonce2_size
        en2 = (self.client.next_extranonce2() % (1 << (8 * size))).to_bytes(size, "big")
        job_version = int(version, 16)
        header_version, version_bits = job_version, None
        if self.version_rolling is not None:
            rolled = (next(self._rolls) % 0x7FFF + 1) << 13 & self.mask & ~(1 << 28)
            header_version = job_version ^ rolled
            version_bits = f"{rolled if self.version_rolling == 'delta' else header_version & self.mask:08x}"
        found = find_share(self.template, bytes.fromhex(sub.extranonce1), en2, ntime, header_version, target,
                           max_tries=tries)
        if found is None:
            return None, tries
        nonce, value = found
        return FoundShare(job_id, en2.hex(), ntime, nonce, value, version_bits), int(nonce, 16) + 1


def mine(client: StratumClient, worker: str, duration: float, max_shares: int | None = None,
         on_result=None, version_rolling: str | None = None) -> MiningReport:
    """Mine the server's jobs at the server's difficulty for `duration` seconds (or `max_shares` shares).
    `version_rolling` ("bip310" or "delta", see JobWork): negotiate BIP310 first and roll versions."""
    report = MiningReport()
    work = JobWork(client, version_rolling)
    started = time.monotonic()
    while time.monotonic() - started < duration and (max_shares is None or report.accepted + report.rejected_total
                                                      < max_shares):
        client.poll()
        if not work.refresh() or client.state.difficulty is None:
            client.read_message(1.0)
            continue
        share, hashes = work.search(bitcoin.target_from_difficulty(client.state.difficulty), 20_000)
        report.hashes += hashes
        if share is None:
            continue
        try:
            client.submit(worker, share.job_id, share.extranonce2, share.ntime, share.nonce, share.version_bits)
            report.accepted += 1
            outcome = True
        except StratumRejected as exc:
            report.rejected[exc.code] = report.rejected.get(exc.code, 0) + 1
            outcome = exc.code
        if on_result is not None:
            on_result(share, outcome)
    report.seconds = time.monotonic() - started
    return report


BAD_SHARES_MAX_DIFFICULTY = 0.01     # ~43 million hashes: under a minute for the CPU miner; difficulty 1 takes hours


class DifficultyTooHigh(Exception):
    """The checks need one valid share, and the CPU miner cannot find one at this difficulty in reasonable time."""


def bad_share_checks(client: StratumClient, worker: str, host: str, port: int) -> dict[str, tuple]:
    """Send each kind of invalid share (and one valid one); return {kind: (expected code, code received)},
    where None stands for "accepted"."""
    work = JobWork(client)
    while not work.refresh() or client.state.difficulty is None:
        client.read_message(5.0)
    if client.state.difficulty > BAD_SHARES_MAX_DIFFICULTY:
        raise DifficultyTooHigh(f"the server's difficulty {client.state.difficulty:g} is too high for the CPU miner to find "
                         f"the valid share these checks need (~{client.state.difficulty * 2**32 / 1e6:,.0f} million "
                         f"hashes); start the server with --difficulty 0.0001")
    target = bitcoin.target_from_difficulty(client.state.difficulty)
    job_id, _, _, _, _, version, _, ntime, _ = work.params
    results: dict[str, tuple] = {}

    def expect(kind: str, code: int | None, *params: str) -> None:
        try:
            client.call("mining.submit", list(params))
            results[kind] = (code, None)
        except StratumRejected as exc:
            results[kind] = (code, exc.code)

    good = None
    while good is None:
        good, _ = work.search(target, 200_000)
    expect("unauthorized worker", 24, "not-" + worker, good.job_id, good.extranonce2, good.ntime, good.nonce)
    expect("malformed extranonce2", 20, worker, good.job_id, "00", good.ntime, good.nonce)
    expect("malformed nonce", 20, worker, good.job_id, good.extranonce2, good.ntime, "xyz")
    expect("unknown job", 21, worker, "no-such-job", good.extranonce2, good.ntime, good.nonce)
    expect("ntime too early", 20, worker, good.job_id, good.extranonce2, f"{int(ntime, 16) - 1:08x}", good.nonce)
    expect("ntime too far ahead", 20, worker, good.job_id, good.extranonce2, f"{int(time.time()) + 7300:08x}",
           good.nonce)
    expect("version bits outside mask", 20, worker, good.job_id, good.extranonce2, good.ntime, good.nonce, "ffffffff")
    # a nonce whose hash misses the target (checked locally first)
    sub = client.subscription
    en1 = bytes.fromhex(sub.extranonce1)
    for candidate in range(int(good.nonce, 16) + 1, int(good.nonce, 16) + 1000):
        nonce = f"{candidate:08x}"
        header = work.template.header(en1, bytes.fromhex(good.extranonce2), good.ntime, nonce, int(version, 16))
        if work.template.hash_int(header) > target:
            expect("low difficulty", 23, worker, good.job_id, good.extranonce2, good.ntime, nonce)
            break
    expect("valid share", None, worker, good.job_id, good.extranonce2, good.ntime, good.nonce)
    expect("duplicate", 22, worker, good.job_id, good.extranonce2, good.ntime, good.nonce)
    with StratumClient(host, port, timeout=client.timeout) as fresh:
        try:
            fresh.call("mining.submit", [worker, job_id, good.extranonce2, good.ntime, good.nonce])
            results["not subscribed"] = (25, None)
        except StratumRejected as exc:
            results["not subscribed"] = (25, exc.code)
    return results
