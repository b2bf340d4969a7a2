"""Bitcoin serialization and hashing primitives used by jobs and share validation (pure, no I/O)."""
from __future__ import annotations

import hashlib
import struct
from fractions import Fraction

DIFF1 = 0xFFFF * 2**208
MAX_TARGET = 2**256 - 1


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def varint(n: int) -> bytes:
    """Bitcoin CompactSize."""
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def push_data(data: bytes) -> bytes:
    """Script push of `data` (direct push up to 75 bytes, else OP_PUSHDATA1/2)."""
    if len(data) <= 75:
        return bytes([len(data)]) + data
    if len(data) <= 0xFF:
        return b"\x4c" + bytes([len(data)]) + data
    return b"\x4d" + struct.pack("<H", len(data)) + data


def script_num(n: int) -> bytes:
    """CScriptNum serialization: minimal little-endian with a sign bit."""
    if n == 0:
        return b""
    negative, value = n < 0, abs(n)
    out = bytearray()
    while value:
        out.append(value & 0xFF)
        value >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if negative else 0x00)
    elif negative:
        out[-1] |= 0x80
    return bytes(out)


def script_push_int(n: int) -> bytes:
    """BIP34 height push as Bitcoin Core writes `CScript() << nHeight`: OP_0 / OP_1..OP_16 for 0..16, else a
    minimal data push of the CScriptNum."""
    if n == 0:
        return b"\x00"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    return push_data(script_num(n))


def build_coinbase_parts(height: int, tag: bytes, extranonce_size: int, outputs: list[tuple[int, bytes]],
                         witness_commitment: bytes | None = None) -> tuple[bytes, bytes]:
    """(coinb1, coinb2) such that coinb1 + extranonce1 + extranonce2 + coinb2 is a serialized coinbase transaction
    (legacy serialization, which is what the txid hashes). The extranonce bytes sit raw at the end of the scriptSig,
    after the BIP34 height push and the pool tag push, as most pools do."""
    prefix = script_push_int(height) + push_data(tag)
    script_len = len(prefix) + extranonce_size
    if not 2 <= script_len <= 100:
        raise ValueError(f"coinbase scriptSig must be 2..100 bytes, got {script_len}")
    coinb1 = (struct.pack("<i", 1) + varint(1) + b"\x00" * 32 + b"\xff\xff\xff\xff" + varint(script_len) + prefix)
    all_outputs = list(outputs)
    if witness_commitment is not None:
        if len(witness_commitment) != 32:
            raise ValueError("witness commitment must be 32 bytes")
        all_outputs.append((0, bytes.fromhex("6a24aa21a9ed") + witness_commitment))
    coinb2 = b"\xff\xff\xff\xff" + varint(len(all_outputs))
    for value, script in all_outputs:
        coinb2 += struct.pack("<q", value) + varint(len(script)) + script
    coinb2 += struct.pack("<I", 0)
    return coinb1, coinb2


def merkle_root_from_branch(coinbase_txid: bytes, branch: list[bytes]) -> bytes:
    """Fold the Stratum branch onto the coinbase txid (internal byte order)."""
    root = coinbase_txid
    for step in branch:
        root = sha256d(root + step)
    return root


def merkle_branch_for_coinbase(txids: list[bytes]) -> list[bytes]:
    """The Stratum merkle branch of the coinbase (position 0) given the other txids, internal byte order."""
    branch: list[bytes] = []
    level = [b""] + list(txids)  # the coinbase slot's value never matters for its own branch
    while len(level) > 1:
        branch.append(level[1])
        if len(level) % 2:
            level.append(level[-1])
        level = [b""] + [sha256d(level[i] + level[i + 1]) for i in range(2, len(level), 2)]
    return branch


def target_from_nbits(nbits: int) -> int:
    exponent, mantissa = nbits >> 24, nbits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def target_from_difficulty(difficulty: float) -> int:
    """DIFF1 // difficulty, exact for fractional difficulties (Fraction of the float)."""
    frac = Fraction(difficulty)
    if frac <= 0:
        return MAX_TARGET
    return min(DIFF1 * frac.denominator // frac.numerator, MAX_TARGET)


def difficulty_from_hash(hash_int: int) -> float:
    if hash_int == 0:
        return float("inf")
    return DIFF1 / hash_int


def stratum_prevhash_to_header(prevhash_hex: str) -> bytes:
    """Stratum's prevhash: the internal-order bytes with each 4-byte word's bytes reversed. Undo it."""
    raw = bytes.fromhex(prevhash_hex)
    return b"".join(raw[i:i + 4][::-1] for i in range(0, 32, 4))


def header_prevhash_to_stratum(prev: bytes) -> str:
    return b"".join(prev[i:i + 4][::-1] for i in range(0, 32, 4)).hex()
