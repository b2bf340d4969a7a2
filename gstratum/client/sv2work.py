"""Client-side mining on a Stratum V2 channel: the CPU miner searches the channel's active job, shares go out with
sequence numbers, and their answers (one SubmitShares.Success may cover several) are matched as they come.

Used by `python -m gstratum client --protocol v2 --mine`, by the tests, and by the load tool.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

from gstratum.client.miner import search_nonce
from gstratum.client.sv2 import Channel, Job, ShareOutcome, Sv2Client
from gstratum.client.work import VERSION_ROLLING_MASK, MiningReport
from gstratum.mining.bitcoin import sha256d
from gstratum.protocol.sv2.codec import SetupConnectionSuccessFlags

_HEADER_FIELDS = struct.Struct("<I")
_ROLLABLE = 0x7FFF          # rolled values: bits 13..27 of the mask (bit 28 may be a deployment's, as in V1's miner)


@dataclass(slots=True)
class Sv2Share:
    """A share the CPU miner found: what SubmitShares carries, plus its hash."""

    channel_id: int
    job_id: int
    nonce: int
    ntime: int
    version: int                # the full header version hashed (rolled bits included)
    extranonce: bytes | None    # the miner's part on an extended channel; None on a standard one
    hash_int: int
    block: bool                 # the hash meets the network target (nbits) too
    sequence_number: int | None = None


@dataclass
class Sv2MiningReport(MiningReport):
    submitted: int = 0
    blocks: int = 0                     # shares whose hash also met the network target
    unanswered: int = 0                 # shares with no answer when mining stopped
    stopped: str = ""                   # why mining stopped early ("reconnect", "channel closed"), if it did
    round_trips: list[float] = field(default_factory=list)


def merkle_root(job: Job, extranonce_prefix: bytes, extranonce: bytes) -> bytes:
    """An extended job's merkle root (internal order): the coinbase's txid folded with the path."""
    root = sha256d(job.coinbase_tx_prefix + extranonce_prefix + extranonce + job.coinbase_tx_suffix)
    for step in job.merkle_path:
        root = sha256d(root + step)
    return root


def header_prefix(job: Job, root: bytes, version: int, ntime: int) -> bytes:
    """The header's first 76 bytes: version, prev_hash, merkle root, ntime, nbits (all as any miner lays them)."""
    prevhash = job.prevhash
    return (_HEADER_FIELDS.pack(version) + prevhash.prev_hash + root + _HEADER_FIELDS.pack(ntime)
            + _HEADER_FIELDS.pack(prevhash.nbits))


class ChannelWork:
    """The CPU miner on one channel's active job. Every search hashes a unit of work no earlier search of this
    channel hashed: a fresh extranonce on an extended channel, a fresh rolled version when rolling, otherwise the
    next range of nonces of the job (the cursor lives on the Channel, so a second `mine()` call on the same channel
    never finds the same share again). It never rolls ntime, like the firmware.

    `version_rolling` rolls inside 1fffe000 (bits 13..27) where the pool allows it: an extended job's
    version_rolling_allowed, a standard channel unless SetupConnection.Success said REQUIRES_FIXED_VERSION."""

    def __init__(self, channel: Channel, version_rolling: bool = False, fixed_version: bool = False,
                 mask: int = VERSION_ROLLING_MASK) -> None:
        self.channel = channel
        self.version_rolling = version_rolling
        self.fixed_version = fixed_version
        self.mask = mask

    def rolls(self, job: Job) -> bool:
        if not self.version_rolling:
            return False
        return job.version_rolling_allowed if job.extended else not self.fixed_version

    def search(self, tries: int) -> tuple[Sv2Share | None, int]:
        """Try up to `tries` nonces on the active job: (share or None, hashes done)."""
        channel = self.channel
        job = channel.active
        if job is None:
            return None, 0
        version = job.version
        extranonce = None
        start = 0
        unit = channel.searches = channel.searches + 1
        if job.extended:
            extranonce = (unit % (1 << (8 * channel.extranonce_size))).to_bytes(channel.extranonce_size, "big")
            root = merkle_root(job, channel.extranonce_prefix, extranonce)
        else:
            root = job.merkle_root
        if self.rolls(job):
            version = job.version ^ ((unit % _ROLLABLE + 1) << 13 & self.mask & ~(1 << 28))
        elif not (job.extended and channel.extranonce_size):
            # nothing else varies: continue this job's nonces where the last search stopped
            if channel.nonce_cursor[0] == job.job_id:
                start = channel.nonce_cursor[1]
            if start >= 1 << 32:
                return None, 0
        found = search_nonce(header_prefix(job, root, version, job.ntime), channel.target, start, tries)
        if found is None:
            channel.nonce_cursor = (job.job_id, start + tries)
            return None, tries
        nonce, value = found
        channel.nonce_cursor = (job.job_id, nonce + 1)
        return (Sv2Share(channel.channel_id, job.job_id, nonce, job.ntime, version, extranonce, value,
                         value <= job.prevhash.network_target), nonce - start + 1)


