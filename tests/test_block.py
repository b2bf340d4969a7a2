"""Known answers for the block path: real segwit testnet blocks (Bitcoin Core's src/test/data/blockfilters.json,
copied into tests/data/segwit_blocks.json) taken apart and rebuilt exactly the way the pool builds a block from a
template and a found share; plus the template's validation, coinbase rules and reward split.

The checks here lean on an independent mini-parser (below) and on the real blocks' hashes, not on the code under
test agreeing with itself."""
from __future__ import annotations

import copy
import hashlib
import json
import struct
import time
from pathlib import Path

import pytest

from gstratum.mining import bitcoin, block
from gstratum.mining.shares import HeaderTemplate
from gstratum.mining.template import BlockTemplate, TemplateError, split_reward
from gstratum.protocol.notify import notify_line, notify_params

DATA = Path(__file__).resolve().parent / "data"
BLOCKS = {entry["height"]: entry for entry in json.loads((DATA / "segwit_blocks.json").read_text())["blocks"]}

B926485_HASH = "000000000000015d6077a411a8f5cc95caf775ccf11c54e27df75ce58d187313"   # testnet3 block 926485
B1263442_HASH = "000000006f27ddfe1dd680044a34548f41bed47eba9e6f0b310da21423bc5f33"  # testnet3 block 1263442
EMPTY_BLOCK_COMMITMENT = "6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"  # any
# coinbase-only block, as Bitcoin Core's getblocktemplate reports it on regtest
B100K_TXIDS = [  # mainnet block 100000, display order, and its merkle root
    "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
    "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
    "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
    "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
]
B100K_ROOT = "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
P2PKH_SCRIPT = bytes.fromhex("76a914876fbb82ec05caa6af7a3b5e5a983aae6c6cc6d688ac")


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def textbook_merkle_root(hashes: list[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


# --- an independent mini-parser: just enough to cut a block into its transactions --------------------------------

class Cursor:
    def __init__(self, raw: bytes, pos: int = 0):
        self.raw, self.pos = raw, pos

    def take(self, n: int) -> bytes:
        assert self.pos + n <= len(self.raw), "truncated"
        self.pos += n
        return self.raw[self.pos - n:self.pos]

    def compact(self) -> int:
        first = self.take(1)[0]
        return first if first < 0xFD else int.from_bytes(self.take({0xFD: 2, 0xFE: 4, 0xFF: 8}[first]), "little")


def read_tx(cur: Cursor) -> dict:
    """Offsets and fields of the transaction at the cursor (BIP144 aware)."""
    start = cur.pos
    cur.take(4)
    segwit = cur.raw[cur.pos] == 0
    if segwit:
        assert cur.take(2) == b"\x00\x01"
    body_start = cur.pos
    inputs = []
    for _ in range(cur.compact()):
        prevout = cur.take(36)
        length = cur.compact()
        script_offset = cur.pos
        script = cur.take(length)
        inputs.append(dict(prevout=prevout, script=script, script_offset=script_offset, sequence=cur.take(4)))
    outputs = []
    for _ in range(cur.compact()):
        value = int.from_bytes(cur.take(8), "little")
        outputs.append((value, cur.take(cur.compact())))
    body_end = cur.pos
    witnesses = []
    if segwit:
        for _ in inputs:
            witnesses.append([cur.take(cur.compact()) for _ in range(cur.compact())])
    cur.take(4)
    raw = cur.raw[start:cur.pos]
    legacy = raw[:4] + cur.raw[body_start:body_end] + raw[-4:] if segwit else raw
    # offsets relative to the legacy serialization, for cutting the coinbase
    shift = start + (2 if segwit else 0)
    for item in inputs:
        item["script_offset"] -= shift
    return dict(raw=raw, legacy=legacy, inputs=inputs, outputs=outputs, witnesses=witnesses, segwit=segwit)


def split_block(raw: bytes) -> tuple[bytes, list[dict]]:
    cur = Cursor(raw, 80)
    txs = [read_tx(cur) for _ in range(cur.compact())]
    assert cur.pos == len(raw)
    return raw[:80], txs


def block_bytes_of(height: int) -> bytes:
    return bytes.fromhex(BLOCKS[height]["hex"])


# --- the real blocks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, known_hash, count", [(926485, B926485_HASH, 5), (1263442, B1263442_HASH, 2)])
def test_parse_real_segwit_blocks(height, known_hash, count):
    raw = block_bytes_of(height)
    assert BLOCKS[height]["hash"] == known_hash
    parsed = block.parse_block(raw)
    assert parsed.hash[::-1].hex() == known_hash
    assert len(parsed.transactions) == count
    header, txs = split_block(raw)
    for mine, theirs in zip(parsed.transactions, txs):
        assert mine.raw == theirs["raw"] and mine.legacy == theirs["legacy"]
        assert mine.txid == sha256d(theirs["legacy"]) and mine.wtxid == sha256d(theirs["raw"])
        assert mine.has_witness == theirs["segwit"]
        assert mine.size == len(theirs["raw"]) and mine.weight == 3 * len(theirs["legacy"]) + len(theirs["raw"])
    # the header commits to these txids: the merkle root in the real header is the known answer
    assert block.merkle_root([tx.txid for tx in parsed.transactions]) == header[36:68]
    coinbase = parsed.transactions[0]
    assert coinbase.is_coinbase and coinbase.has_witness
    assert coinbase.inputs[0].witness == (bytes(32),)
    # BIP34: the scriptSig starts with the height, as Core writes it
    assert coinbase.inputs[0].script_sig.startswith(bitcoin.script_push_int(height))


def test_parsed_fields_of_a_real_witness_transaction():
    tx = block.parse_block(block_bytes_of(926485)).transactions[1]  # P2SH-P2WSH 2-of-3 spend
    assert tx.version == 1 and tx.locktime == 0 and tx.has_witness
    (txin,) = tx.inputs
    assert txin.prevout[:32][::-1].hex() == "0a510f49749aaaa2638048132eafea959dd8e47e79332dbcb2a14189870e3145"
    assert txin.prevout[32:] == struct.pack("<I", 1)
    assert txin.script_sig.hex() == "220020b6744de4f6ec63cc92f7c220cdefeeb1b1bed2b66c8e5706d80ec247d37e65a1"
    assert txin.sequence == 0xFFFFFFFF
    assert len(txin.witness) == 4 and txin.witness[0] == b"" and txin.witness[3].endswith(b"\x53\xae")
    assert tx.outputs == (block.TxOut(20000000, bytes.fromhex("76a9143ebc40e411ed3c76f86711507ab952300890397288ac")),)


@pytest.mark.parametrize("height", [926485, 1263442])
def test_real_witness_commitment_recomputed(height):
    parsed = block.parse_block(block_bytes_of(height))
    coinbase = parsed.transactions[0]
    reserved = coinbase.inputs[0].witness[0]
    commitment = block.find_witness_commitment(coinbase)
    assert commitment is not None
    assert commitment == block.witness_commitment_script([tx.wtxid for tx in parsed.transactions[1:]], reserved)
    # and independently: the commitment is sha256d(witness root || reserved), coinbase wtxid taken as zero
    _, txs = split_block(block_bytes_of(height))
    root = textbook_merkle_root([bytes(32)] + [sha256d(tx["raw"]) for tx in txs[1:]])
    assert commitment == bytes.fromhex("6a24aa21a9ed") + sha256d(root + reserved)
    assert block.witness_merkle_root([sha256d(tx["raw"]) for tx in txs[1:]]) == root


def test_merkle_root_of_block_100000_and_witness_root_of_an_empty_block():
    txids = [bytes.fromhex(t)[::-1] for t in B100K_TXIDS]
    assert block.merkle_root(txids)[::-1].hex() == B100K_ROOT
    assert block.witness_merkle_root([]) == bytes(32)
    assert block.witness_commitment_script([]).hex() == EMPTY_BLOCK_COMMITMENT
    with pytest.raises(ValueError):
        block.merkle_root([])


@pytest.mark.parametrize("height, known_hash", [(926485, B926485_HASH), (1263442, B1263442_HASH)])
def test_rebuild_real_block_through_the_stratum_path(height, known_hash):
    """The pool's path, end to end: coinb1/extranonce/coinb2, Stratum branch, header from Stratum fields,
    assemble_block — must reproduce the real block byte for byte."""
    original = block_bytes_of(height)
    real_header, txs = split_block(original)
    coinbase, others = txs[0], txs[1:]
    legacy = coinbase["legacy"]
    script = coinbase["inputs"][0]["script"]
    script_end = coinbase["inputs"][0]["script_offset"] + len(script)
    cut = max(coinbase["inputs"][0]["script_offset"], script_end - 8)      # the last 8 bytes of the scriptSig
    coinb1, extranonce, coinb2 = legacy[:cut], legacy[cut:script_end], legacy[script_end:]
    assert len(extranonce) == 8 and coinb1 + extranonce + coinb2 == legacy
    extranonce1, extranonce2 = extranonce[:4], extranonce[4:]

    txids = [sha256d(tx["legacy"]) for tx in others]
    branch = bitcoin.merkle_branch_for_coinbase(txids)
    assert bitcoin.merkle_root_from_branch(sha256d(legacy), branch) == real_header[36:68]

    version, = struct.unpack("<I", real_header[:4])
    ntime, nbits, nonce = struct.unpack("<III", real_header[68:80])
    job = HeaderTemplate.from_stratum(
        prevhash=bitcoin.header_prevhash_to_stratum(real_header[4:36]), coinb1=coinb1.hex(), coinb2=coinb2.hex(),
        merkle_branch=[h.hex() for h in branch], version=f"{version:08x}", nbits=f"{nbits:08x}")
    header = job.header(extranonce1, extranonce2, f"{ntime:08x}", f"{nonce:08x}", version)
    assert sha256d(header)[::-1].hex() == known_hash
    assert header == real_header

    rebuilt = block.assemble_block(header, coinb1 + extranonce1 + extranonce2 + coinb2,
                                   [tx["raw"] for tx in others], segwit=True)
    assert rebuilt == original


def test_coinbase_with_witness_reproduces_the_real_coinbase():
    _, txs = split_block(block_bytes_of(926485))
    assert block.coinbase_with_witness(txs[0]["legacy"]) == txs[0]["raw"]
    with pytest.raises(ValueError):
        block.coinbase_with_witness(txs[0]["raw"])             # already has a witness
    with pytest.raises(ValueError):
        block.coinbase_with_witness(txs[2]["legacy"])          # not a coinbase
    with pytest.raises(ValueError):
        block.coinbase_with_witness(txs[0]["legacy"], bytes(31))


def test_assemble_block_without_segwit_keeps_the_legacy_coinbase():
    _, txs = split_block(block_bytes_of(926485))
    header = bytes(80)
    out = block.assemble_block(header, txs[0]["legacy"], [txs[2]["raw"]], segwit=False)
    assert out == header + b"\x02" + txs[0]["legacy"] + txs[2]["raw"]
    with pytest.raises(ValueError):
        block.assemble_block(bytes(79), txs[0]["legacy"], [], segwit=False)


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: raw + b"\x00", "trailing"),
    (lambda raw: raw[:-1], "truncated"),
    (lambda raw: raw[:4] + b"\x00\x02" + raw[6:], "flag"),
])
def test_parse_transaction_is_strict(mutate, message):
    _, txs = split_block(block_bytes_of(926485))
    raw = txs[1]["raw"]
    assert block.parse_transaction(raw).raw == raw
    with pytest.raises(ValueError, match=message):
        block.parse_transaction(mutate(raw))


