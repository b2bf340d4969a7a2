"""A Bitcoin Core `getblocktemplate {"rules": ["segwit"]}` result, validated once and turned into what jobs need:
coinbase parts around the extranonce slot, the Stratum merkle branch, and the exact block bytes for submitblock
(pure, no I/O).

Byte order: GBT shows previousblockhash, txid and hash (wtxid) in DISPLAY order (byte-reversed); everything
this module keeps as bytes is in INTERNAL order (as in headers and merkle trees) unless its name says display.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction

from gstratum.mining import bitcoin, block

COINBASE_SCRIPT_MIN = 2      # consensus bounds on the coinbase scriptSig (CheckTransaction)
COINBASE_SCRIPT_MAX = 100
MAX_MONEY = 21_000_000 * 100_000_000


class TemplateError(ValueError):
    """A template (or a request against it) that cannot make a valid block; the message names the field."""


def _require(result: dict, key: str):
    if key not in result:
        raise TemplateError(f"getblocktemplate result has no {key!r}")
    return result[key]


def _int_field(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise TemplateError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise TemplateError(f"{name} must be <= {maximum}, got {value}")
    return value


def _hex_field(value, name: str, length: int | None = None) -> bytes:
    """Decode a hex string field; `length` in bytes when fixed."""
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = None
    if raw is None or not isinstance(value, str) or 2 * len(raw) != len(value):  # fromhex skips whitespace
        raise TemplateError(f"{name} must be a hex string, got {value!r:.80}")
    if length is not None and len(raw) != length:
        raise TemplateError(f"{name} must be {length} bytes ({2 * length} hex digits), got {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class TemplateTransaction:
    data: bytes                  # full serialization, witness included, as it goes into the block
    txid: bytes                  # internal order
    wtxid: bytes                 # internal order (GBT "hash")
    fee: int | None


@dataclass(frozen=True)
class BlockTemplate:
    version: int
    previousblockhash: str       # display order hex, as RPC shows it
    prevhash: bytes              # internal order, as in the header
    bits: bytes                  # 4 bytes, big-endian as GBT's hex shows it (the header holds them reversed)
    curtime: int
    mintime: int
    height: int
    coinbasevalue: int
    default_witness_commitment: bytes | None   # the commitment output's script; present means segwit
    coinbaseaux: bytes           # coinbaseaux values' bytes concatenated in sorted key order
    transactions: tuple[TemplateTransaction, ...] = field(repr=False)
    target: int                  # from "target" when given (checked against bits), else from bits
    txids: tuple[bytes, ...] = field(repr=False)           # internal order, block order
    merkle_branch: tuple[bytes, ...] = field(repr=False)   # internal order: Stratum's branch for the coinbase
    transactions_joined: bytes = field(repr=False)         # every "data" back to back, ready for the block
    total_fee: int | None = None  # sum of "fee" when every transaction has one

    @property
    def segwit(self) -> bool:
        return self.default_witness_commitment is not None

    @classmethod
    def from_gbt(cls, result: dict, verify_txids: bool = False) -> "BlockTemplate":
        """Validate a GBT result. With `verify_txids`, every transaction is parsed and its txid and wtxid
        recomputed from "data" (a few ms per thousand transactions); the witness commitment is always checked
        against the "hash" fields, which is cheap."""
        if not isinstance(result, dict):
            raise TemplateError(f"getblocktemplate result must be an object, got {type(result).__name__}")
        version = _int_field(_require(result, "version"), "version", -2**31, 2**32 - 1)
        previousblockhash = _require(result, "previousblockhash")
        prevhash = _hex_field(previousblockhash, "previousblockhash", 32)[::-1]
        bits = _hex_field(_require(result, "bits"), "bits", 4)
        curtime = _int_field(_require(result, "curtime"), "curtime", 0, 2**32 - 1)
        mintime = _int_field(_require(result, "mintime"), "mintime", 0, 2**32 - 1)
        height = _int_field(_require(result, "height"), "height", 1)
        coinbasevalue = _int_field(_require(result, "coinbasevalue"), "coinbasevalue", 0, MAX_MONEY)

        commitment = result.get("default_witness_commitment")
        if commitment is not None:
            commitment = _hex_field(commitment, "default_witness_commitment")
            if len(commitment) != 38 or not commitment.startswith(block.WITNESS_COMMITMENT_HEADER):
                raise TemplateError("default_witness_commitment must be 6a24aa21a9ed followed by 32 bytes, got "
                                    f"{commitment.hex()!r}")

        aux = result.get("coinbaseaux", {})
        if not isinstance(aux, dict):
            raise TemplateError(f"coinbaseaux must be an object, got {aux!r:.80}")
        coinbaseaux = b"".join(_hex_field(aux[key], f"coinbaseaux[{key!r}]") for key in sorted(aux))

        nbits = int.from_bytes(bits, "big")
        target = bitcoin.target_from_nbits(nbits)
        if result.get("target") is not None:
            given = int.from_bytes(_hex_field(result["target"], "target", 32), "big")
            if given != target:
                raise TemplateError(f"target {result['target']} disagrees with bits {bits.hex()}")

        raw_transactions = _require(result, "transactions")
        if not isinstance(raw_transactions, list):
            raise TemplateError("transactions must be a list")
        transactions = []
        for index, entry in enumerate(raw_transactions):
            name = f"transactions[{index}]"
            if not isinstance(entry, dict):
                raise TemplateError(f"{name} must be an object")
            data = _hex_field(_require_tx(entry, "data", name), f"{name}.data")
            if not data:
                raise TemplateError(f"{name}.data is empty")
            txid = _hex_field(_require_tx(entry, "txid", name), f"{name}.txid", 32)[::-1]
            wtxid = _hex_field(_require_tx(entry, "hash", name), f"{name}.hash", 32)[::-1]
            fee = entry.get("fee")
            if fee is not None:
                fee = _int_field(fee, f"{name}.fee", 0, MAX_MONEY)
            if verify_txids:
                _verify_transaction(data, txid, wtxid, name)
            transactions.append(TemplateTransaction(data, txid, wtxid, fee))

        if commitment is not None:
            expected = block.witness_commitment_script([tx.wtxid for tx in transactions])
            if expected != commitment:
                raise TemplateError("default_witness_commitment does not commit to the transactions' hash fields")

        txids = tuple(tx.txid for tx in transactions)
        fees = [tx.fee for tx in transactions]
        return cls(version=version, previousblockhash=previousblockhash.lower(), prevhash=prevhash, bits=bits,
                   curtime=curtime, mintime=mintime, height=height, coinbasevalue=coinbasevalue,
                   default_witness_commitment=commitment, coinbaseaux=coinbaseaux, transactions=tuple(transactions),
                   target=target, txids=txids, merkle_branch=tuple(bitcoin.merkle_branch_for_coinbase(list(txids))),
                   transactions_joined=b"".join(tx.data for tx in transactions),
                   total_fee=sum(fees) if all(fee is not None for fee in fees) else None)

    # --- the coinbase ---------------------------------------------------------------------------------------

    def script_sig_prefix(self, tag: bytes, extranonce_size: int) -> bytes:
        """The coinbase scriptSig before the extranonce slot: BIP34 height, the coinbaseaux push when non-empty,
        then push(tag), the tag cut short so the whole scriptSig stays within 100 bytes."""
        if extranonce_size < 0:
            raise TemplateError(f"extranonce_size must be >= 0, got {extranonce_size}")
        fixed = bitcoin.script_push_int(self.height)
        if self.coinbaseaux:
            fixed += bitcoin.push_data(self.coinbaseaux)
        room = COINBASE_SCRIPT_MAX - len(fixed) - extranonce_size   # for the tag push, opcode included
        if room < 1:
            raise TemplateError(f"coinbase scriptSig cannot fit: height and coinbaseaux take {len(fixed)} bytes and "
                                f"the extranonce {extranonce_size}, over the {COINBASE_SCRIPT_MAX}-byte limit")
        longest_tag = room - 1 if room - 1 <= 75 else max(75, room - 2)   # OP_PUSHDATA1 past 75 bytes
        return fixed + bitcoin.push_data(bytes(tag[:longest_tag]))

    def coinbase_parts(self, outputs: list[tuple[int, bytes]], tag: bytes, extranonce_size: int,
                       tx_version: int = 1) -> tuple[bytes, bytes]:
        """(coinb1, coinb2): coinb1 + extranonce1 + extranonce2 + coinb2 (extranonce_size bytes in all) is the
        coinbase's LEGACY serialization, which the txid and the merkle root hash. One null-prevout input whose
        scriptSig ends with the extranonce slot; `outputs` (value, scriptPubKey) then, when segwit, the
        template's witness commitment; locktime 0."""
        if tx_version not in (1, 2):
            raise TemplateError(f"coinbase tx_version must be 1 or 2, got {tx_version}")
        prefix = self.script_sig_prefix(tag, extranonce_size)
        script_len = len(prefix) + extranonce_size
        if script_len < COINBASE_SCRIPT_MIN:
            raise TemplateError(f"coinbase scriptSig of {script_len} bytes is under {COINBASE_SCRIPT_MIN}")
        all_outputs = list(outputs)
        total = 0
        for index, (value, script) in enumerate(all_outputs):
            _int_field(value, f"outputs[{index}] value", 0, MAX_MONEY)
            if not isinstance(script, (bytes, bytearray)):
                raise TemplateError(f"outputs[{index}] script must be bytes")
            total += value
        if total > self.coinbasevalue:
            raise TemplateError(f"coinbase outputs pay {total} sat, more than coinbasevalue {self.coinbasevalue}")
        if self.default_witness_commitment is not None:
            all_outputs.append((0, self.default_witness_commitment))
        if not all_outputs:
            raise TemplateError("a coinbase needs at least one output")
        coinb1 = (struct.pack("<i", tx_version) + bitcoin.varint(1) + block.NULL_PREVOUT
                  + bitcoin.varint(script_len) + prefix)
        coinb2 = b"\xff\xff\xff\xff" + bitcoin.varint(len(all_outputs))
        for value, script in all_outputs:
            coinb2 += struct.pack("<q", value) + bitcoin.varint(len(script)) + bytes(script)
        coinb2 += struct.pack("<I", 0)
        return coinb1, coinb2

    def block_bytes(self, header: bytes, coinbase_legacy: bytes) -> bytes:
        """The block for submitblock. Refuses a header whose merkle root is not this coinbase folded with this
        template's branch, since such a block could only be rejected."""
        if len(header) != block.HEADER_SIZE:
            raise TemplateError(f"header must be {block.HEADER_SIZE} bytes, got {len(header)}")
        root = bitcoin.merkle_root_from_branch(bitcoin.sha256d(coinbase_legacy), list(self.merkle_branch))
        if header[36:68] != root:
            raise TemplateError("header merkle root does not commit to this coinbase and template")
        if header[4:36] != self.prevhash:
            raise TemplateError("header prevhash is not this template's previousblockhash")
        return block.assemble_block_joined(header, coinbase_legacy, len(self.transactions),
                                           self.transactions_joined, self.segwit)

    # --- Stratum header fields ------------------------------------------------------------------------------

    @property
    def stratum_prevhash(self) -> str:
        """mining.notify's prevhash: the internal-order bytes with each 4-byte word reversed."""
        return bitcoin.header_prevhash_to_stratum(self.prevhash)

    @property
    def version_hex(self) -> str:
        """Big-endian hex of the uint32 version (miners put it in the header little-endian)."""
        return f"{self.version & 0xFFFFFFFF:08x}"

    @property
    def bits_hex(self) -> str:
        return self.bits.hex()

    @property
    def curtime_hex(self) -> str:
        return f"{self.curtime:08x}"


