"""A tiny CPU miner: enough to find shares at the low difficulties used by tests, the client and the load tool."""
from __future__ import annotations

import hashlib
import struct

from gstratum.mining.shares import HeaderTemplate

_pack_nonce = struct.Struct("<I").pack


def search_nonce(header_prefix: bytes, share_target: int, start_nonce: int = 0,
                 max_tries: int = 1_000_000) -> tuple[int, int] | None:
    """The first nonce from `start_nonce` whose header (the 76-byte prefix + the nonce, little-endian) hashes to
    <= share_target: (nonce, hash as the little-endian integer compared with targets); None if none in range."""
    if len(header_prefix) != 76:
        raise ValueError("a header prefix is the 76 bytes before the nonce")
    prefix = hashlib.sha256(header_prefix)      # its first 64-byte block is done once
    sha256 = hashlib.sha256
    pack = _pack_nonce
    for nonce in range(start_nonce, min(start_nonce + max_tries, 2**32)):
        first = prefix.copy()
        first.update(pack(nonce))
        value = int.from_bytes(sha256(first.digest()).digest(), "little")
        if value <= share_target:
            return nonce, value
    return None


def find_share(template: HeaderTemplate, extranonce1: bytes, extranonce2: bytes, ntime: str, version: int,
               share_target: int, start_nonce: int = 0, max_tries: int = 1_000_000) -> tuple[str, int] | None:
    """The first nonce from `start_nonce` whose header hash is <= share_target: (nonce hex as submitted, hash)."""
    found = search_nonce(template.header_prefix(extranonce1, extranonce2, ntime, version), share_target,
                         start_nonce, max_tries)
    if found is None:
        return None
    return f"{found[0]:08x}", found[1]
