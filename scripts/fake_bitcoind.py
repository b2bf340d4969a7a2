#!/usr/bin/env python3
"""A strict fake Bitcoin Core node for gstratum's end-to-end tests.

Bitcoin Core cannot be installed where the tests run, so this process stands in for it: the same JSON-RPC over
HTTP (cookie and rpcuser auth, Core's status codes and error codes), the same ZMQ `hashblock` messages, and a
`submitblock` that validates every block as fully as a pool can get wrong (header, proof of work, time, BIP34,
merkle root, coinbase amount, BIP141 witness commitment, weight) and answers with Core's reject strings.

It deliberately imports nothing from `gstratum`: a bug in the pool's block assembly must not be cancelled out by
the same bug in the validator. Only the standard library and pyzmq.

    python scripts/fake_bitcoind.py --datadir DIR [--rpc-port N] [--chain regtest|test|main] [--bits 207fffff] ...

It prints `fake_bitcoind ready rpc=URL cookie=PATH zmq=ENDPOINT` once it serves. Methods named `fake_*` are test
controls that Core does not have (mine as another miner, reorg, add mempool transactions, simulate IBD, read the
submission log, change what submitblock answers, stall the node as Core does while it holds cs_main). Core's own
`invalidateblock` and `reconsiderblock` switch between branches it knows.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import queue
import random
import secrets
import signal
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import zmq

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
MAX_BLOCK_WEIGHT = 4_000_000
MAX_BLOCK_SIGOPS_COST = 80_000
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
MAX_SIZE = 0x02000000  # Core's limit for any CompactSize-prefixed length
MAX_HTTP_BODY = 32 * 1024 * 1024
COINBASE_RESERVED_WEIGHT = 4000  # what Core's block assembler keeps free for the coinbase
WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")
ZERO32 = bytes(32)
NULL_INDEX = 0xFFFFFFFF
TEMPLATE_VERSION = 0x20000000
PROTOCOL_VERSION = 70016
CLIENT_VERSION = 270000
SUBVERSION = "/FakeSatoshi:27.0.0/"
MAX_SUBMISSIONS = 10_000  # the submission log is bounded like everything else

# Core's RPC error codes (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_CLIENT_IN_INITIAL_DOWNLOAD = -10
RPC_DESERIALIZATION_ERROR = -22
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700


@dataclass(frozen=True)
class ChainParams:
    """What differs between networks: where files go, address prefixes, halving interval and genesis."""

    name: str
    subdir: str
    pubkey_prefix: int
    script_prefix: int
    hrp: str
    halving_interval: int
    genesis_time: int
    genesis_bits: int
    genesis_nonce: int


CHAINS = {
    "main": ChainParams("main", "", 0x00, 0x05, "bc", 210_000, 1231006505, 0x1D00FFFF, 2083236893),
    "test": ChainParams("test", "testnet3", 0x6F, 0xC4, "tb", 210_000, 1296688602, 0x1D00FFFF, 414098458),
    "regtest": ChainParams("regtest", "regtest", 0x6F, 0xC4, "bcrt", 150, 1296688602, 0x207FFFFF, 2),
}

# The genesis coinbase ("The Times 03/Jan/2009 ..."), so height 0 is each network's real genesis block.
GENESIS_COINBASE = bytes.fromhex(
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d01044554"
    "68652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64"
    "206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105c"
    "d6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
)


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def to_display(internal: bytes) -> str:
    """Hashes travel byte-reversed in RPC and ZMQ ("display order")."""
    return internal[::-1].hex()


def from_display(hex_hash: str) -> bytes:
    return bytes.fromhex(hex_hash)[::-1]


# ---------------------------------------------------------------------------------------------------------------
# Serialization: Core's rules, including the ones a careless decoder skips (canonical CompactSize, segwit flags).


class DecodeError(Exception):
    """The bytes are not a well-formed block or transaction."""


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def push_data(data: bytes) -> bytes:
    """A minimal script push of `data`, as `CScript() << data`."""
    n = len(data)
    if n < 0x4C:
        return bytes([n]) + data
    if n <= 0xFF:
        return b"\x4c" + bytes([n]) + data
    if n <= 0xFFFF:
        return b"\x4d" + struct.pack("<H", n) + data
    return b"\x4e" + struct.pack("<I", n) + data


class Reader:
    """A cursor over bytes that refuses to read past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise DecodeError("end of data")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def compact_size(self) -> int:
        first = self.unpack("<B")
        if first < 0xFD:
            n = first
        elif first == 0xFD:
            n = self.unpack("<H")
            if n < 0xFD:
                raise DecodeError("non-canonical ReadCompactSize()")
        elif first == 0xFE:
            n = self.unpack("<I")
            if n < 0x10000:
                raise DecodeError("non-canonical ReadCompactSize()")
        else:
            n = self.unpack("<Q")
            if n < 0x100000000:
                raise DecodeError("non-canonical ReadCompactSize()")
        if n > MAX_SIZE:
            raise DecodeError("ReadCompactSize(): size too large")
        return n

    def var_bytes(self) -> bytes:
        return self.take(self.compact_size())

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclass
class TxIn:
    prev_hash: bytes  # internal byte order
    prev_index: int
    script_sig: bytes
    sequence: int
    witness: list[bytes] = field(default_factory=list)

    def serialize(self) -> bytes:
        return self.prev_hash + struct.pack("<I", self.prev_index) + compact_size(len(self.script_sig)) + \
            self.script_sig + struct.pack("<I", self.sequence)


@dataclass
class TxOut:
    value: int
    script: bytes

    def serialize(self) -> bytes:
        return struct.pack("<q", self.value) + compact_size(len(self.script)) + self.script


@dataclass
class Tx:
    version: int
    vin: list[TxIn]
    vout: list[TxOut]
    locktime: int

    @property
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.vin)

    @property
    def is_coinbase(self) -> bool:
        return len(self.vin) == 1 and self.vin[0].prev_hash == ZERO32 and self.vin[0].prev_index == NULL_INDEX

    def serialize(self, with_witness: bool = True) -> bytes:
        witness = with_witness and self.has_witness
        parts = [struct.pack("<i", self.version)]
        if witness:
            parts.append(b"\x00\x01")
        parts.append(compact_size(len(self.vin)))
        parts.extend(txin.serialize() for txin in self.vin)
        parts.append(compact_size(len(self.vout)))
        parts.extend(txout.serialize() for txout in self.vout)
        if witness:
            for txin in self.vin:
                parts.append(compact_size(len(txin.witness)))
                parts.extend(compact_size(len(item)) + item for item in txin.witness)
        parts.append(struct.pack("<I", self.locktime))
        return b"".join(parts)

    def txid(self) -> bytes:
        return sha256d(self.serialize(with_witness=False))

    def wtxid(self) -> bytes:
        return sha256d(self.serialize())

    def value_out(self) -> int:
        return sum(txout.value for txout in self.vout)


def read_tx(reader: Reader) -> Tx:
    """Core's UnserializeTransaction: an empty vin announces the segwit marker, flag 1 means witnesses follow."""
    version = reader.unpack("<i")
    vin = _read_inputs(reader)
    flags = 0
    vout: list[TxOut] = []
    if not vin:
        flags = reader.unpack("<B")
        if flags:
            vin = _read_inputs(reader)
            vout = _read_outputs(reader)
    else:
        vout = _read_outputs(reader)
    if flags & 1:
        flags ^= 1
        for txin in vin:
            txin.witness = [reader.var_bytes() for _ in range(reader.compact_size())]
        if not any(txin.witness for txin in vin):
            raise DecodeError("Superfluous witness record")
    if flags:
        raise DecodeError("Unknown transaction optional data")
    locktime = reader.unpack("<I")
    return Tx(version, vin, vout, locktime)


def _read_inputs(reader: Reader) -> list[TxIn]:
    inputs = []
    for _ in range(reader.compact_size()):
        prev_hash = reader.take(32)
        prev_index = reader.unpack("<I")
        script_sig = reader.var_bytes()
        inputs.append(TxIn(prev_hash, prev_index, script_sig, reader.unpack("<I")))
    return inputs


def _read_outputs(reader: Reader) -> list[TxOut]:
    outputs = []
    for _ in range(reader.compact_size()):
        value = reader.unpack("<q")
        outputs.append(TxOut(value, reader.var_bytes()))
    return outputs


@dataclass
class Header:
    version: int
    prev_hash: bytes  # internal byte order
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return struct.pack("<i", self.version) + self.prev_hash + self.merkle_root + \
            struct.pack("<III", self.time, self.bits, self.nonce)

    def hash(self) -> bytes:
        return sha256d(self.serialize())


def decode_block(raw: bytes) -> tuple[Header, list[Tx]]:
    reader = Reader(raw)
    version = reader.unpack("<i")
    header = Header(version, reader.take(32), reader.take(32), *struct.unpack("<III", reader.take(12)))
    txs = [read_tx(reader) for _ in range(reader.compact_size())]
    if not reader.at_end():
        raise DecodeError("trailing data after the last transaction")
    return header, txs


