"""A tiny CPU miner: enough to find shares at the low difficulties used by tests, the client and the load tool."""
from __future__ import annotations

import hashlib
import struct

from gstratum.mining.shares import HeaderTemplate


def find_share(template: HeaderTemplate, extranonce1: bytes, extranonce2: bytes, ntime: str, version: int,
               share_target: int, start_nonce: int = 0, max_tries: int = 1_000_000) -> tuple[str, int] | None:
    """The first nonce from `start_nonce` whose header hash is <= share_target: (nonce hex as submitted, hash)."""
    prefix = hashlib.sha256(template.header_prefix(extranonce1, extranonce2, ntime, version))  # 64-byte block done
    sha256 = hashlib.sha256
    pack = struct.Struct("<I").pack
    for nonce in range(start_nonce, min(start_nonce + max_tries, 2**32)):
        first = prefix.copy()
        first.update(pack(nonce))
        value = int.from_bytes(sha256(first.digest()).digest(), "little")
        if value <= share_target:
            return f"{nonce:08x}", value
    return None
