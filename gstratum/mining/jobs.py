"""Jobs: what a miner works on, where they come from (a JobSource) and the book of jobs still live.

A Job's mining.notify line is encoded once, when first needed, and shared by every miner it is sent to.
"""
from __future__ import annotations

import dataclasses
import itertools
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

from gstratum.mining import bitcoin

POOL_TAG = b"/gstratum/"
DEFAULT_NBITS = 0x1D00FFFF  # network difficulty 1: shares at the tiny test difficulties are rarely "blocks"
# Where payouts go when the operator configures nothing: OP_TRUE (anyone-can-spend; fine for randomized jobs).
DEFAULT_PAYOUT_SCRIPT = bytes([0x51])
BLOCK_SUBSIDY = 312_500_000


@dataclass(eq=False)
class Job:
    job_id: str
    prevhash: str           # as sent: the Stratum word-swapped hex
    coinb1: str
    coinb2: str
    merkle_branch: tuple[str, ...]
    version: str            # 8 hex, big-endian
    nbits: str              # 8 hex, big-endian
    ntime: str              # 8 hex, big-endian
    clean_jobs: bool
    height: int
    created_at: float = field(default_factory=time.time)
    seq: int = 0            # order in which this process's job book took the job (set by JobBook.add)
    block: object = field(default=None, repr=False)        # gstratum.mining.template.BlockTemplate of a node's job
    coinbase_for: Callable[[bytes], tuple[bytes, bytes]] | None = field(default=None, repr=False)   # solo
    payout: object = field(default=None, repr=False)      # PPLNS: the split its coinbase pays (storage.pplns.JobPayout)
    encoded: dict = field(default_factory=dict, repr=False)   # each protocol's encodings, once per job (V1 lines, V2 frames)
    base: "Job | None" = field(default=None, repr=False)     # the job a payout variant was made from
    _template: object = field(default=None, repr=False)
    _variants: dict = field(default_factory=dict, repr=False)

    def for_payout(self, script: bytes | None) -> "Job":
        """The job as a miner paid by `script` gets it (solo: its own coinbase, same id and everything else). Built
        and encoded once per (job, script), shared by every miner of that script; the job itself without one."""
        if script is None or self.coinbase_for is None:
            return self
        variant = self._variants.get(script)
        if variant is None:
            coinb1, coinb2 = self.coinbase_for(script)
            variant = self._variants[script] = dataclasses.replace(
                self, coinb1=coinb1.hex(), coinb2=coinb2.hex(), coinbase_for=None, base=self, _template=None,
                _variants={}, encoded={})
        return variant

    @property
    def version_int(self) -> int:
        return int(self.version, 16)

    @property
    def ntime_int(self) -> int:
        return int(self.ntime, 16)

    @property
    def template(self):
        """The share-hashing template (gstratum.mining.shares.HeaderTemplate), decoded once per job."""
        if self._template is None:
            from gstratum.mining.shares import HeaderTemplate

            self._template = HeaderTemplate.from_stratum(self.prevhash, self.coinb1, self.coinb2,
                                                         list(self.merkle_branch), self.version, self.nbits)
        return self._template


JOB_FIELDS = ("job_id", "prevhash", "coinb1", "coinb2", "merkle_branch", "version", "nbits", "ntime", "clean_jobs",
              "height", "created_at")


def job_to_dict(job: Job) -> dict:
    return {name: (list(job.merkle_branch) if name == "merkle_branch" else getattr(job, name)) for name in JOB_FIELDS}


def job_from_dict(data: dict) -> Job:
    """A job published by the leader; raises ValueError/KeyError/TypeError on anything malformed."""
    values = {name: data[name] for name in JOB_FIELDS}
    values["merkle_branch"] = tuple(values["merkle_branch"])
    for name in ("job_id", "prevhash", "coinb1", "coinb2", "version", "nbits", "ntime"):
        if not isinstance(values[name], str):
            raise TypeError(f"job field {name} must be a string")
    bytes.fromhex(values["prevhash"] + values["coinb1"] + values["coinb2"] + values["version"] + values["nbits"]
                  + values["ntime"] + "".join(values["merkle_branch"]))
    return Job(**values)