def _require_tx(entry: dict, key: str, name: str):
    if key not in entry:
        raise TemplateError(f"{name} has no {key!r}")
    return entry[key]


def _verify_transaction(data: bytes, txid: bytes, wtxid: bytes, name: str) -> None:
    try:
        tx = block.parse_transaction(data)
    except ValueError as error:
        raise TemplateError(f"{name}.data does not parse: {error}") from None
    if tx.txid != txid:
        raise TemplateError(f"{name}.txid {txid[::-1].hex()} is not the hash of its data ({tx.txid[::-1].hex()})")
    if tx.wtxid != wtxid:
        raise TemplateError(f"{name}.hash {wtxid[::-1].hex()} is not the witness hash of its data "
                            f"({tx.wtxid[::-1].hex()})")


def split_reward(coinbasevalue: int, miner_script: bytes, fee_percent: float,
                 pool_script: bytes | None) -> list[tuple[int, bytes]]:
    """Solo mining's outputs: the pool keeps fee_percent of the reward rounded DOWN to a satoshi, the miner gets
    the rest; the two never exceed coinbasevalue and a zero-value pool output is left out."""
    _int_field(coinbasevalue, "coinbasevalue", 0, MAX_MONEY)
    if not 0 <= fee_percent <= 100:
        raise TemplateError(f"fee_percent must be within 0..100, got {fee_percent}")
    if fee_percent > 0 and pool_script is None:
        raise TemplateError("fee_percent > 0 needs a pool script to pay the fee to")
    # exact decimal arithmetic on the float's shortest repr: 1.5 % of 312500000 is 4687500, never 4687499
    fee = int(Fraction(repr(float(fee_percent))) * coinbasevalue / 100)
    fee = min(max(fee, 0), coinbasevalue)
    outputs = [(coinbasevalue - fee, miner_script)]
    if fee > 0:
        outputs.append((fee, pool_script))
    return outputs