def test_parse_transaction_rejects_superfluous_witness_and_odd_sizes():
    _, txs = split_block(block_bytes_of(926485))
    legacy = txs[2]["legacy"]  # a legacy tx with one input: add marker/flag and an empty witness
    bogus = legacy[:4] + b"\x00\x01" + legacy[4:-4] + b"\x00" + legacy[-4:]
    with pytest.raises(ValueError, match="superfluous"):
        block.parse_transaction(bogus)
    noncanonical = legacy[:4] + b"\xfd\x01\x00" + legacy[5:]  # input count 1 written as fd0100
    with pytest.raises(ValueError, match="non-canonical"):
        block.parse_transaction(noncanonical)
    with pytest.raises(ValueError, match="trailing"):
        block.parse_block(block_bytes_of(926485) + b"\x00")


# --- the template ------------------------------------------------------------------------------------------------

def gbt_from_block(height: int) -> dict:
    """A getblocktemplate result as Bitcoin Core would have served it for this real block's parent."""
    raw = block_bytes_of(height)
    header, txs = split_block(raw)
    version, = struct.unpack("<I", header[:4])
    ntime, nbits, _ = struct.unpack("<III", header[68:80])
    coinbase = txs[0]
    commitment = [script for value, script in coinbase["outputs"] if script.startswith(bytes.fromhex("6a24aa21a9ed"))]
    # the coinbase paid 312551300 sat: a 312500000 subsidy (50 BTC halved 4 times) plus 51300 sat of fees; only
    # that total is known (the fees' split over the 4 transactions needs their prevouts), so the split is made up
    fees = {926485: [20000, 11300, 10000, 10000]}.get(height, [0] * (len(txs) - 1))
    return {
        "capabilities": ["proposal"], "version": version, "rules": ["csv", "!segwit"], "vbavailable": {},
        "vbrequired": 0, "previousblockhash": header[4:36][::-1].hex(),
        "transactions": [{"data": tx["raw"].hex(), "txid": sha256d(tx["legacy"])[::-1].hex(),
                          "hash": sha256d(tx["raw"])[::-1].hex(), "depends": [], "fee": fee, "sigops": 4,
                          "weight": 3 * len(tx["legacy"]) + len(tx["raw"])} for tx, fee in zip(txs[1:], fees)],
        "coinbaseaux": {}, "coinbasevalue": sum(value for value, _ in coinbase["outputs"]),
        "longpollid": header[4:36][::-1].hex() + "3", "target": f"{bitcoin.target_from_nbits(nbits):064x}",
        "mintime": ntime - 600, "mutable": ["time", "transactions", "prevblock"], "noncerange": "00000000ffffffff",
        "sigoplimit": 80000, "sizelimit": 4000000, "weightlimit": 4000000, "curtime": ntime, "bits": f"{nbits:08x}",
        "height": height, "default_witness_commitment": commitment[-1].hex(),
    }


