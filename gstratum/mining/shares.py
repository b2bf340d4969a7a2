"""Share hashing for one job: everything job-constant is decoded once, so a share costs the coinbase hash, the
branch fold and the header hash.

Byte order, as miners (cpuminer, cgminer, ASIC firmware) build the header from Stratum fields:
version, ntime, nbits and nonce are sent as big-endian hex of the uint32 and go into the header little-endian;
prevhash is sent word-swapped (see bitcoin.stratum_prevhash_to_header); the merkle root is in internal order.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Callable

from gstratum.mining import bitcoin
from gstratum.mining.bitcoin import difficulty_from_hash, stratum_prevhash_to_header
from gstratum.protocol.rpc import StratumCode

_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class ShareResult:
    hash_int: int
    header: bytes
    achieved_difficulty: float
    meets_share: bool
    is_block: bool


class HeaderTemplate:
    __slots__ = ("coinb1", "coinb2", "branch", "prevhash", "nbits", "version")

    def __init__(self, coinb1: bytes, coinb2: bytes, branch: tuple[bytes, ...], prevhash: bytes, nbits: bytes,
                 version: int) -> None:
        self.coinb1 = coinb1
        self.coinb2 = coinb2
        self.branch = branch
        self.prevhash = prevhash      # internal order, as in the header
        self.nbits = nbits            # 4 bytes, header order
        self.version = version        # the job's version as an int

    @classmethod
    def from_stratum(cls, prevhash: str, coinb1: str, coinb2: str, merkle_branch: list[str], version: str,
                     nbits: str) -> "HeaderTemplate":
        return cls(bytes.fromhex(coinb1), bytes.fromhex(coinb2), tuple(bytes.fromhex(h) for h in merkle_branch),
                   stratum_prevhash_to_header(prevhash), bytes.fromhex(nbits)[::-1], int(version, 16))

    def merkle_root(self, extranonce1: bytes, extranonce2: bytes) -> bytes:
        root = _sha256(_sha256(self.coinb1 + extranonce1 + extranonce2 + self.coinb2).digest()).digest()
        for step in self.branch:
            root = _sha256(_sha256(root + step).digest()).digest()
        return root

    def header_prefix(self, extranonce1: bytes, extranonce2: bytes, ntime: str, version: int) -> bytes:
        """The first 76 bytes (all but the nonce): what a miner hashes over and over."""
        return (struct.pack("<I", version) + self.prevhash + self.merkle_root(extranonce1, extranonce2)
                + bytes.fromhex(ntime)[::-1] + self.nbits)

    def header(self, extranonce1: bytes, extranonce2: bytes, ntime: str, nonce: str, version: int) -> bytes:
        return self.header_prefix(extranonce1, extranonce2, ntime, version) + bytes.fromhex(nonce)[::-1]

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


def judge(job, difficulty: float, extranonce1: bytes, extranonce2: str, ntime: str, nonce: str,
          version_bits: str | None, version_mask: int, now: float, accepted: set,
          network_target: Callable[[object], int] | None = None) -> Verdict:
    """The verdict on a well-formed share for a live job, in the order the protocol's error codes imply: ntime out
    of range 20, version bits outside the negotiated mask 20, duplicate 22, low difficulty 23. `accepted`: this
    miner's accepted shares of this job (the key of an accepted share is added to it). Pure: no clock, no I/O."""
    ntime_int = int(ntime, 16)
    if ntime_int < job.ntime_int or ntime_int > now + MAX_NTIME_AHEAD:
        return Verdict(StratumCode.OTHER, "ntime out of range")
    version = job.version_int
    if version_bits is not None:
        bits = int(version_bits, 16)
        if bits & ~version_mask:
            return Verdict(StratumCode.OTHER, "Version bits outside the negotiated mask")
        version = (version & ~version_mask) | (bits & version_mask)
    key = (extranonce2, ntime, nonce, version)
    if key in accepted:
        return Verdict(StratumCode.DUPLICATE_SHARE, "Duplicate share")
    template = job.template
    header = template.header(extranonce1, bytes.fromhex(extranonce2), ntime, nonce, version)
    hash_int = template.hash_int(header)
    achieved = difficulty_from_hash(hash_int)
    if hash_int > share_target(difficulty):
        return Verdict(StratumCode.LOW_DIFFICULTY, "Low difficulty share", achieved, header, hash_int)
    accepted.add(key)
    block = network_target is not None and hash_int <= network_target(job)
    return Verdict(None, "", achieved, header, hash_int, block)