def merkle_root(hashes: list[bytes]) -> bytes:
    """Bitcoin's merkle tree: pair up, duplicating the last hash of an odd level."""
    if not hashes:
        return ZERO32
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def bits_to_target(bits: int) -> int:
    """Decode compact `bits`; raises ValueError for the negative, zero and overflowing encodings Core refuses."""
    size = bits >> 24
    word = bits & 0x007FFFFF
    target = word >> (8 * (3 - size)) if size <= 3 else word << (8 * (size - 3))
    if word and bits & 0x00800000:
        raise ValueError("negative target")
    if word and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)):
        raise ValueError("target overflows 256 bits")
    if target == 0:
        raise ValueError("zero target")
    return target


def difficulty(bits: int) -> float:
    """Core's GetDifficulty: the compact target relative to the difficulty-1 target 0x1d00ffff."""
    shift = (bits >> 24) & 0xFF
    diff = 0x0000FFFF / (bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def block_work(bits: int) -> int:
    return (1 << 256) // (bits_to_target(bits) + 1)


def bip34_height(height: int) -> bytes:
    """`CScript() << nHeight`: OP_1..OP_16 for 1..16, else a minimal CScriptNum push (sign byte when needed)."""
    if height == 0:
        return b"\x00"
    if 1 <= height <= 16:
        return bytes([0x50 + height])
    number = height.to_bytes((height.bit_length() + 7) // 8, "little")
    if number[-1] & 0x80:
        number += b"\x00"
    return push_data(number)


def subsidy(height: int, halving_interval: int) -> int:
    halvings = height // halving_interval
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def witness_commitment_index(coinbase: Tx) -> int | None:
    """BIP141: the commitment is the LAST output whose script is >= 38 bytes and starts 6a24aa21a9ed."""
    found = None
    for index, txout in enumerate(coinbase.vout):
        if len(txout.script) >= 38 and txout.script[:6] == WITNESS_COMMITMENT_PREFIX:
            found = index
    return found


def witness_merkle_root(wtxids: list[bytes]) -> bytes:
    """The merkle root over wtxids with the coinbase's taken as 32 zero bytes."""
    return merkle_root([ZERO32] + wtxids[1:])


# ---------------------------------------------------------------------------------------------------------------
# Addresses: an independent decoder for base58check (P2PKH, P2SH) and bech32/bech32m (BIP173, BIP350).

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}
BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
BECH32_INDEX = {c: i for i, c in enumerate(BECH32_CHARSET)}
BECH32_CONST = 1
BECH32M_CONST = 0x2BC830A3
SPACES = " \f\n\r\t\v"
INVALID_ENCODING = "Invalid or unsupported Segwit (Bech32) or Base58 encoding."


def b58decode(text: str, max_len: int) -> bytes | None:
    """Core's DecodeBase58: surrounding whitespace allowed, leading '1's are zero bytes, None when invalid."""
    text = text.strip(SPACES)
    if "\0" in text or any(c not in B58_INDEX for c in text):
        return None
    zeros = len(text) - len(text.lstrip("1"))
    number = 0
    for char in text:
        number = number * 58 + B58_INDEX[char]
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    result = bytes(zeros) + body
    return result if len(result) <= max_len else None


def b58check_decode(text: str, max_len: int) -> bytes | None:
    data = b58decode(text, max_len + 4)
    if data is None or len(data) < 4 or sha256d(data[:-4])[:4] != data[-4:]:
        return None
    return data[:-4]


def b58check_encode(payload: bytes) -> str:
    data = payload + sha256d(payload)[:4]
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, rem = divmod(number, 58)
        chars.append(B58_ALPHABET[rem])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(chars))


def bech32_polymod(values: list[int]) -> int:
    generators = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(generators):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def bech32_hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_decode(text: str) -> tuple[str, str, list[int]] | None:
    """Core's bech32::Decode: (encoding "bech32"/"bech32m", hrp, data without checksum) or None."""
    if bech32_character_error(text) or len(text) > 90:
        return None
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        return None
    lowered = text.lower()
    hrp = lowered[:pos]
    try:
        values = [BECH32_INDEX[c] for c in lowered[pos + 1 :]]
    except KeyError:
        return None
    check = bech32_polymod(bech32_hrp_expand(hrp) + values)
    encoding = {BECH32_CONST: "bech32", BECH32M_CONST: "bech32m"}.get(check)
    if encoding is None:
        return None
    return encoding, hrp, values[:-6]


def bech32_character_error(text: str) -> bool:
    """Characters outside 33..126, or upper and lower case mixed."""
    has_lower = any("a" <= c <= "z" for c in text)
    has_upper = any("A" <= c <= "Z" for c in text)
    return (has_lower and has_upper) or any(not 33 <= ord(c) <= 126 for c in text)


def bech32_error_message(text: str) -> str:
    """The reason Core's LocateErrors gives for a string that does not decode (without the error positions)."""
    if len(text) > 90:
        return "Bech32 string too long"
    if bech32_character_error(text):
        return "Invalid character or mixed case"
    pos = text.rfind("1")
    if pos == -1:
        return "Missing separator"
    if pos == 0 or pos + 7 > len(text):
        return "Invalid separator position"
    if any(c not in BECH32_INDEX for c in text[pos + 1 :].lower()):
        return "Invalid Base 32 character"
    return "Invalid checksum"


def bech32_encode(encoding: str, hrp: str, values: list[int]) -> str:
    const = BECH32M_CONST if encoding == "bech32m" else BECH32_CONST
    polymod = bech32_polymod(bech32_hrp_expand(hrp) + values + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32_CHARSET[v] for v in values + checksum)


def convert_bits(values: list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    max_value = (1 << to_bits) - 1
    for value in values:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or (acc << (to_bits - bits)) & max_value:
        return None
    return out


def witness_script(version: int, program: bytes) -> bytes:
    return bytes([0x50 + version if version else 0, len(program)]) + program


def witness_address(hrp: str, version: int, program: bytes) -> str:
    values = [version] + (convert_bits(list(program), 8, 5, True) or [])
    return bech32_encode("bech32" if version == 0 else "bech32m", hrp, values)


def validate_address(text: str, params: ChainParams) -> dict:
    """Core's DecodeDestination + DescribeAddress, network-aware."""
    result = _decode_destination(text, params)
    if isinstance(result, str):
        return {"isvalid": False, "error_locations": [], "error": result}
    return {"isvalid": True, **result}


def _decode_destination(text: str, params: ChainParams) -> dict | str:
    is_bech32 = text[: len(params.hrp)].lower() == params.hrp
    if not is_bech32:
        return _decode_base58_destination(text, params)
    decoded = bech32_decode(text)
    if decoded is None:
        return bech32_error_message(text)
    encoding, hrp, values = decoded
    if not values:
        return "Empty Bech32 data section"
    if hrp != params.hrp:
        return f"Invalid or unsupported prefix for Segwit (Bech32) address (expected {params.hrp}, got {hrp})."
    version = values[0]
    if version == 0 and encoding != "bech32":
        return "Version 0 witness address must use Bech32 checksum"
    if version != 0 and encoding != "bech32m":
        return "Version 1+ witness address must use Bech32m checksum"
    program_values = convert_bits(values[1:], 5, 8, False)
    if program_values is None:
        return "Invalid padding in Bech32 data section"
    program = bytes(program_values)
    unit = "byte" if len(program) == 1 else "bytes"
    if version == 0 and len(program) not in (20, 32):
        return f"Invalid Bech32 v0 address program size ({len(program)} {unit}), per BIP141"
    if version > 16:
        return "Invalid Bech32 address witness version"
    if not 2 <= len(program) <= 40:
        return f"Invalid Bech32 address program size ({len(program)} {unit})"
    description: dict[str, Any] = {
        "address": witness_address(params.hrp, version, program),
        "scriptPubKey": witness_script(version, program).hex(),
    }
    if version == 0:
        description["isscript"] = len(program) == 32
    elif version == 1 and len(program) == 32:
        description["isscript"] = True  # P2TR
    description.update(iswitness=True, witness_version=version, witness_program=program.hex())
    return description


def _decode_base58_destination(text: str, params: ChainParams) -> dict | str:
    data = b58check_decode(text, 21)
    if data is None:
        if b58decode(text, 100) is None:
            return INVALID_ENCODING
        return "Invalid checksum or length of Base58 address (P2PKH or P2SH)"
    if len(data) == 21 and data[0] == params.pubkey_prefix:
        script = b"\x76\xa9\x14" + data[1:] + b"\x88\xac"
        return {"address": b58check_encode(data), "scriptPubKey": script.hex(), "isscript": False, "iswitness": False}
    if len(data) == 21 and data[0] == params.script_prefix:
        script = b"\xa9\x14" + data[1:] + b"\x87"
        return {"address": b58check_encode(data), "scriptPubKey": script.hex(), "isscript": True, "iswitness": False}
    if data and data[0] in (params.pubkey_prefix, params.script_prefix):
        return "Invalid length for Base58 address (P2PKH or P2SH)"
    return "Invalid or unsupported Base58-encoded address."


def describe_script(script: bytes, params: ChainParams) -> dict:
    """The "scriptPubKey" object of Core's decoded outputs (type and, for standard scripts, address)."""
    kind, address = "nonstandard", None
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        kind, address = "pubkeyhash", b58check_encode(bytes([params.pubkey_prefix]) + script[3:23])
    elif len(script) == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        kind, address = "scripthash", b58check_encode(bytes([params.script_prefix]) + script[2:22])
    elif 4 <= len(script) <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] == len(script) - 2:
        version = script[0] - 0x50 if script[0] else 0
        program = script[2:]
        if version == 0 and len(program) in (20, 32):
            kind = "witness_v0_keyhash" if len(program) == 20 else "witness_v0_scripthash"
        elif version == 1 and len(program) == 32:
            kind = "witness_v1_taproot"
        elif version != 0:
            kind = "witness_unknown"
        if kind != "nonstandard":
            address = witness_address(params.hrp, version, program)
    elif script[:1] == b"\x6a":
        kind = "nulldata"
    elif len(script) in (35, 67) and script[0] == len(script) - 2 and script[-1] == 0xAC:
        kind = "pubkey"
    described: dict[str, Any] = {"hex": script.hex()}
    if address:
        described["address"] = address
    described["type"] = kind
    return described