def test_from_gbt_on_a_real_block():
    gbt = gbt_from_block(926485)
    template = BlockTemplate.from_gbt(gbt, verify_txids=True)
    header, txs = split_block(block_bytes_of(926485))
    assert template.height == 926485 and template.segwit
    assert template.previousblockhash == "00000000000000d1e2952098e3b773c475fdf826e38e60498aeff3db0eabbb60"
    assert template.prevhash == header[4:36]
    assert template.stratum_prevhash == bitcoin.header_prevhash_to_stratum(header[4:36])
    assert template.version_hex == "20000000" and template.bits_hex == "1a0213ef"
    assert template.curtime_hex == header[68:72][::-1].hex()
    assert template.coinbasevalue == 312551300 and template.total_fee == 51300
    assert template.txids == tuple(sha256d(tx["legacy"]) for tx in txs[1:])
    assert template.transactions_joined == b"".join(tx["raw"] for tx in txs[1:])
    assert template.target == bitcoin.target_from_nbits(0x1A0213EF)
    # the branch folds the real coinbase into the real header's merkle root
    assert bitcoin.merkle_root_from_branch(sha256d(txs[0]["legacy"]), list(template.merkle_branch)) == header[36:68]
    # the real block, rebuilt through the template
    assert template.block_bytes(header, txs[0]["legacy"]) == block_bytes_of(926485)


