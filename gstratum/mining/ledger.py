"""One credit per share, for the whole process: the accepted shares of live work, keyed by the header they hash.

A duplicate is the same work presented twice, however it arrives: on the same connection, on a connection that
resumed the session (same extranonce1), under another job id whose coinbase happens to be identical (a template
refreshed without new transactions), or under the id a retarget re-sent the job with. What all of these share is
the 80-byte header the miner hashed, so that is the key: (block the work builds on, extranonce1, header hash).
ckpool keeps the same kind of table for its single process; here the table outlives every Session, so a session
resumed on this process sees what its previous connections submitted, and what a session did on another process
is handed over with its disconnection row (gstratum.storage.resumption) and merged in with `inherit`.

Entries are grouped by the block they build on (the job's prevhash) and, within it, by extranonce1: a new block
makes all older work stale, so a group is dropped as soon as no live job builds on it; the extranonce1 grouping is
what a hand-over reads. Keys are the low 64 bits of the header hash (random bits: the hash's high bits are zeros
for any share worth keeping), 2**-64 per pair of the same miner's shares of one block.
"""
from __future__ import annotations

from typing import Iterable, Mapping

KEY_MASK = (1 << 64) - 1


def share_key(hash_int: int) -> int:
    """The ledger's key of a header whose double SHA-256, read little-endian, is `hash_int`."""
    return hash_int & KEY_MASK


class ShareLedger:
    __slots__ = ("_blocks", "_live")

    def __init__(self, live_prevhashes) -> None:
        """`live_prevhashes()`: the prevhashes that live jobs build on now (JobBook.prevhashes)."""
        self._blocks: dict[str, dict[bytes, set[int]]] = {}
        self._live = live_prevhashes

    def _group(self, prevhash: str, extranonce1: bytes) -> set[int]:
        block = self._blocks.get(prevhash)
        if block is None:
            self._prune()          # a block we hold nothing for yet: the usual moment older blocks died
            block = self._blocks[prevhash] = {}
        group = block.get(extranonce1)
        if group is None:
            group = block[extranonce1] = set()
        return group

    def seen(self, prevhash: str, extranonce1: bytes, hash_int: int) -> bool:
        block = self._blocks.get(prevhash)
        if block is None:
            return False
        group = block.get(extranonce1)
        return group is not None and (hash_int & KEY_MASK) in group

    def claim(self, prevhash: str, extranonce1: bytes, hash_int: int) -> bool:
        """Record an accepted share; False when this work was already credited."""
        group = self._group(prevhash, extranonce1)
        key = hash_int & KEY_MASK
        if key in group:
            return False
        group.add(key)
        return True

    def accepted_of(self, extranonce1: bytes) -> dict[str, list[str]]:
        """What a session holds on live work, for its hand-over to another process: prevhash -> keys (16 hex)."""
        live = set(self._live())
        out = {}
        for prevhash, block in self._blocks.items():
            group = block.get(extranonce1)
            if group and prevhash in live:
                out[prevhash] = [f"{key:016x}" for key in group]
        return out

    def inherit(self, extranonce1: bytes, handed_over: Mapping[str, Iterable[str]]) -> int:
        """Merge what another process credited to this extranonce1 (its `accepted_of`); entries for blocks that
        no live job builds on are dropped. Returns how many were taken."""
        live = set(self._live())
        taken = 0
        for prevhash, keys in handed_over.items():
            if prevhash not in live:
                continue
            group = self._group(prevhash, extranonce1)
            for key in keys:
                group.add(int(key, 16) & KEY_MASK)
                taken += 1
        return taken

    def _prune(self) -> None:
        live = set(self._live())
        for prevhash in [p for p in self._blocks if p not in live]:
            del self._blocks[prevhash]

    def __len__(self) -> int:
        """Shares held (for metrics and tests)."""
        return sum(len(group) for block in self._blocks.values() for group in block.values())
