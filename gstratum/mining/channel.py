"""What every wire protocol shares about mining: a channel of work to one miner, and the pool's side of each share.

A Stratum V1 connection and a Stratum V2 channel differ in framing and message shapes only. Both hold a `Channel`
(extranonce1, the difficulty each job was sent at, vardiff, the negotiated version mask, the payout script) and
hand every share to the one `MiningCore`, which looks the job up, judges it (`judge`, the one verdict), keeps the
pool's one credit per share (the process-wide `ShareLedger`), builds its row, counts it and notices a block. The
core returns what should happen (`ShareOutcome`: verdict, row, found block, a vardiff proposal); the front ends turn
that into their own replies, and the glue does the I/O. Pure: no clock of its own, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gstratum.mining.jobs import Job, JobBook
from gstratum.mining.ledger import ShareLedger
from gstratum.mining.difficulty import DifficultySchedule
from gstratum.mining.shares import StratumCode, judge
from gstratum.mining.vardiff import Vardiff, VardiffPolicy

Row = tuple[str, tuple]


@dataclass(frozen=True, slots=True)
class FoundBlock:
    """A share that also met the network target: everything needed to assemble, submit and record the block."""

    job: Job                 # the job as this miner got it (solo: its own coinbase variant)
    worker: str
    connection_id: str
    header: bytes            # the 80 bytes the miner hashed
    hash_int: int
    coinbase: bytes          # the coinbase's legacy serialization: coinb1 + extranonce1 + extranonce2 + coinb2

    @property
    def block_hash(self) -> str:
        """Display order, as nodes and explorers show it."""
        return self.hash_int.to_bytes(32, "little")[::-1].hex()

    @property
    def height(self) -> int:
        return self.job.height

    @property
    def job_id(self) -> str:
        return self.job.job_id


@dataclass(slots=True)
class ShareOutcome:
    """What one share came to. `code` None: accepted."""

    code: int | None
    message: str
    difficulty: float                   # the difficulty the job was sent at
    achieved: float | None = None
    row: Row | None = None
    block: FoundBlock | None = None
    retarget: float | None = None       # a new difficulty vardiff proposes after this accepted share


class Output:
    """What handling one message asks of the connection glue, in order: bytes to send, rows to record, blocks to
    submit. Lists are made only when something is added (most requests add one reply and at most one row)."""

    __slots__ = ("send", "rows", "blocks")

    def __init__(self, send: list[bytes] | None = None) -> None:
        self.send: list[bytes] = send if send is not None else []
        self.rows: list[Row] = _EMPTY
        self.blocks: list[FoundBlock] = _EMPTY

    def row(self, row: Row | None) -> None:
        if row is not None:
            if self.rows is _EMPTY:
                self.rows = []
            self.rows.append(row)

    def block(self, block: FoundBlock | None) -> None:
        if block is not None:
            if self.blocks is _EMPTY:
                self.blocks = []
            self.blocks.append(block)

    def extend(self, other: "Output") -> None:
        self.send.extend(other.send)
        for row in other.rows:
            self.row(row)
        for block in other.blocks:
            self.block(block)


_EMPTY: list = []      # shared, never appended to (Output.row/block replace it first)


class Channel:
    """One stream of work to one miner: the part of a V1 session or a V2 channel that has nothing to do with the
    wire. Not thread-safe; driven by its connection's greenlet (and the broadcaster)."""

    __slots__ = ("connection_id", "extranonce1", "schedule", "vardiff", "version_mask", "payout_script")

    def __init__(self, connection_id: str, difficulty: float, vardiff: VardiffPolicy, now: float) -> None:
        self.connection_id = connection_id
        self.extranonce1 = b""                  # V1's extranonce1, V2's extranonce prefix
        self.schedule = DifficultySchedule(difficulty)
        self.vardiff = Vardiff(vardiff, now)
        self.version_mask = 0
        self.payout_script: bytes | None = None  # solo: the coinbase this miner's jobs pay

    @property
    def difficulty(self) -> float:
        """The difficulty the next job is sent at."""
        return self.schedule.current