@pytest.mark.parametrize("height", [926485, 1263442])
def test_coinbase_parts_and_block_bytes_make_a_consistent_block(height):
    template = BlockTemplate.from_gbt(gbt_from_block(height))
    _, real_txs = split_block(block_bytes_of(height))
    outputs = [(template.coinbasevalue - 1000, P2PKH_SCRIPT), (1000, bytes.fromhex("0014" + "11" * 20))]
    coinb1, coinb2 = template.coinbase_parts(outputs, b"/gstratum/", 8)
    extranonce1, extranonce2 = bytes.fromhex("deadbeef"), bytes.fromhex("00000007")
    legacy = coinb1 + extranonce1 + extranonce2 + coinb2

    cur = Cursor(legacy)
    coinbase = read_tx(cur)
    assert cur.pos == len(legacy) and not coinbase["segwit"]
    (txin,) = coinbase["inputs"]
    assert txin["prevout"] == bytes(32) + b"\xff" * 4 and txin["sequence"] == b"\xff" * 4
    assert txin["script"] == bitcoin.script_push_int(height) + b"\x0a/gstratum/" + extranonce1 + extranonce2
    assert coinbase["outputs"][:2] == outputs
    assert coinbase["outputs"][2] == (0, bytes.fromhex(gbt_from_block(height)["default_witness_commitment"]))
    assert legacy[:4] == struct.pack("<i", 1) and legacy[-4:] == bytes(4)

    job = HeaderTemplate.from_stratum(template.stratum_prevhash, coinb1.hex(), coinb2.hex(),
                                      [h.hex() for h in template.merkle_branch], template.version_hex,
                                      template.bits_hex)
    header = job.header(extranonce1, extranonce2, template.curtime_hex, "12345678", template.version)
    full = template.block_bytes(header, legacy)

    # recompute independently: merkle root over the new coinbase and the real txids, witness commitment over
    # the real wtxids with the zero reserved value, and the block layout
    new_header, new_txs = split_block(full)
    assert new_header == header
    assert textbook_merkle_root([sha256d(tx["legacy"]) for tx in new_txs]) == header[36:68]
    assert new_txs[0]["legacy"] == legacy and new_txs[0]["witnesses"] == [[bytes(32)]]
    root = textbook_merkle_root([bytes(32)] + [sha256d(tx["raw"]) for tx in real_txs[1:]])
    assert new_txs[0]["outputs"][-1][1] == bytes.fromhex("6a24aa21a9ed") + sha256d(root + bytes(32))
    assert [tx["raw"] for tx in new_txs[1:]] == [tx["raw"] for tx in real_txs[1:]]
    assert header[4:36] == block_bytes_of(height)[4:36] and header[72:76] == block_bytes_of(height)[72:76]

    with pytest.raises(TemplateError, match="merkle root"):
        template.block_bytes(header, coinb1 + extranonce1 + bytes(4) + coinb2)  # another extranonce2