class JobSource(Protocol):
    """Builds the next job. `previous` is the pool's current job (made here or heard from another process), so a
    job that is not clean continues the same block whoever made the one before it."""

    def next_job(self, clean_jobs: bool, previous: Job | None = None) -> Job: ...


class RandomJobSource:
    """Randomized but well-formed jobs: a real serialized coinbase around the extranonce, a real merkle branch
    over `fake_txs` random txids, version 0x20000000, ntime now, a random prevhash (new on clean jobs)."""

    def __init__(self, extranonce_size: int = 12, nbits: int = DEFAULT_NBITS, fake_txs: int = 0,
                 payout_script: bytes = DEFAULT_PAYOUT_SCRIPT, witness_commitment: bool = False,
                 clock=time.time) -> None:
        self.extranonce_size = extranonce_size
        self.nbits = nbits
        self.fake_txs = fake_txs
        self.payout_script = payout_script
        self.witness_commitment = witness_commitment
        self.clock = clock
        self._prefix = f"{secrets.randbits(32):08x}"  # job ids stay unique across processes and restarts
        self._counter = itertools.count(1)

    def next_job(self, clean_jobs: bool, previous: Job | None = None) -> Job:
        if clean_jobs or previous is None:
            height = previous.height + 1 if previous is not None else 800_000 + secrets.randbelow(100_000)
            prevhash = bitcoin.header_prevhash_to_stratum(secrets.token_bytes(32))
            clean_jobs = True
        else:
            height, prevhash = previous.height, previous.prevhash
        commitment = secrets.token_bytes(32) if self.witness_commitment else None
        coinb1, coinb2 = bitcoin.build_coinbase_parts(
            height, POOL_TAG, self.extranonce_size, [(BLOCK_SUBSIDY, self.payout_script)], commitment)
        txids = [secrets.token_bytes(32) for _ in range(self.fake_txs)]
        branch = tuple(h.hex() for h in bitcoin.merkle_branch_for_coinbase(txids))
        now = int(self.clock())
        return Job(
            job_id=f"{self._prefix}{next(self._counter):x}",
            prevhash=prevhash,
            coinb1=coinb1.hex(),
            coinb2=coinb2.hex(),
            merkle_branch=branch,
            version=f"{0x20000000:08x}",
            nbits=f"{self.nbits:08x}",
            ntime=f"{now:08x}",
            clean_jobs=clean_jobs,
            height=height,
            created_at=self.clock(),
        )


class JobBook:
    """The live jobs, newest last. A clean job makes all older jobs stale; otherwise the last `keep` stay valid."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self.latest_seq = 0

    @property
    def current(self) -> Job | None:
        if not self._jobs:
            return None
        return next(reversed(self._jobs.values()))

    def add(self, job: Job) -> None:
        self.latest_seq += 1
        job.seq = self.latest_seq
        if job.clean_jobs:
            self._jobs.clear()
        self._jobs[job.job_id] = job
        while len(self._jobs) > self.keep:
            self._jobs.popitem(last=False)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def by_seq(self, seq: int) -> Job | None:
        """The live job of that sequence number (Stratum V2 names jobs by a u32: ours is the sequence)."""
        for job in reversed(self._jobs.values()):
            if job.seq == seq:
                return job
            if job.seq < seq:
                return None
        return None

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest live job (latest_seq + 1 when there is none)."""
        return next(iter(self._jobs.values())).seq if self._jobs else self.latest_seq + 1

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def prevhashes(self) -> set[str]:
        """The blocks live jobs build on (as sent: Stratum's word-swapped hex); the share ledger keeps only those."""
        return {job.prevhash for job in self._jobs.values()}

    def __len__(self) -> int:
        return len(self._jobs)