def submit(client: Sv2Client, share: Sv2Share) -> int:
    """Send a share on its channel; returns (and records on it) its sequence number."""
    if share.extranonce is None:
        sequence = client.submit_standard(share.channel_id, share.job_id, share.nonce, share.ntime, share.version)
    else:
        sequence = client.submit_extended(share.channel_id, share.job_id, share.nonce, share.ntime, share.version,
                                          share.extranonce)
    share.sequence_number = sequence
    return sequence


def mine(client: Sv2Client, channel: Channel, duration: float, max_shares: int | None = None, on_result=None,
         version_rolling: bool = False, ack_timeout: float = 5.0, tries: int = 20_000) -> Sv2MiningReport:
    """Mine `channel`'s jobs at its target for `duration` seconds (or until `max_shares` are sent), then wait up to
    `ack_timeout` for the answers still due. New blocks may arrive at any time: a share found on a job the pool has
    since replaced is sent anyway and comes back 'stale-share', as it would from any miner. Stops early when the
    pool sends Reconnect or closes the channel. `on_result(share, outcome)` is called as each answer arrives."""
    report = Sv2MiningReport()
    setup = client.state.setup
    fixed = bool(setup and setup.flags & SetupConnectionSuccessFlags.REQUIRES_FIXED_VERSION)
    work = ChannelWork(channel, version_rolling, fixed)
    sent: dict[int, Sv2Share] = {}
    started = time.monotonic()

    def settle() -> None:
        for outcome in client.take_outcomes():
            share = sent.pop(outcome.sequence_number, None) if outcome.channel_id == channel.channel_id else None
            if share is None:
                continue
            _count(report, outcome)
            if on_result is not None:
                on_result(share, outcome)

    def interrupted() -> bool:
        if client.state.reconnect is not None:
            report.stopped = "reconnect"
        elif channel.closed is not None:
            report.stopped = "channel closed"
        return bool(report.stopped)

    while time.monotonic() - started < duration and (max_shares is None or report.submitted < max_shares):
        client.poll()
        settle()
        if interrupted():
            break
        if channel.active is None:
            try:
                client.read_message(min(1.0, max(duration - (time.monotonic() - started), 0.001)))
            except socket.timeout:
                pass
            continue
        share, hashes = work.search(tries)
        report.hashes += hashes
        if share is not None:
            sent[submit(client, share)] = share
            report.submitted += 1
            report.blocks += share.block
    deadline = time.monotonic() + ack_timeout
    while sent and not interrupted():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            client.read_message(left)
        except socket.timeout:
            break
        settle()
    settle()
    report.unanswered = len(sent)
    report.seconds = time.monotonic() - started
    return report


def _count(report: Sv2MiningReport, outcome: ShareOutcome) -> None:
    report.round_trips.append(outcome.round_trip)
    if outcome.accepted:
        report.accepted += 1
    else:
        report.rejected[outcome.error_code] = report.rejected.get(outcome.error_code, 0) + 1