def minimal_gbt(height: int = 840_000, **changes) -> dict:
    gbt = {"version": 0x20000000, "previousblockhash": "00" * 32, "bits": "1d00ffff", "curtime": 1_700_000_000,
           "mintime": 1_699_999_000, "height": height, "coinbasevalue": 312_500_000, "transactions": [],
           "coinbaseaux": {}, "default_witness_commitment": EMPTY_BLOCK_COMMITMENT}
    gbt.update(changes)
    return gbt


def coinbase_script_sig(template: BlockTemplate, tag: bytes, extranonce_size: int) -> bytes:
    coinb1, coinb2 = template.coinbase_parts([(1, P2PKH_SCRIPT)], tag, extranonce_size)
    cur = Cursor(coinb1 + bytes(extranonce_size) + coinb2)
    return read_tx(cur)["inputs"][0]["script"]


def test_coinbaseaux_flags_land_in_the_script_sig():
    # Core's old "flags" value: a push of "/P2SH/" (seen in testnet3 block 2's coinbase); keys in sorted order
    template = BlockTemplate.from_gbt(minimal_gbt(coinbaseaux={"flags": "062f503253482f"}))
    assert coinbase_script_sig(template, b"/gs/", 4) == bytes.fromhex("0340d10c" + "07062f503253482f" + "042f67732f"
                                                                      + "00000000")
    two = BlockTemplate.from_gbt(minimal_gbt(coinbaseaux={"b": "bbbb", "a": "aa"}))
    assert coinbase_script_sig(two, b"", 0) == bytes.fromhex("0340d10c" + "03aabbbb" + "00")
    empty = BlockTemplate.from_gbt(minimal_gbt(coinbaseaux={}))
    assert coinbase_script_sig(empty, b"/gs/", 4) == bytes.fromhex("0340d10c" + "042f67732f" + "00000000")


