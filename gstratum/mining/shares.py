"""Share hashing for one job: everything job-constant is decoded once, so a share costs the coinbase hash, the
branch fold and the header hash.

Byte order, as miners (cpuminer, cgminer, ASIC firmware) build the header from Stratum fields:
version, ntime, nbits and nonce are sent as big-endian hex of the uint32 and go into the header little-endian;
prevhash is sent word-swapped (see bitcoin.stratum_prevhash_to_header); the merkle root is in internal order.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Callable

from gstratum.mining import bitcoin
from gstratum.mining.bitcoin import difficulty_from_hash, stratum_prevhash_to_header

_sha256 = hashlib.sha256


class StratumCode(enum.IntEnum):
    """Why a share or a request was refused, numbered as Stratum V1 numbers it (slush's table, used by cgminer,
    bfgminer and ckpool): the one list the verdict, the metrics and the writer's SQL use. The V2 front end maps each
    to its protocol's error string."""

    OTHER = 20
    JOB_NOT_FOUND = 21
    DUPLICATE_SHARE = 22
    LOW_DIFFICULTY = 23
    UNAUTHORIZED = 24
    NOT_SUBSCRIBED = 25

_UINT32 = struct.Struct("<I").pack


@dataclass(frozen=True, slots=True)
class ShareResult:
    hash_int: int
    header: bytes
    achieved_difficulty: float
    meets_share: bool
    is_block: bool


class HeaderTemplate:
    __slots__ = ("coinb1", "coinb2", "branch", "prevhash", "nbits", "version", "_coinb1_state")

    def __init__(self, coinb1: bytes, coinb2: bytes, branch: tuple[bytes, ...], prevhash: bytes, nbits: bytes,
                 version: int) -> None:
        self.coinb1 = coinb1
        self.coinb2 = coinb2
        self.branch = branch
        self.prevhash = prevhash      # internal order, as in the header
        self.nbits = nbits            # 4 bytes, header order
        self.version = version        # the job's version as an int
        self._coinb1_state = _sha256(coinb1)   # SHA-256 over coinb1, once: each coinbase hash resumes from here

    @classmethod
    def from_stratum(cls, prevhash: str, coinb1: str, coinb2: str, merkle_branch: list[str], version: str,
                     nbits: str) -> "HeaderTemplate":
        return cls(bytes.fromhex(coinb1), bytes.fromhex(coinb2), tuple(bytes.fromhex(h) for h in merkle_branch),
                   stratum_prevhash_to_header(prevhash), bytes.fromhex(nbits)[::-1], int(version, 16))

    def merkle_root(self, extranonce1: bytes, extranonce2: bytes) -> bytes:
        first = self._coinb1_state.copy()
        first.update(extranonce1 + extranonce2 + self.coinb2)
        root = _sha256(first.digest()).digest()
        for step in self.branch:
            root = _sha256(_sha256(root + step).digest()).digest()
        return root

    def header_prefix(self, extranonce1: bytes, extranonce2: bytes, ntime: str, version: int) -> bytes:
        """The first 76 bytes (all but the nonce): what a miner hashes over and over."""
        return (struct.pack("<I", version) + self.prevhash + self.merkle_root(extranonce1, extranonce2)
                + bytes.fromhex(ntime)[::-1] + self.nbits)

    def header(self, extranonce1: bytes, extranonce2: bytes, ntime: str, nonce: str, version: int) -> bytes:
        return self.header_prefix(extranonce1, extranonce2, ntime, version) + bytes.fromhex(nonce)[::-1]

    def header_from_root(self, merkle_root: bytes, ntime: int, nonce: int, version: int) -> bytes:
        """The 80-byte header from integers (the server's path: no hex on the way)."""
        return (_UINT32(version & 0xFFFFFFFF) + self.prevhash + merkle_root + _UINT32(ntime) + self.nbits
                + _UINT32(nonce))

    @staticmethod
    def hash_int(header: bytes) -> int:
        """sha256d(header) read as a little-endian integer: what is compared with a target."""
        return int.from_bytes(_sha256(_sha256(header).digest()).digest(), "little")


def check_share(template: HeaderTemplate, extranonce1: bytes, extranonce2: bytes, ntime: str, nonce: str,
                version: int, share_target: int, network_target: int) -> ShareResult:
    header = template.header(extranonce1, extranonce2, ntime, nonce, version)
    value = template.hash_int(header)
    return ShareResult(value, header, difficulty_from_hash(value), value <= share_target, value <= network_target)


