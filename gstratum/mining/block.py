"""Blocks from their parts: transaction parsing, merkle and witness roots, the segwit coinbase and the bytes that
go to `submitblock` (pure, no I/O).

Byte order: every hash here (txid, wtxid, merkle root, witness root) is in INTERNAL order, the order sha256d
returns and the order headers and merkle trees use. RPC and explorers display them byte-reversed; convert at
the edge with `bytes.fromhex(display)[::-1]`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gstratum.mining.bitcoin import sha256d, varint

WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")  # OP_RETURN, push 36, then the BIP141 magic aa21a9ed
HEADER_SIZE = 80
NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"


@dataclass(frozen=True, slots=True)
class TxIn:
    prevout: bytes                 # 36 bytes as serialized: the previous txid (internal order) + output index LE
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class TxOut:
    value: int                     # satoshis
    script: bytes                  # scriptPubKey


@dataclass(frozen=True, slots=True)
class Transaction:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int
    has_witness: bool
    txid: bytes                    # internal order: sha256d of the legacy serialization
    wtxid: bytes                   # internal order: sha256d of the full serialization (== txid without witness)
    size: int                      # bytes of the full serialization
    weight: int                    # 3 * legacy size + full size (BIP141)
    raw: bytes = field(repr=False)     # the full serialization, exactly as parsed
    legacy: bytes = field(repr=False)  # the serialization without marker, flag and witnesses (what txid hashes)

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].prevout == NULL_PREVOUT


@dataclass(frozen=True, slots=True)
class Block:
    header: bytes
    transactions: tuple[Transaction, ...]

    @property
    def hash(self) -> bytes:
        """The block hash in internal order (reverse it for display)."""
        return sha256d(self.header)


class _Reader:
    """Bounds-checked cursor: truncation is a ValueError, never a silently short slice."""
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ValueError(f"truncated: need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def compact_size(self) -> int:
        """CompactSize, rejecting non-canonical encodings as Bitcoin Core does."""
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        width, minimum = {0xFD: (2, 0xFD), 0xFE: (4, 0x10000), 0xFF: (8, 0x100000000)}[first]
        value = int.from_bytes(self.take(width), "little")
        if value < minimum:
            raise ValueError(f"non-canonical CompactSize at offset {self.pos - width - 1}")
        return value

    def var_bytes(self) -> bytes:
        return self.take(self.compact_size())


def _parse_transaction_at(data: bytes, start: int) -> tuple[Transaction, int]:
    """Parse one transaction beginning at `start`; return it and the offset just past it."""
    reader = _Reader(data, start)
    version = struct.unpack("<i", reader.take(4))[0]
    body_start = reader.pos
    has_witness = False
    if data[reader.pos:reader.pos + 1] == b"\x00":     # BIP144 marker (a legacy tx cannot have zero inputs)
        reader.take(1)
        if reader.take(1) != b"\x01":
            raise ValueError("segwit marker 00 not followed by flag 01")
        has_witness = True
        body_start = reader.pos
    input_count = reader.compact_size()
    if input_count == 0:
        raise ValueError("transaction has no inputs")
    raw_inputs = []
    for _ in range(input_count):
        prevout = reader.take(36)
        script_sig = reader.var_bytes()
        sequence = struct.unpack("<I", reader.take(4))[0]
        raw_inputs.append((prevout, script_sig, sequence))
    outputs = []
    for _ in range(reader.compact_size()):
        value = struct.unpack("<q", reader.take(8))[0]
        outputs.append(TxOut(value, reader.var_bytes()))
    body_end = reader.pos
    witnesses: list[tuple[bytes, ...]] = [()] * input_count
    if has_witness:
        witnesses = [tuple(reader.var_bytes() for _ in range(reader.compact_size())) for _ in range(input_count)]
        if not any(witnesses):
            raise ValueError("superfluous witness record: marker and flag set but every witness is empty")
    locktime = struct.unpack("<I", reader.take(4))[0]
    end = reader.pos
    raw = data[start:end]
    if has_witness:
        legacy = data[start:start + 4] + data[body_start:body_end] + data[end - 4:end]
    else:
        legacy = raw
    txid = sha256d(legacy)
    inputs = tuple(TxIn(p, s, q, w) for (p, s, q), w in zip(raw_inputs, witnesses))
    tx = Transaction(version=version, inputs=inputs, outputs=tuple(outputs), locktime=locktime,
                     has_witness=has_witness, txid=txid, wtxid=sha256d(raw) if has_witness else txid,
                     size=len(raw), weight=3 * len(legacy) + len(raw), raw=raw, legacy=legacy)
    return tx, end


def parse_transaction(raw: bytes) -> Transaction:
    """Strictly parse one serialized transaction (legacy or BIP144 segwit); ValueError on truncation, trailing
    bytes, a bad marker/flag or non-canonical sizes. txid and wtxid come out in internal order."""
    tx, end = _parse_transaction_at(bytes(raw), 0)
    if end != len(raw):
        raise ValueError(f"{len(raw) - end} trailing bytes after the transaction")
    return tx


def parse_block(raw: bytes) -> Block:
    """Strictly parse a serialized block: the 80-byte header, then CompactSize(n) transactions, nothing after."""
    raw = bytes(raw)
    if len(raw) < HEADER_SIZE + 1:
        raise ValueError("truncated: a block is at least an 80-byte header and a transaction count")
    reader = _Reader(raw, HEADER_SIZE)
    count = reader.compact_size()
    if count == 0:
        raise ValueError("block has no transactions")
    pos = reader.pos
    transactions = []
    for _ in range(count):
        tx, pos = _parse_transaction_at(raw, pos)
        transactions.append(tx)
    if pos != len(raw):
        raise ValueError(f"{len(raw) - pos} trailing bytes after the block's transactions")
    return Block(raw[:HEADER_SIZE], tuple(transactions))


def merkle_root(txids_internal: list[bytes]) -> bytes:
    """Bitcoin's merkle root over ALL of a block's txids, coinbase first (internal order in and out). An odd level
    pairs its last hash with itself."""
    if not txids_internal:
        raise ValueError("a merkle tree needs at least one hash")
    level = list(txids_internal)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def witness_merkle_root(wtxids_internal: list[bytes]) -> bytes:
    """BIP141 witness root. `wtxids_internal` are the wtxids of the transactions AFTER the coinbase (block order,
    internal order, as the template's "hash" fields reversed); the coinbase's own wtxid counts as 32 zero bytes."""
    return merkle_root([bytes(32)] + list(wtxids_internal))


def witness_commitment_script(wtxids_internal: list[bytes], reserved_value: bytes = bytes(32)) -> bytes:
    """The coinbase output script committing to the witnesses: 6a24aa21a9ed + sha256d(witness root || reserved
    value). `wtxids_internal` as for witness_merkle_root (non-coinbase transactions, internal order)."""
    if len(reserved_value) != 32:
        raise ValueError("the witness reserved value is 32 bytes")
    return WITNESS_COMMITMENT_HEADER + sha256d(witness_merkle_root(wtxids_internal) + reserved_value)


def find_witness_commitment(coinbase: Transaction) -> bytes | None:
    """The commitment script a node would check: the LAST coinbase output that starts with 6a24aa21a9ed and is at
    least 38 bytes (BIP141), or None."""
    for output in reversed(coinbase.outputs):
        if len(output.script) >= 38 and output.script.startswith(WITNESS_COMMITMENT_HEADER):
            return output.script
    return None


def _parse_coinbase_legacy(legacy_tx: bytes) -> Transaction:
    tx = parse_transaction(legacy_tx)
    if tx.has_witness:
        raise ValueError("expected the coinbase's legacy serialization, got one with a witness")
    if not tx.is_coinbase:
        raise ValueError("not a coinbase: needs exactly one input spending the null prevout")
    return tx


def coinbase_with_witness(legacy_tx: bytes, reserved_value: bytes = bytes(32)) -> bytes:
    """The BIP144 serialization of a coinbase from its legacy one: version, 00 01, inputs and outputs unchanged,
    a witness of one 32-byte item (the reserved value the commitment was computed with), locktime. The txid
    (sha256d of `legacy_tx`) does not change."""
    if len(reserved_value) != 32:
        raise ValueError("the witness reserved value is 32 bytes")
    _parse_coinbase_legacy(legacy_tx)
    return (legacy_tx[:4] + b"\x00\x01" + legacy_tx[4:-4] + varint(1) + varint(32) + reserved_value
            + legacy_tx[-4:])


def assemble_block_joined(header: bytes, coinbase_legacy: bytes, transaction_count: int,
                          transactions_joined: bytes, segwit: bool) -> bytes:
    """assemble_block for callers that keep the non-coinbase transactions already concatenated (a template
    precomputes them once): `transaction_count` of them, serialized back to back as they go in the block."""
    if len(header) != HEADER_SIZE:
        raise ValueError(f"a block header is {HEADER_SIZE} bytes, got {len(header)}")
    if segwit:
        coinbase = coinbase_with_witness(coinbase_legacy)
    else:
        _parse_coinbase_legacy(coinbase_legacy)
        coinbase = coinbase_legacy
    return header + varint(1 + transaction_count) + coinbase + transactions_joined


def assemble_block(header: bytes, coinbase_legacy: bytes, transactions: list[bytes], segwit: bool) -> bytes:
    """The full block for submitblock: header, tx count, the coinbase (given in legacy form; with its 32-zero-byte
    witness reserved value when `segwit`, i.e. when the template carried a default_witness_commitment), then the
    other transactions exactly as given (the template's "data", witnesses included)."""
    return assemble_block_joined(header, coinbase_legacy, len(transactions), b"".join(transactions), segwit)