def test_long_tag_is_truncated_to_fit_100_bytes():
    template = BlockTemplate.from_gbt(minimal_gbt())
    tag = bytes(range(65, 91)) * 8  # 208 bytes
    script = coinbase_script_sig(template, tag, 12)
    assert len(script) == 100
    # 4 (height) + 2 (OP_PUSHDATA1 n) + 82 (tag) + 12 (extranonce)
    assert script[:4] == bytes.fromhex("0340d10c") and script[4:6] == b"\x4c\x52" and script[6:88] == tag[:82]
    short = coinbase_script_sig(template, tag, 24)      # room 72: a direct push of 71 bytes
    assert len(short) == 100 and short[4] == 71 and short[5:76] == tag[:71]
    # an empty tag still fits when the extranonce leaves exactly 1 byte: OP_0
    assert coinbase_script_sig(template, tag, 95) == bytes.fromhex("0340d10c00") + bytes(95)
    with pytest.raises(TemplateError, match="cannot fit"):
        template.coinbase_parts([(1, P2PKH_SCRIPT)], b"", 96)
    big_aux = BlockTemplate.from_gbt(minimal_gbt(coinbaseaux={"flags": "ff" * 90}))
    with pytest.raises(TemplateError, match="coinbaseaux"):
        big_aux.coinbase_parts([(1, P2PKH_SCRIPT)], b"/t/", 8)


def test_outputs_over_coinbasevalue_raise():
    template = BlockTemplate.from_gbt(minimal_gbt())
    template.coinbase_parts([(312_500_000, P2PKH_SCRIPT)], b"/t/", 8)
    with pytest.raises(TemplateError, match="coinbasevalue"):
        template.coinbase_parts([(312_000_000, P2PKH_SCRIPT), (500_001, P2PKH_SCRIPT)], b"/t/", 8)
    with pytest.raises(TemplateError, match="outputs\\[0\\] value"):
        template.coinbase_parts([(-1, P2PKH_SCRIPT)], b"/t/", 8)


@pytest.mark.parametrize("height, encoded", [
    (1, "51"), (16, "60"), (17, "0111"), (127, "017f"), (128, "028000"), (255, "02ff00"), (256, "020001"),
    (32767, "02ff7f"), (32768, "03008000"), (840000, "0340d10c"),
    (926485, "0315230e"), (1263442, "03524713"),    # as in the real testnet blocks above
])
def test_bip34_height_in_the_coinbase_as_core_writes_it(height, encoded):
    template = BlockTemplate.from_gbt(minimal_gbt(height=height))
    assert coinbase_script_sig(template, b"", 0) == bytes.fromhex(encoded) + b"\x00"  # then push(b"") = OP_0


def test_height_1_coinbase_script_is_cores_own():
    """Bitcoin Core's regtest block 1 coinbase scriptSig is 5100 (`CScript() << nHeight << OP_0`)."""
    assert coinbase_script_sig(BlockTemplate.from_gbt(minimal_gbt(height=1)), b"", 0).hex() == "5100"


@pytest.mark.parametrize("value, percent, miner, pool", [
    (312_500_000, 1.5, 307_812_500, 4_687_500),
    (312_500_000, 0.0, 312_500_000, None),
    (312_500_000, 2.3, 305_312_500, 7_187_500),
    (312_500_000, 0.1, 312_187_500, 312_500),
    (3, 50.0, 2, 1),               # 1.5 sat rounds down to 1
    (1, 50.0, 1, None),            # 0.5 sat rounds down to 0: no zero-value output
    (625_000_000, 100.0, 0, 625_000_000),
])
def test_split_reward(value, percent, miner, pool):
    pool_script = bytes.fromhex("0014" + "22" * 20)
    outputs = split_reward(value, P2PKH_SCRIPT, percent, pool_script)
    expected = [(miner, P2PKH_SCRIPT)] + ([(pool, pool_script)] if pool is not None else [])
    assert outputs == expected
    assert sum(v for v, _ in outputs) == value


def test_split_reward_refuses_nonsense():
    with pytest.raises(TemplateError):
        split_reward(100, P2PKH_SCRIPT, 1.0, None)
    with pytest.raises(TemplateError):
        split_reward(100, P2PKH_SCRIPT, 101.0, P2PKH_SCRIPT)
    with pytest.raises(TemplateError):
        split_reward(100, P2PKH_SCRIPT, -1.0, P2PKH_SCRIPT)
    assert split_reward(100, P2PKH_SCRIPT, 0.0, None) == [(100, P2PKH_SCRIPT)]