# ---------------------------------------------------------------------------------------------------------------
# Made-up transactions for the mempool: real serializations, random prevouts (no UTXO set, no signatures).


def _fake_signature(rng: random.Random) -> bytes:
    return b"\x30\x44" + rng.randbytes(68) + b"\x01"


def _fake_pubkey(rng: random.Random) -> bytes:
    return bytes([rng.choice((2, 3))]) + rng.randbytes(32)


def _random_output_script(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return b"\x00\x14" + rng.randbytes(20)  # P2WPKH
    if kind == 1:
        return b"\x76\xa9\x14" + rng.randbytes(20) + b"\x88\xac"  # P2PKH
    return b"\x51\x20" + rng.randbytes(32)  # P2TR


def make_mempool_tx(rng: random.Random, with_witness: bool) -> dict:
    """One random version-2 transaction with 1-3 inputs and outputs, as a mempool entry (GBT's fields)."""
    vin = []
    for _ in range(rng.randint(1, 3)):
        sig, pubkey = _fake_signature(rng), _fake_pubkey(rng)
        if with_witness:
            vin.append(TxIn(rng.randbytes(32), rng.randrange(4), b"", 0xFFFFFFFD, [sig, pubkey]))
        else:
            vin.append(TxIn(rng.randbytes(32), rng.randrange(4), push_data(sig) + push_data(pubkey), 0xFFFFFFFD))
    vout = [TxOut(rng.randint(546, COIN), _random_output_script(rng)) for _ in range(rng.randint(1, 3))]
    tx = Tx(2, vin, vout, 0)
    raw, stripped = tx.serialize(), tx.serialize(with_witness=False)
    return {
        "data": raw.hex(),
        "txid": to_display(sha256d(stripped)),
        "hash": to_display(sha256d(raw)),
        "fee": rng.randint(1000, 50_000),
        "sigops": len(vin),
        "weight": len(stripped) * 3 + len(raw),
    }


def make_mempool_txs(rng: random.Random, count: int, witness_fraction: float) -> list[dict]:
    """`count` transactions of which round(count * fraction) carry witnesses, in random order."""
    with_witness = round(count * witness_fraction)
    entries = [make_mempool_tx(rng, i < with_witness) for i in range(count)]
    rng.shuffle(entries)
    return entries


# ---------------------------------------------------------------------------------------------------------------
# The chain: the active chain (a list indexed by height), stale blocks, mempool, submissions; all persisted.


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


@dataclass
class Checked:
    """A block that passed every check, ready to connect."""

    header: Header
    txs: list[Tx]
    raw: bytes
    hash: str
    height: int
    included: list[dict]  # the mempool entries it confirms


class Chain:
    """All node state. Callers hold `Node.cond` around every use; the state file is rewritten after each change."""

    def __init__(self, params: ChainParams, bits: int, path: Path, rng: random.Random) -> None:
        self.params = params
        self.bits = bits
        self.target = bits_to_target(bits)
        self.path = path
        self.rng = rng
        self.blocks: list[dict] = []
        self.by_hash: dict[str, dict] = {}
        self.stale: dict[str, dict] = {}
        self.invalid: set[str] = set()
        self.mempool: dict[str, dict] = {}
        self.mempool_counter = 0
        self.submissions: list[dict] = []

    # -- persistence

    def load(self) -> None:
        state = json.loads(self.path.read_text())
        if state.get("chain") != self.params.name:
            raise SystemExit(f"{self.path} holds a {state.get('chain')!r} chain, not {self.params.name!r}")
        self.blocks = state["blocks"]
        self.by_hash = {record["hash"]: record for record in self.blocks}
        self.stale = state["stale"]
        self.invalid = set(state["invalid"])
        self.mempool = {entry["txid"]: entry for entry in state["mempool"]}
        self.mempool_counter = state["mempool_counter"]
        self.submissions = state["submissions"]

    def persist(self) -> None:
        """Write the whole state to a temporary file and rename it over the old one, so a kill never tears it."""
        state = {
            "chain": self.params.name,
            "blocks": self.blocks,
            "stale": self.stale,
            "invalid": sorted(self.invalid),
            "mempool": list(self.mempool.values()),
            "mempool_counter": self.mempool_counter,
            "submissions": self.submissions,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as out:
            json.dump(state, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def create(self, start_height: int, mempool_txs: int, witness_fraction: float) -> None:
        """A fresh chain: the network's genesis, then made-up blocks whose times end near now, and a mempool."""
        genesis_cb = decode_block(b"\0" * 80 + b"\x01" + GENESIS_COINBASE)[1][0]
        header = Header(1, ZERO32, genesis_cb.txid(), self.params.genesis_time, self.params.genesis_bits,
                        self.params.genesis_nonce)
        raw = header.serialize() + b"\x01" + GENESIS_COINBASE
        self.connect(Checked(header, [genesis_cb], raw, to_display(header.hash()), 0, []), "genesis")
        other_miner = b"\x00\x14" + self.rng.randbytes(20)
        now = int(time.time())
        for height in range(1, start_height + 1):
            block_time = max(now - (start_height - height) * 600 - 30, self.median_time_past() + 1)
            self.mine_one(other_miner, [], block_time, "initial")
        self.add_mempool(make_mempool_txs(self.rng, mempool_txs, witness_fraction))
        self.persist()

    # -- queries

    @property
    def tip(self) -> dict:
        return self.blocks[-1]

    def median_time_past(self, record: dict | None = None) -> int:
        """Median of the times of `record` (default: the tip) and its up to 10 ancestors, stale or not."""
        times = []
        current = self.tip if record is None else record
        while current is not None and len(times) < 11:
            times.append(current["time"])
            current = self.find(current["prevhash"]) if current["prevhash"] else None
        times.sort()
        return times[len(times) // 2]

    def find(self, block_hash: str) -> dict | None:
        return self.by_hash.get(block_hash) or self.stale.get(block_hash)

    def is_active(self, record: dict) -> bool:
        return self.by_hash.get(record["hash"]) is record

    def select_template_txs(self) -> list[dict]:
        """Mempool entries in order, as many as fit Core's weight and sigop limits beside the coinbase."""
        chosen, weight, sigops = [], COINBASE_RESERVED_WEIGHT, 400
        for entry in self.mempool.values():
            if weight + entry["weight"] > MAX_BLOCK_WEIGHT or sigops + entry["sigops"] > MAX_BLOCK_SIGOPS_COST:
                continue
            chosen.append(entry)
            weight += entry["weight"]
            sigops += entry["sigops"]
        return chosen

    def longpoll_id(self) -> str:
        return self.tip["hash"] + str(self.mempool_counter)

    # -- validation

    def check_block(self, raw: bytes, *, check_pow: bool = True) -> Checked | str:
        """Validate a block on the tip; return it checked or Core's reject reason. Raises DecodeError."""
        header, txs = decode_block(raw)
        block_hash = to_display(header.hash())
        if block_hash in self.invalid:
            return "duplicate-invalid"
        if self.find(block_hash) is not None:
            return "duplicate"
        prev = to_display(header.prev_hash)
        if prev != self.tip["hash"]:
            return "bad-prevblk" if self.find(prev) is not None else "prev-blk-not-found"
        height = self.tip["height"] + 1
        if header.bits != self.bits:
            return "bad-diffbits"
        if check_pow and int.from_bytes(header.hash(), "little") > self.target:
            return "high-hash"
        mtp = self.median_time_past()
        if header.time <= mtp:
            return "time-too-old"
        if header.time > time.time() + MAX_FUTURE_BLOCK_TIME:
            return "time-too-new"
        if header.version < 4:
            return f"bad-version(0x{header.version & 0xFFFFFFFF:08x})"
        if not txs or not txs[0].is_coinbase:
            return "bad-cb-missing"
        if any(tx.is_coinbase for tx in txs[1:]):
            return "bad-cb-multiple"
        if merkle_root([tx.txid() for tx in txs]) != header.merkle_root:
            return "bad-txnmrklroot"
        coinbase = txs[0]
        if not 2 <= len(coinbase.vin[0].script_sig) <= 100:
            return "bad-cb-length"
        reason = _check_outputs(coinbase)
        if reason:
            return reason
        # From here on Core has stored the header, and a failure marks the block invalid for good ("mutated"
        # failures excepted: duplicates and witness errors, which a relay could have caused).
        reason, included = self._check_contents(txs, height, mtp)
        if reason in ("bad-txns-duplicate", "bad-witness-nonce-size", "bad-witness-merkle-match",
                      "unexpected-witness"):
            return reason
        if reason:
            self.invalid.add(block_hash)
            return reason
        return Checked(header, txs, raw, block_hash, height, included)

    def _check_contents(self, txs: list[Tx], height: int, mtp: int) -> tuple[str | None, list[dict]]:
        coinbase = txs[0]
        if not _is_final(coinbase, height, mtp):
            return "bad-txns-nonfinal", []
        if not coinbase.vin[0].script_sig.startswith(bip34_height(height)):
            return "bad-cb-height", []
        included, seen = [], set()
        for tx in txs[1:]:
            txid = to_display(tx.txid())
            if txid in seen:
                return "bad-txns-duplicate", []
            seen.add(txid)
            entry = self.mempool.get(txid)
            if entry is None or entry["data"] != tx.serialize().hex():
                return "bad-txns-inputs-missingorspent", []
            included.append(entry)
        fees = sum(entry["fee"] for entry in included)
        if coinbase.value_out() > subsidy(height, self.params.halving_interval) + fees:
            return "bad-cb-amount", []
        reason = _check_witness(txs)
        if reason:
            return reason, []
        stripped = 80 + len(compact_size(len(txs))) + sum(len(tx.serialize(with_witness=False)) for tx in txs)
        total = 80 + len(compact_size(len(txs))) + sum(len(tx.serialize()) for tx in txs)
        if stripped * 3 + total > MAX_BLOCK_WEIGHT:
            return "bad-blk-weight", []
        return None, included

    # -- changes

    def connect(self, block: Checked, source: str) -> dict:
        """Append a checked block to the active chain and drop its transactions from the mempool (the caller
        persists)."""
        record = self._record_of(block, self.tip if self.blocks else None, source)
        self.blocks.append(record)
        self.by_hash[record["hash"]] = record
        if block.included:
            for entry in block.included:
                del self.mempool[entry["txid"]]
            self.mempool_counter += 1
        return record

    def store_side(self, block: Checked, source: str) -> dict:
        """Keep a checked block without connecting it, as Core keeps a valid block that is not (yet) on its best
        chain (submitblock then answers `inconclusive`); `activate_best_chain` may connect it later."""
        record = self._record_of(block, self.find(to_display(block.header.prev_hash)), source)
        self.stale[record["hash"]] = record
        return record

    def _record_of(self, block: Checked, parent: dict | None, source: str) -> dict:
        coinbase = block.txs[0]
        parent_work = int(parent["chainwork"], 16) if parent else 0
        stripped_size = len(block.raw) - sum(len(tx.serialize()) - len(tx.serialize(False)) for tx in block.txs)
        return {
            "hash": block.hash,
            "height": block.height,
            "prevhash": parent["hash"] if parent else None,
            "time": block.header.time,
            "bits": f"{block.header.bits:08x}",
            "version": block.header.version,
            "nonce": block.header.nonce,
            "merkleroot": to_display(block.header.merkle_root),
            "chainwork": f"{parent_work + block_work(block.header.bits):064x}",
            "coinbase_outputs": [[txout.value, txout.script.hex()] for txout in coinbase.vout],
            "coinbase_value": coinbase.value_out(),
            "txids": [to_display(tx.txid()) for tx in block.txs],
            "txs": block.included,
            "size": len(block.raw),
            "strippedsize": stripped_size,
            "weight": stripped_size * 3 + len(block.raw),
            "source": source,
            "hex": block.raw.hex(),
        }

    def build_block(self, script: bytes, entries: list[dict], block_time: int) -> tuple[bytes, bool]:
        """A block on the tip as Core's miner makes it; returns (raw, whether its proof of work is real)."""
        height = self.tip["height"] + 1
        txs = [decode_block(b"\0" * 80 + b"\x01" + bytes.fromhex(e["data"]))[1][0] for e in entries]
        wtxids = [ZERO32] + [tx.wtxid() for tx in txs]
        commitment = sha256d(witness_merkle_root(wtxids) + ZERO32)
        value = subsidy(height, self.params.halving_interval) + sum(e["fee"] for e in entries)
        script_sig = bip34_height(height) + push_data(self.rng.randbytes(8))
        coinbase = Tx(2, [TxIn(ZERO32, NULL_INDEX, script_sig, 0xFFFFFFFF, [ZERO32])],
                      [TxOut(value, script), TxOut(0, WITNESS_COMMITMENT_PREFIX + commitment)], 0)
        txs.insert(0, coinbase)
        header = Header(TEMPLATE_VERSION, from_display(self.tip["hash"]), merkle_root([tx.txid() for tx in txs]),
                        block_time, self.bits, 0)
        solved = False
        if (1 << 256) // (self.target + 1) <= 1 << 16:  # grind only where a few thousand tries are enough
            for nonce in range(1 << 20):
                header.nonce = nonce
                if int.from_bytes(header.hash(), "little") <= self.target:
                    solved = True
                    break
        body = compact_size(len(txs)) + b"".join(tx.serialize() for tx in txs)
        return header.serialize() + body, solved

    def mine_one(self, script: bytes, entries: list[dict], block_time: int, source: str) -> dict:
        """Mine one block as another miner would; it goes through the same checks as a submitted one."""
        raw, solved = self.build_block(script, entries, block_time)
        checked = self.check_block(raw, check_pow=solved)
        if not isinstance(checked, Checked):
            raise RuntimeError(f"the node's own block was refused: {checked}")
        return self.connect(checked, source)

    def next_block_time(self) -> int:
        return max(int(time.time()), self.median_time_past() + 1)

    def disconnect_tip(self) -> dict:
        """Take the tip off the active chain; its transactions go back to the mempool, as in Core."""
        record = self.blocks.pop()
        del self.by_hash[record["hash"]]
        self.stale[record["hash"]] = record
        if record["txs"]:
            self.mempool = {**{entry["txid"]: entry for entry in record["txs"]}, **self.mempool}
            self.mempool_counter += 1
        return record

    def branch_to(self, record: dict) -> list[dict] | None:
        """The blocks from the active chain's fork point (excluded) up to `record`, oldest first; None when one of
        them is marked invalid or an ancestor is unknown."""
        path = []
        current: dict | None = record
        while current is not None and not self.is_active(current):
            if current["hash"] in self.invalid:
                return None
            path.append(current)
            current = self.find(current["prevhash"]) if current["prevhash"] else None
        return None if current is None else path[::-1]

    def activate_best_chain(self) -> bool:
        """Core's ActivateBestChain over the blocks this node knows: the valid branch with the most work becomes the
        active chain (ties keep the current one). True when the tip changed."""
        best = self.tip
        for record in self.stale.values():
            if int(record["chainwork"], 16) > int(best["chainwork"], 16) and self.branch_to(record) is not None:
                best = record
        if best is self.tip:
            return False
        path = self.branch_to(best)
        fork_height = path[0]["height"] - 1
        while self.tip["height"] > fork_height:
            self.disconnect_tip()
        for record in path:
            del self.stale[record["hash"]]
            self.blocks.append(record)
            self.by_hash[record["hash"]] = record
            for entry in record["txs"]:
                self.mempool.pop(entry["txid"], None)
            self.mempool_counter += 1
        return True

    def add_mempool(self, entries: list[dict]) -> None:
        for entry in entries:
            self.mempool[entry["txid"]] = entry
        if entries:
            self.mempool_counter += 1

    def log_submission(self, entry: dict) -> None:
        self.submissions.append(entry)
        del self.submissions[:-MAX_SUBMISSIONS]


def _check_outputs(tx: Tx) -> str | None:
    """CheckTransaction's output rules, for the coinbase (the other transactions are the mempool's)."""
    if not tx.vout:
        return "bad-txns-vout-empty"
    total = 0
    for txout in tx.vout:
        if txout.value < 0:
            return "bad-txns-vout-negative"
        if txout.value > MAX_MONEY:
            return "bad-txns-vout-toolarge"
        total += txout.value
        if total > MAX_MONEY:
            return "bad-txns-txouttotal-toolarge"
    return None


def _is_final(tx: Tx, height: int, mtp: int) -> bool:
    """IsFinalTx with BIP113: a locktime below the height (or median time) or all sequences final."""
    if tx.locktime == 0:
        return True
    limit = height if tx.locktime < 500_000_000 else mtp
    return tx.locktime < limit or all(txin.sequence == 0xFFFFFFFF for txin in tx.vin)


def _check_witness(txs: list[Tx]) -> str | None:
    """BIP141's commitment rules, in Core's order."""
    coinbase = txs[0]
    index = witness_commitment_index(coinbase)
    if index is None:
        return "unexpected-witness" if any(tx.has_witness for tx in txs) else None
    stack = coinbase.vin[0].witness
    if len(stack) != 1 or len(stack[0]) != 32:
        return "bad-witness-nonce-size"
    root = witness_merkle_root([tx.wtxid() for tx in txs])
    if sha256d(root + stack[0]) != coinbase.vout[index].script[6:38]:
        return "bad-witness-merkle-match"
    return None


# ---------------------------------------------------------------------------------------------------------------
# ZMQ: one thread owns the socket (zmq sockets are not thread-safe); RPC threads only enqueue.


class HashblockPublisher:
    """Publishes `[b"hashblock", hash, LE sequence]` like Core's CZMQPublishHashBlockNotifier.

    The socket is an XPUB, which is a PUB on the wire but also tells us about subscriptions: tests read the count
    (`fake_zmqsubscriptions`) to know a subscriber is in place instead of sleeping and hoping.
    """

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.socket.setsockopt(zmq.SNDHWM, 1000)
        self.socket.setsockopt(zmq.LINGER, 200)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.subscriptions = 0
        self.sequence = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="zmq", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def publish(self, block_hash: str) -> None:
        self.outbox.put(bytes.fromhex(block_hash))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self.stopping.is_set():
                if poller.poll(20):
                    self._read_subscriptions()
                self._send_pending()
            self._send_pending()
        finally:
            self.socket.close()
            self.context.term()

    def _read_subscriptions(self) -> None:
        for _ in range(1000):
            try:
                message = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01" and b"hashblock".startswith(message[1:]):
                self.subscriptions += 1

    def _send_pending(self) -> None:
        while True:
            try:
                block_hash = self.outbox.get_nowait()
            except queue.Empty:
                return
            self.socket.send_multipart([b"hashblock", block_hash, struct.pack("<I", self.sequence)])
            self.sequence = (self.sequence + 1) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------------
# RPC methods.

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "string", "number", "bool", "object", "verbosity" (number or bool), "any"
    default: Any = REQUIRED


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _check_type(value: Any, kind: str) -> Any:
    actual = _json_type(value)
    allowed = {"verbosity": ("number", "bool"), "any": (actual,)}.get(kind, (kind,))
    if actual not in allowed:
        raise RpcError(RPC_TYPE_ERROR, f"JSON value of type {actual} is not of expected type {allowed[0]}")
    if actual == "number" and kind in ("number", "verbosity"):
        if value != int(value):
            raise RpcError(RPC_TYPE_ERROR, "JSON integer out of range")
        return int(value)
    return value


def parse_hash(value: str, name: str) -> str:
    """Core's ParseHashV: exactly 64 hex digits."""
    if len(value) != 64:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    if any(c not in "0123456789abcdefABCDEF" for c in value):
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
    return value.lower()


def parse_hex(value: str, name: str) -> bytes:
    if len(value) % 2 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
    return bytes.fromhex(value)


def btc(satoshi: int) -> float:
    return satoshi / COIN


class Node:
    """The RPC methods over a Chain. One condition variable guards all state and wakes long-polls."""

    def __init__(self, args: argparse.Namespace, stop: threading.Event) -> None:
        self.params = CHAINS[args.chain]
        self.args = args
        self.stop_event = stop
        self.started = time.time()
        self.cond = threading.Condition()
        self.ibd = False
        self.submit_mode = "normal"      # fake_setsubmitmode: what submitblock does with the next blocks
        self.rpc_stats = {"connections": 0, "idle_closed": 0}
        self.stats_lock = threading.Lock()   # not `cond`: a stalled node still accepts and closes connections
        self.publisher: HashblockPublisher | None = None
        self.credentials: list[bytes] = []
        self.chain_dir = Path(args.datadir) / self.params.subdir
        self.chain_dir.mkdir(parents=True, exist_ok=True)
        self.chain = Chain(self.params, int(args.bits, 16), self.chain_dir / "fakechain.json", random.Random())
        if self.chain.path.exists():
            self.chain.load()
        else:
            self.chain.create(args.start_height, args.mempool_txs, args.witness_fraction)
        self.methods: dict[str, tuple[Callable[..., Any], tuple[Param, ...]]] = {}
        self._register()

    # -- plumbing

    def _register(self) -> None:
        s, n, b, o = "string", "number", "bool", "object"
        table = {
            "getblocktemplate": (self.getblocktemplate, (Param("template_request", o, {}),)),
            "submitblock": (self.submitblock, (Param("hexdata", s), Param("dummy", "any", None))),
            "getbestblockhash": (self.getbestblockhash, ()),
            "getblockcount": (self.getblockcount, ()),
            "getblockhash": (self.getblockhash, (Param("height", n),)),
            "getblockheader": (self.getblockheader, (Param("blockhash", s), Param("verbose", b, True))),
            "getblock": (self.getblock, (Param("blockhash", s), Param("verbosity", "verbosity", 1))),
            "getblockchaininfo": (self.getblockchaininfo, ()),
            "getchaintips": (self.getchaintips, ()),
            "getdifficulty": (self.getdifficulty, ()),
            "getnetworkinfo": (self.getnetworkinfo, ()),
            "getconnectioncount": (lambda: 8, ()),
            "getmininginfo": (self.getmininginfo, ()),
            "getmempoolinfo": (self.getmempoolinfo, ()),
            "getrawmempool": (self.getrawmempool, (Param("verbose", b, False), Param("mempool_sequence", b, False))),
            "getzmqnotifications": (self.getzmqnotifications, ()),
            "validateaddress": (self.validateaddress, (Param("address", s),)),
            "uptime": (lambda: int(time.time() - self.started), ()),
            "ping": (lambda: None, ()),
            "stop": (self.stop, ()),
            "help": (self.help, (Param("command", s, ""),)),
            "fake_mine": (self.fake_mine, (Param("nblocks", n, 1), Param("script", s, "51"))),
            "fake_reorg": (self.fake_reorg, (Param("depth", n),)),
            "fake_addtxs": (self.fake_addtxs, (Param("count", n),)),
            "fake_setibd": (self.fake_setibd, (Param("state", b),)),
            "fake_submissions": (self.fake_submissions, ()),
            "fake_block": (self.fake_block, (Param("blockhash", s),)),
            "fake_zmqsubscriptions": (self.fake_zmqsubscriptions, ()),
            "fake_setsubmitmode": (self.fake_setsubmitmode, (Param("mode", s),)),
            "fake_activatebestchain": (self.fake_activatebestchain, ()),
            "fake_stall": (self.fake_stall, (Param("seconds", n),)),
            "fake_rpcstats": (self.fake_rpcstats, ()),
            "invalidateblock": (self.invalidateblock, (Param("blockhash", s),)),
            "reconsiderblock": (self.reconsiderblock, (Param("blockhash", s),)),
        }
        self.methods.update(table)

    def call(self, method: str, params: list | dict) -> Any:
        """Check the arguments the way Core's RPCHelpMan does, then run the method."""
        if method not in self.methods:
            raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")
        function, specs = self.methods[method]
        usage = f"{method} " + " ".join(p.name if p.default is REQUIRED else f"( {p.name} )" for p in specs)
        if isinstance(params, dict):
            unknown = set(params) - {p.name for p in specs}
            if unknown:
                raise RpcError(RPC_INVALID_PARAMETER, f"Unknown named parameter {sorted(unknown)[0]}")
            params = [params.get(p.name) for p in specs]
            while params and params[-1] is None:
                params.pop()
        required = sum(1 for p in specs if p.default is REQUIRED)
        if not required <= len(params) <= len(specs):
            raise RpcError(RPC_MISC_ERROR, usage.strip())
        values = []
        for spec, value in zip(specs, params + [None] * (len(specs) - len(params))):
            if value is None and spec.default is not REQUIRED:
                values.append(spec.default)
            else:
                values.append(_check_type(value, spec.kind))
        return function(*values)

    def notify_tip(self) -> None:
        """After a tip change (caller holds the lock): wake long-polls and tell ZMQ subscribers."""
        self.cond.notify_all()
        if self.publisher is not None:
            self.publisher.publish(self.chain.tip["hash"])

    def _record(self, block_hash: str) -> dict:
        record = self.chain.find(parse_hash(block_hash, "blockhash"))
        if record is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return record

    # -- mining

    def getblocktemplate(self, request: dict) -> Any:
        mode = request.get("mode")
        if mode is not None and not isinstance(mode, str):
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid mode")
        if mode == "proposal":
            return self._proposal(request.get("data"))
        if mode not in (None, "template"):
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid mode")
        with self.cond:
            if self.ibd:
                raise RpcError(RPC_CLIENT_IN_INITIAL_DOWNLOAD,
                               "Bitcoin Core is in initial sync and waiting for blocks...")
            if "longpollid" in request:
                self._wait_longpoll(request["longpollid"])
            rules = request.get("rules")
            if not isinstance(rules, list) or "segwit" not in rules:
                raise RpcError(RPC_INVALID_PARAMETER, "getblocktemplate must be called with the segwit rule set "
                                                      "(call with {\"rules\": [\"segwit\"]})")
            return self._template()

    def _wait_longpoll(self, longpollid: Any) -> None:
        """Core's long poll: answer when the tip changes, or after a minute if the mempool changed since."""
        chain = self.chain
        if isinstance(longpollid, str):
            watched = parse_hash(longpollid[:64], "longpollid")
            digits = longpollid[64:]
            counter = int(digits) if digits.isdigit() else 0
        else:
            watched, counter = chain.tip["hash"], chain.mempool_counter
        check_mempool_at = time.monotonic() + self.args.longpoll_tx_wait
        while chain.tip["hash"] == watched and not self.stop_event.is_set():
            remaining = check_mempool_at - time.monotonic()
            if remaining <= 0:
                if chain.mempool_counter != counter:
                    return
                check_mempool_at += 10
                continue
            self.cond.wait(timeout=min(remaining, 1.0))

    def _template(self) -> dict:
        chain = self.chain
        entries = chain.select_template_txs()
        height = chain.tip["height"] + 1
        wtxids = [ZERO32] + [from_display(entry["hash"]) for entry in entries]
        commitment = sha256d(witness_merkle_root(wtxids) + ZERO32)
        mintime = chain.median_time_past() + 1
        return {
            "capabilities": ["proposal"],
            "version": int(self.args.template_version, 16),
            "rules": ["csv", "!segwit", "taproot"],
            "vbavailable": {},
            "vbrequired": 0,
            "previousblockhash": chain.tip["hash"],
            "transactions": [
                {key: entry[key] for key in ("data", "txid", "hash")} | {"depends": []} |
                {key: entry[key] for key in ("fee", "sigops", "weight")}
                for entry in entries
            ],
            "coinbaseaux": {},
            "coinbasevalue": subsidy(height, self.params.halving_interval) + sum(e["fee"] for e in entries),
            "longpollid": chain.longpoll_id(),
            "target": f"{chain.target:064x}",
            "mintime": mintime,
            "mutable": ["time", "transactions", "prevblock"],
            "noncerange": "00000000ffffffff",
            "sigoplimit": MAX_BLOCK_SIGOPS_COST,
            "sizelimit": MAX_BLOCK_WEIGHT,
            "weightlimit": MAX_BLOCK_WEIGHT,
            "curtime": max(int(time.time()), mintime),
            "bits": f"{chain.bits:08x}",
            "height": height,
            "default_witness_commitment": (WITNESS_COMMITMENT_PREFIX + commitment).hex(),
        }

    def _proposal(self, data: Any) -> str | None:
        """BIP23 proposals: Core's TestBlockValidity, i.e. every check except proof of work, nothing stored."""
        if not isinstance(data, str):
            raise RpcError(RPC_TYPE_ERROR, "Missing data String key for proposal")
        raw = self._block_bytes(data)
        with self.cond:
            chain = self.chain
            try:
                header = decode_block(raw)[0]
            except DecodeError:
                raise RpcError(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
            block_hash = to_display(header.hash())
            if chain.find(block_hash) is not None:
                return "duplicate"
            if block_hash in chain.invalid:
                return "duplicate-invalid"
            if to_display(header.prev_hash) != chain.tip["hash"]:
                return "inconclusive-not-best-prevblk"
            invalid_before = set(chain.invalid)
            result = chain.check_block(raw, check_pow=False)
            chain.invalid = invalid_before  # a proposal leaves no trace
            return None if isinstance(result, Checked) else result

    @staticmethod
    def _block_bytes(data: str) -> bytes:
        if not data or len(data) % 2 or any(c not in "0123456789abcdefABCDEF" for c in data):
            raise RpcError(RPC_DESERIALIZATION_ERROR, "Block decode failed")
        return bytes.fromhex(data)

    def submitblock(self, hexdata: str, _dummy: Any = None) -> str | None:
        with self.cond:
            chain = self.chain
            entry: dict[str, Any] = {"hash": None, "height": None, "result": "Block decode failed",
                                     "time": int(time.time())}
            try:
                raw = self._block_bytes(hexdata)
                header, txs = decode_block(raw)
            except (RpcError, DecodeError):
                chain.log_submission(entry)
                chain.persist()
                raise RpcError(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
            parent = chain.find(to_display(header.prev_hash))
            entry.update(hash=to_display(header.hash()), height=parent["height"] + 1 if parent else None,
                         coinbase_outputs=[[o.value, o.script.hex()] for o in txs[0].vout] if txs else [])
            mode = self.submit_mode
            result = mode[len("reject:"):] if mode.startswith("reject:") else chain.check_block(raw)
            if isinstance(result, Checked) and mode == "inconclusive":
                chain.store_side(result, "submitblock")
                entry["result"] = "inconclusive"
            elif isinstance(result, Checked):
                chain.connect(result, "submitblock")
                entry["result"] = None
                self.notify_tip()
            else:
                entry["result"] = result
            chain.log_submission(entry)
            chain.persist()
            return entry["result"]

    # -- chain queries

    def getbestblockhash(self) -> str:
        with self.cond:
            return self.chain.tip["hash"]

    def getblockcount(self) -> int:
        with self.cond:
            return self.chain.tip["height"]

    def getblockhash(self, height: int) -> str:
        with self.cond:
            if not 0 <= height <= self.chain.tip["height"]:
                raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range")
            return self.chain.blocks[height]["hash"]

    def _header_fields(self, record: dict) -> dict:
        chain = self.chain
        active = chain.is_active(record)
        height = record["height"]
        fields = {
            "hash": record["hash"],
            "confirmations": chain.tip["height"] - height + 1 if active else -1,
            "height": height,
            "version": record["version"],
            "versionHex": f"{record['version'] & 0xFFFFFFFF:08x}",
            "merkleroot": record["merkleroot"],
            "time": record["time"],
            "mediantime": chain.median_time_past(record),
            "nonce": record["nonce"],
            "bits": record["bits"],
            "difficulty": difficulty(int(record["bits"], 16)),
            "chainwork": record["chainwork"],
            "nTx": len(record["txids"]),
        }
        if record["prevhash"] is not None:
            fields["previousblockhash"] = record["prevhash"]
        if active and height < chain.tip["height"]:
            fields["nextblockhash"] = chain.blocks[height + 1]["hash"]
        return fields

    def getblockheader(self, blockhash: str, verbose: bool) -> Any:
        with self.cond:
            record = self._record(blockhash)
            return self._header_fields(record) if verbose else record["hex"][:160]

    def getblock(self, blockhash: str, verbosity: Any) -> Any:
        verbosity = int(verbosity)
        with self.cond:
            record = self._record(blockhash)
            if verbosity <= 0:
                return record["hex"]
            fields = self._header_fields(record)
            fields.update(strippedsize=record["strippedsize"], size=record["size"], weight=record["weight"])
            if verbosity == 1:
                fields["tx"] = list(record["txids"])
            else:
                fees = {entry["txid"]: entry["fee"] for entry in record["txs"]}
                txs = decode_block(bytes.fromhex(record["hex"]))[1]
                fields["tx"] = [self._describe_tx(tx, fees.get(to_display(tx.txid()))) for tx in txs]
            fields["nTx"] = len(record["txids"])
            return fields

    def _describe_tx(self, tx: Tx, fee: int | None) -> dict:
        raw, stripped = tx.serialize(), tx.serialize(with_witness=False)
        weight = len(stripped) * 3 + len(raw)
        vin = []
        for txin in tx.vin:
            item: dict[str, Any]
            if tx.is_coinbase:
                item = {"coinbase": txin.script_sig.hex()}
            else:
                item = {"txid": to_display(txin.prev_hash), "vout": txin.prev_index,
                        "scriptSig": {"hex": txin.script_sig.hex()}}
            if txin.witness:
                item["txinwitness"] = [w.hex() for w in txin.witness]
            item["sequence"] = txin.sequence
            vin.append(item)
        described = {
            "txid": to_display(tx.txid()), "hash": to_display(sha256d(raw)), "version": tx.version,
            "size": len(raw), "vsize": (weight + 3) // 4, "weight": weight, "locktime": tx.locktime, "vin": vin,
            "vout": [{"value": btc(o.value), "n": i, "scriptPubKey": describe_script(o.script, self.params)}
                     for i, o in enumerate(tx.vout)],
        }
        if fee is not None:
            described["fee"] = btc(fee)
        described["hex"] = raw.hex()
        return described

    def getblockchaininfo(self) -> dict:
        with self.cond:
            chain = self.chain
            tip = chain.tip
            return {
                "chain": self.params.name,
                "blocks": tip["height"],
                "headers": tip["height"],
                "bestblockhash": tip["hash"],
                "difficulty": difficulty(int(tip["bits"], 16)),
                "time": tip["time"],
                "mediantime": chain.median_time_past(),
                "verificationprogress": 1,
                "initialblockdownload": self.ibd,
                "chainwork": tip["chainwork"],
                "size_on_disk": sum(record["size"] for record in chain.blocks),
                "pruned": False,
                "warnings": "",
            }

    def getchaintips(self) -> list[dict]:
        with self.cond:
            chain = self.chain
            tips = [{"height": chain.tip["height"], "hash": chain.tip["hash"], "branchlen": 0, "status": "active"}]
            children = {record["prevhash"] for record in chain.stale.values()}
            for record in chain.stale.values():
                if record["hash"] in children:
                    continue
                fork = record
                while fork is not None and not chain.is_active(fork):
                    fork = chain.find(fork["prevhash"])
                branch = record["height"] - (fork["height"] if fork else 0)
                tips.append({"height": record["height"], "hash": record["hash"], "branchlen": branch,
                             "status": "valid-fork"})
            return tips

    def getdifficulty(self) -> float:
        with self.cond:
            return difficulty(int(self.chain.tip["bits"], 16))

    def getnetworkinfo(self) -> dict:
        return {
            "version": CLIENT_VERSION,
            "subversion": SUBVERSION,
            "protocolversion": PROTOCOL_VERSION,
            "localservices": "0000000000000c09",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
            "localrelay": True,
            "timeoffset": 0,
            "networkactive": True,
            "connections": 8,
            "connections_in": 0,
            "connections_out": 8,
            "networks": [],
            "relayfee": 0.00001,
            "incrementalfee": 0.00001,
            "localaddresses": [],
            "warnings": "",
        }

    def getmininginfo(self) -> dict:
        with self.cond:
            chain = self.chain
            return {
                "blocks": chain.tip["height"],
                "difficulty": difficulty(int(chain.tip["bits"], 16)),
                "networkhashps": self._network_hashps(),
                "pooledtx": len(chain.mempool),
                "chain": self.params.name,
                "warnings": "",
            }

    def _network_hashps(self, lookup: int = 120) -> float:
        """Core's GetNetworkHashPS: the work of the last `lookup` blocks over the time they took."""
        blocks = self.chain.blocks
        first = blocks[max(0, len(blocks) - 1 - lookup)]
        last = blocks[-1]
        span = last["time"] - first["time"]
        if span <= 0:
            return 0.0
        return (int(last["chainwork"], 16) - int(first["chainwork"], 16)) / span

    def getmempoolinfo(self) -> dict:
        with self.cond:
            entries = self.chain.mempool.values()
            return {
                "loaded": True,
                "size": len(entries),
                "bytes": sum((e["weight"] + 3) // 4 for e in entries),
                "usage": sum(len(e["data"]) for e in entries),
                "total_fee": btc(sum(e["fee"] for e in entries)),
                "maxmempool": 300_000_000,
                "mempoolminfee": 0.00001,
                "minrelaytxfee": 0.00001,
                "incrementalrelayfee": 0.00001,
                "unbroadcastcount": 0,
                "fullrbf": False,
            }

    def getrawmempool(self, verbose: bool, mempool_sequence: bool) -> Any:
        with self.cond:
            chain = self.chain
            if verbose and mempool_sequence:
                raise RpcError(RPC_INVALID_PARAMETER,
                               "Verbose results cannot contain mempool sequence values. (Remove the verbose "
                               "flag or the mempool_sequence flag)")
            if mempool_sequence:
                return {"txids": list(chain.mempool), "mempool_sequence": chain.mempool_counter}
            if not verbose:
                return list(chain.mempool)
            result = {}
            for txid, entry in chain.mempool.items():
                vsize = (entry["weight"] + 3) // 4
                fee = btc(entry["fee"])
                result[txid] = {
                    "vsize": vsize, "weight": entry["weight"], "time": int(self.started),
                    "height": chain.tip["height"], "descendantcount": 1, "descendantsize": vsize,
                    "ancestorcount": 1, "ancestorsize": vsize, "wtxid": entry["hash"],
                    "fees": {"base": fee, "modified": fee, "ancestor": fee, "descendant": fee},
                    "depends": [], "spentby": [], "bip125-replaceable": True, "unbroadcast": False,
                }
            return result

    def getzmqnotifications(self) -> list[dict]:
        if self.publisher is None:
            return []
        return [{"type": "pubhashblock", "address": self.publisher.endpoint, "hwm": 1000}]

    def validateaddress(self, address: str) -> dict:
        return validate_address(address, self.params)

    def stop(self) -> str:
        """Like Core: answer first, then shut down."""
        threading.Timer(0.05, self.stop_event.set).start()
        return "Bitcoin Core stopping"

    def help(self, command: str) -> str:
        if command:
            if command not in self.methods:
                return f"help: unknown command: {command}"
            specs = self.methods[command][1]
            return f"{command} " + " ".join(p.name for p in specs)
        return "\n".join(sorted(self.methods))

    # -- test controls

    def fake_mine(self, nblocks: int, script: str) -> list[str]:
        """Blocks found by another miner: a proper coinbase paying `script`, confirming the template's txs."""
        if not 1 <= nblocks <= 1000:
            raise RpcError(RPC_INVALID_PARAMETER, "nblocks must be between 1 and 1000")
        payout = parse_hex(script, "script")
        hashes = []
        with self.cond:
            chain = self.chain
            for _ in range(nblocks):
                record = chain.mine_one(payout, chain.select_template_txs(), chain.next_block_time(), "fake_mine")
                chain.persist()
                self.notify_tip()
                hashes.append(record["hash"])
        return hashes

    def fake_reorg(self, depth: int) -> list[str]:
        """Replace the last `depth` blocks by `depth + 1` empty ones; one hashblock for the new tip, as Core."""
        with self.cond:
            chain = self.chain
            if not 1 <= depth <= min(chain.tip["height"], 1000):
                raise RpcError(RPC_INVALID_PARAMETER, "depth must be between 1 and the tip height (at most 1000)")
            for _ in range(depth):
                chain.disconnect_tip()
            other_miner = b"\x00\x14" + chain.rng.randbytes(20)
            hashes = [chain.mine_one(other_miner, [], chain.next_block_time(), "fake_reorg")["hash"]
                      for _ in range(depth + 1)]
            chain.persist()
            self.notify_tip()
            return hashes

    def fake_addtxs(self, count: int) -> list[str]:
        if not 1 <= count <= 10_000:
            raise RpcError(RPC_INVALID_PARAMETER, "count must be between 1 and 10000")
        with self.cond:
            chain = self.chain
            entries = make_mempool_txs(chain.rng, count, self.args.witness_fraction)
            chain.add_mempool(entries)
            chain.persist()
            self.cond.notify_all()
            return [entry["txid"] for entry in entries]

    def fake_setibd(self, state: bool) -> bool:
        with self.cond:
            self.ibd = state
            return self.ibd

    def fake_submissions(self) -> list[dict]:
        with self.cond:
            return list(self.chain.submissions)

    def fake_block(self, blockhash: str) -> dict:
        with self.cond:
            record = self._record(blockhash)
            return {
                "hash": record["hash"],
                "height": record["height"],
                "active": self.chain.is_active(record),
                "source": record["source"],
                "coinbase_outputs": record["coinbase_outputs"],
                "coinbase_value": record["coinbase_value"],
                "tx_count": len(record["txids"]),
                "txids": record["txids"],
                "hex": record["hex"],
            }

    def fake_zmqsubscriptions(self) -> int:
        return self.publisher.subscriptions if self.publisher is not None else 0

    def fake_setsubmitmode(self, mode: str) -> str:
        """What submitblock does from now on: "normal"; "inconclusive" (a valid block is kept but not connected, as
        Core does with a valid block that is not on its best chain); "busy" (HTTP 503 "Work queue depth exceeded",
        Core's answer when its RPC work queue is full); "reject:REASON" (refuse with REASON, unchecked)."""
        if mode not in ("normal", "inconclusive", "busy") and not (mode.startswith("reject:") and len(mode) > 7):
            raise RpcError(RPC_INVALID_PARAMETER, "mode must be normal, inconclusive, busy or reject:REASON")
        with self.cond:
            self.submit_mode = mode
            return mode

    def fake_activatebestchain(self) -> str:
        """Connect the best valid branch this node knows (blocks kept `inconclusive` included)."""
        with self.cond:
            if self.chain.activate_best_chain():
                self.chain.persist()
                self.notify_tip()
            return self.chain.tip["hash"]

    def fake_stall(self, seconds: float) -> bool:
        """Hold the node's lock for `seconds`, as Core holds cs_main while it connects a block or builds a
        template: every chain call waits meanwhile. Whole seconds. Returns once the lock is held."""
        if not 0 < seconds <= 120:
            raise RpcError(RPC_INVALID_PARAMETER, "seconds must be between 0 and 120")
        held = threading.Event()

        def hold() -> None:
            with self.cond:
                held.set()
                time.sleep(seconds)

        threading.Thread(target=hold, name="stall", daemon=True).start()
        held.wait()
        return True

    def fake_rpcstats(self) -> dict:
        """HTTP connections accepted, and idle kept-alive ones closed after --rpcservertimeout."""
        with self.stats_lock:
            return dict(self.rpc_stats)

    def invalidateblock(self, blockhash: str) -> None:
        """Core's invalidateblock: mark the block invalid (and so everything built on it) and move to the best
        valid chain."""
        with self.cond:
            chain = self.chain
            record = self._record(blockhash)
            if record["height"] == 0:
                raise RpcError(RPC_MISC_ERROR, "Cannot invalidate the genesis block")
            chain.invalid.add(record["hash"])
            if chain.is_active(record):
                while chain.tip["height"] >= record["height"]:
                    chain.disconnect_tip()
            chain.activate_best_chain()
            chain.persist()
            self.notify_tip()
        return None

    def reconsiderblock(self, blockhash: str) -> None:
        """Core's reconsiderblock: clear the invalid mark of the block and its descendants, then move to the best
        valid chain."""
        with self.cond:
            chain = self.chain
            record = self._record(blockhash)
            for other in list(chain.stale.values()) + chain.blocks:
                current: dict | None = other
                while current is not None and current["height"] >= record["height"]:
                    if current["hash"] == record["hash"]:
                        chain.invalid.discard(other["hash"])
                        break
                    current = chain.find(current["prevhash"]) if current["prevhash"] else None
            if chain.activate_best_chain():
                self.notify_tip()
            chain.persist()
        return None

    # -- JSON-RPC 1.0 envelope

    def execute(self, request: Any) -> tuple[dict, int | None]:
        """One request object to (reply, error code or None), never raising."""
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict):
                raise RpcError(RPC_INVALID_REQUEST, "Invalid Request object")
            method = request.get("method")
            if method is None:
                raise RpcError(RPC_INVALID_REQUEST, "Missing method")
            if not isinstance(method, str):
                raise RpcError(RPC_INVALID_REQUEST, "Method must be a string")
            params = request.get("params")
            if params is None:
                params = []
            if not isinstance(params, (list, dict)):
                raise RpcError(RPC_INVALID_REQUEST, "Params must be an array or object")
            result = self.call(method, params)
            return {"result": result, "error": None, "id": request_id}, None
        except RpcError as exc:
            return {"result": None, "error": {"code": exc.code, "message": exc.message}, "id": request_id}, exc.code
        except Exception as exc:  # a bug in this fake must still answer, like Core's catch of std::exception
            traceback.print_exc(file=sys.stderr)
            error = {"code": RPC_MISC_ERROR, "message": str(exc)}
            return {"result": None, "error": error, "id": request_id}, RPC_MISC_ERROR

    def handle_body(self, body: bytes) -> tuple[int, bytes]:
        """Core's HTTPReq_JSONRPC: HTTP 500 for errors, 404 for an unknown method, 400 for a bad request."""
        try:
            request = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError):
            return 500, _dump({"result": None, "error": {"code": RPC_PARSE_ERROR, "message": "Parse error"},
                               "id": None})
        if isinstance(request, list):
            return 200, _dump([self.execute(item)[0] for item in request])
        if not isinstance(request, dict):
            error = {"code": RPC_PARSE_ERROR, "message": "Top-level object parse error"}
            return 500, _dump({"result": None, "error": error, "id": None})
        if request.get("method") == "submitblock" and self.submit_mode == "busy":
            return 503, b"Work queue depth exceeded"
        reply, code = self.execute(request)
        status = {None: 200, RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(code, 500)
        return status, _dump(reply)

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            offered = base64.b64decode(header[6:].strip(), validate=True)
        except ValueError:
            return False
        return any(hmac.compare_digest(offered, accepted) for accepted in self.credentials)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# ---------------------------------------------------------------------------------------------------------------
# HTTP.


class RpcHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive and a Content-Length on every reply, as Core's libevent server."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # Core's -rpcservertimeout: an idle keep-alive connection is closed after 30 s (--rpcservertimeout)
    server: "RpcServer"

    def setup(self) -> None:
        self.timeout = self.server.node.args.rpcservertimeout
        self.count("connections")
        super().setup()

    def count(self, name: str) -> None:
        node = self.server.node
        with node.stats_lock:
            node.rpc_stats[name] += 1

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests read stdout for the ready line and nothing else."""

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        if format.startswith("Request timed out"):     # http.server's idle timeout: the connection is closed
            self.count("idle_closed")

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.isdigit() or int(length) > MAX_HTTP_BODY:
            self.close_connection = True
            self._reply(413, b"", "text/html")
            return None
        return self.rfile.read(int(length))

    def _reply(self, status: int, body: bytes, content_type: str = "application/json",
               extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, post: bool) -> None:
        body = self._read_body()
        if body is None:
            return
        if self.path != "/":
            self._reply(404, b"")  # /wallet/... too: this node has no wallet
            return
        if not post:
            self._reply(405, b"JSONRPC server handles only POST requests", "text/html")
            return
        node = self.server.node
        if not node.authorized(self.headers.get("Authorization")):
            self._reply(401, b"", extra={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
            return
        status, reply = node.handle_body(body)
        self._reply(status, reply)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._route(post=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(post=False)

    do_PUT = do_DELETE = do_GET


class RpcServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], node: Node) -> None:
        super().__init__(address, RpcHandler)
        self.node = node


# ---------------------------------------------------------------------------------------------------------------
# Entry point.


def write_cookie(path: Path) -> str:
    """A fresh `__cookie__:<64 hex>` at every start, mode 0600, written atomically, as Core does."""
    value = "__cookie__:" + secrets.token_hex(32)
    tmp = path.with_name(".cookie.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--rpc-port", type=int, default=0)
    parser.add_argument("--rpc-host", default="127.0.0.1")
    parser.add_argument("--rpcuser")
    parser.add_argument("--rpcpassword")
    parser.add_argument("--zmq-hashblock", help="e.g. tcp://127.0.0.1:28332 (port * picks a free one)")
    parser.add_argument("--chain", choices=sorted(CHAINS), default="regtest")
    parser.add_argument("--bits", default="207fffff", help="compact target of every new block, 8 hex digits")
    parser.add_argument("--template-version", default="20000000",
                        help="getblocktemplate's version, 8 hex digits (30000000: a deployment signalling on bit 28, "
                             "as a real Core v31 regtest past height 144)")
    parser.add_argument("--start-height", type=int, default=100)
    parser.add_argument("--mempool-txs", type=int, default=20)
    parser.add_argument("--witness-fraction", type=float, default=0.5)
    parser.add_argument("--rpcservertimeout", type=float, default=30.0,
                        help="seconds an idle kept-alive HTTP connection stays open (Core: -rpcservertimeout, 30)")
    parser.add_argument("--longpoll-tx-wait", type=float, default=60.0,
                        help="seconds a long poll waits before a mempool change alone answers it (Core: 60)")
    args = parser.parse_args(argv)
    if args.rpc_host != "127.0.0.1":
        parser.error("--rpc-host must be 127.0.0.1: this fake serves loopback only")
    if args.zmq_hashblock and not args.zmq_hashblock.startswith("tcp://127.0.0.1:"):
        parser.error("--zmq-hashblock must be tcp://127.0.0.1:PORT")
    if (args.rpcuser is None) != (args.rpcpassword is None):
        parser.error("--rpcuser and --rpcpassword go together")
    if len(args.bits) != 8 or any(c not in "0123456789abcdefABCDEF" for c in args.bits):
        parser.error("--bits must be 8 hex digits")
    try:
        bits_to_target(int(args.bits, 16))
    except ValueError as exc:
        parser.error(f"--bits: {exc}")
    args.bits = args.bits.lower()
    if not 0 <= args.start_height <= 100_000:
        parser.error("--start-height must be between 0 and 100000")
    if not 0 <= args.mempool_txs <= 100_000:
        parser.error("--mempool-txs must be between 0 and 100000")
    if not 0.0 <= args.witness_fraction <= 1.0:
        parser.error("--witness-fraction must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    node = Node(args, stop)
    server = RpcServer((args.rpc_host, args.rpc_port), node)
    publisher = HashblockPublisher(args.zmq_hashblock) if args.zmq_hashblock else None
    node.publisher = publisher
    cookie_path = node.chain_dir / ".cookie"
    node.credentials.append(write_cookie(cookie_path).encode())
    if args.rpcuser is not None:
        node.credentials.append(f"{args.rpcuser}:{args.rpcpassword}".encode())
    if publisher is not None:
        publisher.start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http",
                               daemon=True)
    serving.start()
    port = server.server_address[1]
    endpoint = publisher.endpoint if publisher is not None else "none"
    print(f"fake_bitcoind ready rpc=http://127.0.0.1:{port} cookie={cookie_path} zmq={endpoint}", flush=True)

    while not stop.wait(0.5):
        pass

    server.shutdown()
    server.server_close()
    # Taken and never released: no request thread changes anything after this last write.
    node.cond.acquire()
    node.chain.persist()
    cookie_path.unlink(missing_ok=True)
    if publisher is not None:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