MAX_NTIME_AHEAD = 7200


@functools.lru_cache(maxsize=4096)
def share_target(difficulty: float) -> int:
    """Difficulty -> target, exact and computed once per distinct difficulty (Fraction arithmetic is slow)."""
    return bitcoin.target_from_difficulty(difficulty)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one share is worth. `code` None: accepted; else the Stratum error code and its message."""

    code: int | None
    message: str = ""
    achieved: float | None = None      # the difficulty the hash met (None when it was never hashed)
    header: bytes | None = None
    hash_int: int | None = None
    block: bool = False                # the hash also met the network target


def rolled_versions(job_version: int, bits: int, mask: int) -> tuple[int, ...] | None:
    """The header versions a miner may have hashed when it submits `bits` (BIP310's version_bits); None when the
    bits reach outside the negotiated mask.

    Miners follow two conventions. BIP310's: the submitted bits replace the job's bits inside the mask
    (cgminer, bmminer, cpuminer). The Bitaxe's ESP-Miner submits only the bits it changed (rolled version XOR the
    job's). Both agree while the template has no bit inside the mask; once the node signals a deployment on a bit
    the mask covers (bit 28 of 1fffe000: a real Core regtest past height 144, and mainnet whenever a deployment
    uses it), the first reading drops that bit from a delta miner's header and every one of its shares misses.
    So both are tried, BIP310's first. A full 32-bit version whose bits outside the mask are the job's is taken as
    the header's version as it stands."""
    outside = bits & ~mask & 0xFFFFFFFF
    if outside:
        if outside != job_version & ~mask & 0xFFFFFFFF:
            return None
        return (bits,)
    replaced = (job_version & ~mask) | bits
    if not job_version & mask:
        return (replaced,)
    changed = job_version ^ bits
    return (replaced,) if changed == replaced else (replaced, changed)


def judge(job, difficulty: float, extranonce1: bytes, extranonce2: bytes, ntime: int, nonce: int,
          version_bits: int | None, version_mask: int, now: float, ledger,
          network_target: Callable[[object], int] | None = None, merkle_root: bytes | None = None) -> Verdict:
    """The verdict on a well-formed share for a live job, in the order the protocol's error codes imply: ntime out
    of range 20, version bits outside the negotiated mask 20, duplicate 22, low difficulty 23. `ledger`
    (gstratum.mining.ledger.ShareLedger): the work already credited, to which an accepted share is added.
    Pure: no clock, no I/O; protocol-free (V1 parses hex into these values, V2 has them as integers).
    `merkle_root`: the root of this extranonce's coinbase when the caller knows it already (a V2 standard
    channel's, computed once per job when the job was sent): the coinbase and branch are not hashed again."""
    if ntime < job.ntime_int or ntime > now + MAX_NTIME_AHEAD:
        return Verdict(StratumCode.OTHER, "ntime out of range")
    if version_bits is None:
        versions = (job.version_int,)
    else:
        versions = rolled_versions(job.version_int, version_bits, version_mask)
        if versions is None:
            return Verdict(StratumCode.OTHER, "Version bits outside the negotiated mask")
    template = job.template
    root = merkle_root or template.merkle_root(extranonce1, extranonce2)
    target = share_target(difficulty)
    prevhash = job.prevhash
    first = None
    for version in versions:
        header = template.header_from_root(root, ntime, nonce, version)
        hash_int = _hash_int(header)
        if ledger.seen(prevhash, extranonce1, hash_int):
            return Verdict(StratumCode.DUPLICATE_SHARE, "Duplicate share")
        if hash_int <= target:
            ledger.claim(prevhash, extranonce1, hash_int)
            block = network_target is not None and hash_int <= network_target(job)
            return Verdict(None, "", difficulty_from_hash(hash_int), header, hash_int, block)
        if first is None:
            first = (header, hash_int)
    header, hash_int = first
    return Verdict(StratumCode.LOW_DIFFICULTY, "Low difficulty share", difficulty_from_hash(hash_int), header,
                   hash_int)


def _hash_int(header: bytes) -> int:
    return int.from_bytes(_sha256(_sha256(header).digest()).digest(), "little")