def without(key: str) -> dict:
    gbt = gbt_from_block(926485)
    del gbt[key]
    return gbt


def changed(path: tuple, value) -> dict:
    gbt = copy.deepcopy(gbt_from_block(926485))
    target = gbt
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return gbt


@pytest.mark.parametrize("gbt, field", [
    (without("height"), "'height'"),
    (without("previousblockhash"), "'previousblockhash'"),
    (without("transactions"), "'transactions'"),
    (without("coinbasevalue"), "'coinbasevalue'"),
    (without("curtime"), "'curtime'"),
    (changed(("previousblockhash",), "zz" * 32), "previousblockhash"),
    (changed(("previousblockhash",), "00" * 31), "previousblockhash"),
    (changed(("bits",), "1a0213e"), "bits"),
    (changed(("coinbasevalue",), -1), "coinbasevalue"),
    (changed(("coinbasevalue",), "312551300"), "coinbasevalue"),
    (changed(("height",), 0), "height"),
    (changed(("height",), True), "height"),
    (changed(("version",), 1.5), "version"),
    (changed(("coinbaseaux",), {"flags": "xyz"}), "coinbaseaux['flags']"),
    (changed(("target",), "00" * 32), "target"),
    (changed(("default_witness_commitment",), "6a24aa21a9ed" + "00" * 32), "default_witness_commitment"),
    (changed(("default_witness_commitment",), "6a24aa21"), "default_witness_commitment"),
    (changed(("transactions", 1, "data"), "0q"), "transactions[1].data"),
    (changed(("transactions", 2, "txid"), "00" * 31), "transactions[2].txid"),
    (changed(("transactions", 0, "fee"), -5), "transactions[0].fee"),
])
def test_malformed_templates_name_the_field(gbt, field):
    with pytest.raises(TemplateError) as caught:
        BlockTemplate.from_gbt(gbt)
    assert field in str(caught.value)


def test_missing_transaction_field_and_wrong_txid_with_verification():
    gbt = copy.deepcopy(gbt_from_block(926485))
    del gbt["transactions"][3]["hash"]
    with pytest.raises(TemplateError, match=r"transactions\[3\] has no 'hash'"):
        BlockTemplate.from_gbt(gbt)
    swapped = copy.deepcopy(gbt_from_block(926485))
    swapped["transactions"][1]["txid"], swapped["transactions"][2]["txid"] = (
        swapped["transactions"][2]["txid"], swapped["transactions"][1]["txid"])
    BlockTemplate.from_gbt(swapped)  # without verification the txids are trusted (the branch would be wrong)
    with pytest.raises(TemplateError, match=r"transactions\[1\]\.txid .* is not the hash of its data"):
        BlockTemplate.from_gbt(swapped, verify_txids=True)
    legacy_hash = copy.deepcopy(gbt_from_block(926485))
    # a segwit transaction whose "hash" is its txid: the commitment no longer matches
    legacy_hash["transactions"][0]["hash"] = legacy_hash["transactions"][0]["txid"]
    with pytest.raises(TemplateError, match="default_witness_commitment does not commit"):
        BlockTemplate.from_gbt(legacy_hash)


def test_template_without_witness_commitment_is_not_segwit():
    gbt = minimal_gbt()
    del gbt["default_witness_commitment"]
    template = BlockTemplate.from_gbt(gbt)
    assert not template.segwit and template.total_fee == 0
    coinb1, coinb2 = template.coinbase_parts([(312_500_000, P2PKH_SCRIPT)], b"/t/", 8)
    legacy = coinb1 + bytes(8) + coinb2
    cur = Cursor(legacy)
    assert read_tx(cur)["outputs"] == [(312_500_000, P2PKH_SCRIPT)]
    job = HeaderTemplate.from_stratum(template.stratum_prevhash, coinb1.hex(), coinb2.hex(), [],
                                      template.version_hex, template.bits_hex)
    header = job.header(bytes(4), bytes(4), template.curtime_hex, "00000000", template.version)
    assert template.block_bytes(header, legacy) == header + b"\x01" + legacy