@dataclass
class MiningCore:
    """The pool's side of every share, whichever protocol carried it. `recorder` builds rows
    (gstratum.storage.records.Recorder); `metrics` and `stats` are plain counters."""

    jobs: JobBook
    ledger: ShareLedger
    recorder: Any
    metrics: Any
    stats: Any
    network_target: Callable[[Job], int] | None = None

    def submit(self, channel: Channel, worker: str, job_id: str, extranonce2: bytes, ntime: int, nonce: int,
               version_bits: int | None, now: float, text: tuple | None = None,
               address: str | None = None, merkle_root: bytes | None = None) -> ShareOutcome:
        """Judge a well-formed share from an authorized worker of `channel` and account for it. `text`: the
        (extranonce2, ntime, nonce, version_bits) hex strings as the row stores them, when the front end has them
        already (V1); else they are formatted here (V2). `address`: PPLNS, the address the worker's login names,
        which an accepted share credits. `merkle_root`: this job's root for this extranonce when the front end
        computed it already (see `judge`)."""
        job, difficulty = channel.schedule.lookup(job_id, self.jobs)
        if job is None:
            return self._rejected(channel, worker, job_id, StratumCode.JOB_NOT_FOUND, "Job not found (stale)",
                                  difficulty, None, now, text or _text(extranonce2, ntime, nonce, version_bits))
        job = job.for_payout(channel.payout_script)
        verdict = judge(job, difficulty, channel.extranonce1, extranonce2, ntime, nonce, version_bits,
                        channel.version_mask, now, self.ledger, self.network_target, merkle_root)
        fields = text or _text(extranonce2, ntime, nonce, version_bits)
        if verdict.code is not None:
            return self._rejected(channel, worker, job_id, verdict.code, verdict.message, difficulty,
                                  verdict.achieved, now, fields)
        row = self.recorder.share_row(channel.connection_id, worker, job_id[:64], *fields, difficulty,
                                      verdict.achieved, None, now, address)
        metrics = self.metrics
        metrics.share(None)
        metrics.accepted_difficulty += difficulty
        self.stats.share(worker, True, difficulty, now)
        channel.vardiff.note_share()
        block = None
        if verdict.block:
            metrics.blocks += 1
            block = FoundBlock(job, worker, channel.connection_id, verdict.header, verdict.hash_int,
                               job.template.coinb1 + channel.extranonce1 + extranonce2 + job.template.coinb2)
        return ShareOutcome(None, "", difficulty, verdict.achieved, row, block,
                            channel.vardiff.proposal(channel.difficulty, now))

    def _rejected(self, channel: Channel, worker: str, job_id: str, code: int, message: str, difficulty: float,
                  achieved: float | None, now: float, fields: tuple) -> ShareOutcome:
        row = self.recorder.share_row(channel.connection_id, worker, job_id[:64], *fields, difficulty, achieved,
                                      code, now)
        self.metrics.share(code)
        self.stats.share(worker, False, difficulty, now)
        return ShareOutcome(code, message, difficulty, achieved, row)

    def malformed(self, channel: Channel, worker: str, job_id: str, message: str, now: float) -> ShareOutcome:
        """A share from an authorized worker whose fields could not be read: recorded as error 20."""
        return self._rejected(channel, worker, job_id, StratumCode.OTHER, message, channel.difficulty, None, now,
                              (None, None, None, None))

    def stale(self, channel: Channel, worker: str, job_id: str, now: float) -> ShareOutcome:
        """A share on a job no longer live (a front end that can tell stale from unknown: V2's numbered jobs)."""
        return self._rejected(channel, worker, job_id, StratumCode.JOB_NOT_FOUND, "Job not found (stale)",
                              channel.difficulty, None, now, (None, None, None, None))

    def unauthorized(self, code: int) -> None:
        """A share from a connection that has not subscribed (25) or a worker it never authorized (24): counted,
        never stored. Such shares are nobody's work, and a row each would let one client grow the shares table
        without bound."""
        self.metrics.share(code)


def _text(extranonce2: bytes, ntime: int, nonce: int, version_bits: int | None) -> tuple:
    return (extranonce2.hex(), f"{ntime:08x}", f"{nonce:08x}",
            None if version_bits is None else f"{version_bits:08x}")