def synthetic_gbt(count: int) -> dict:
    """`count` distinct 374-byte transactions (the size of the real ones above, on average) with txids and
    wtxids as a node would report them, and a commitment computed independently."""
    real = [tx["raw"] for tx in split_block(block_bytes_of(926485))[1][2:]]  # legacy txs: txid == wtxid
    transactions, wtxids = [], []
    for i in range(count):
        base = real[i % len(real)]
        data = base[:-4] + struct.pack("<I", i)              # a distinct locktime per transaction
        digest = sha256d(data)
        transactions.append({"data": data.hex(), "txid": digest[::-1].hex(), "hash": digest[::-1].hex(),
                             "fee": 1000 + i % 7})
        wtxids.append(digest)
    commitment = bytes.fromhex("6a24aa21a9ed") + sha256d(textbook_merkle_root([bytes(32)] + wtxids) + bytes(32))
    return minimal_gbt(transactions=transactions, default_witness_commitment=commitment.hex(),
                       coinbasevalue=312_500_000 + sum(t["fee"] for t in transactions))


def test_4000_transaction_template_cost():
    gbt = synthetic_gbt(4000)
    outputs = split_reward(gbt["coinbasevalue"], P2PKH_SCRIPT, 1.5, bytes.fromhex("0014" + "33" * 20))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        template = BlockTemplate.from_gbt(gbt)
        coinb1, coinb2 = template.coinbase_parts(outputs, b"/gstratum/", 8)
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    BlockTemplate.from_gbt(gbt, verify_txids=True)
    verified = time.perf_counter() - start
    print(f"\n4000-tx template: from_gbt + merkle branch + coinbase_parts {best * 1e3:.1f} ms "
          f"(best of 3); with verify_txids {verified * 1e3:.1f} ms")
    assert best < 1.0
    assert len(template.transactions) == 4000 and len(template.merkle_branch) == 12  # ceil(log2(4001))
    assert template.total_fee == sum(1000 + i % 7 for i in range(4000))
    root = bitcoin.merkle_root_from_branch(sha256d(coinb1 + bytes(8) + coinb2), list(template.merkle_branch))
    assert root == textbook_merkle_root([sha256d(coinb1 + bytes(8) + coinb2)] + [bytes.fromhex(t["txid"])[::-1]
                                                                               for t in gbt["transactions"]])


def test_a_solo_variant_line_is_the_shared_line_with_its_own_coinbase():
    """Job.for_payout derives a variant's notify line from the shared one (coinb2 replaced): it must be byte for
    byte what encoding the variant from scratch gives, and hash to the coinbase that pays the miner."""
    from gstratum.mining.block import witness_commitment_script
    from gstratum.mining.jobs import Job
    from gstratum.mining.template import BlockTemplate, split_reward
    from gstratum.protocol import rpc

    template = BlockTemplate.from_gbt({
        "version": 0x20000000, "previousblockhash": "11" * 32, "bits": "207fffff", "curtime": 1700000000,
        "mintime": 1699999000, "height": 200, "coinbasevalue": 5000000000, "transactions": [], "coinbaseaux": {},
        "default_witness_commitment": witness_commitment_script([]).hex()})
    miner, pool = bytes.fromhex("0014" + "ab" * 20), bytes.fromhex("0014" + "cd" * 20)

    def coinbase_for(script):
        return template.coinbase_parts(split_reward(template.coinbasevalue, script, 2.0, pool), b"/t/", 12)

    coinb1, coinb2 = template.coinbase_parts([(template.coinbasevalue, pool)], b"/t/", 12)
    job = Job("j1", template.stratum_prevhash, coinb1.hex(), coinb2.hex(), (), template.version_hex,
              template.bits_hex, template.curtime_hex, True, 200, coinbase_for=coinbase_for)
    shared = notify_line(job)
    variant = job.for_payout(miner)
    assert notify_line(variant) != shared
    assert notify_line(variant) == rpc.encode_notification("mining.notify", notify_params(variant))
    assert job.for_payout(miner) is variant and job.for_payout(None) is job
    assert variant.coinb2 == coinbase_for(miner)[1].hex() and miner.hex() in variant.coinb2
