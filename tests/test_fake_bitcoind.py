"""The fake Bitcoin Core node must be as strict as the real one: a fake that accepts anything proves nothing.

Blocks here are built by a small builder of the test's own (not the node's, not the pool's), so each refusal is
checked against an independent idea of what a valid block is.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
import zmq

from tests.nodes import FakeNode, RpcError, rpc_call

pytestmark = pytest.mark.integration

COIN = 100_000_000
ZERO32 = bytes(32)
SEGWIT = {"rules": ["segwit"]}
PAYOUT = bytes.fromhex("0014" + "ab" * 20)


# ----------------------------------------------------------------------------------------------------------------
# An independent little block builder.


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def strip_witness(raw: bytes) -> tuple[bytes, bool]:
    """(the transaction without marker, flag and witnesses; whether it had them)."""
    segwit = raw[4] == 0 and raw[5] == 1
    start = pos = 6 if segwit else 4
    n_in, pos = read_varint(raw, pos)
    for _ in range(n_in):
        length, pos = read_varint(raw, pos + 36)
        pos += length + 4
    n_out, pos = read_varint(raw, pos)
    for _ in range(n_out):
        length, pos = read_varint(raw, pos + 8)
        pos += length
    body_end = pos
    if segwit:
        for _ in range(n_in):
            items, pos = read_varint(raw, pos)
            for _ in range(items):
                length, pos = read_varint(raw, pos)
                pos += length
    assert pos + 4 == len(raw), "transaction length does not add up"
    return raw[:4] + raw[start:body_end] + raw[pos:], segwit


def txid(raw: bytes) -> bytes:
    return sha256d(strip_witness(raw)[0])


def merkle(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        if len(hashes) % 2:
            hashes = hashes + hashes[-1:]
        hashes = [sha256d(a + b) for a, b in zip(hashes[::2], hashes[1::2])]
    return hashes[0]


def height_push(height: int) -> bytes:
    """BIP34 as `CScript() << height`: OP_1..OP_16, else the minimal little-endian number with a sign byte."""
    if 1 <= height <= 16:
        return bytes([0x50 + height])
    digits = []
    while height:
        digits.append(height & 0xFF)
        height >>= 8
    if digits[-1] & 0x80:
        digits.append(0)
    return bytes([len(digits)]) + bytes(digits)


def coinbase(script_sig: bytes, outputs: list[tuple[int, bytes]], reserved: bytes | None) -> bytes:
    parts = [struct.pack("<i", 1)]
    if reserved is not None:
        parts.append(b"\x00\x01")
    parts += [b"\x01", ZERO32, b"\xff\xff\xff\xff", varint(len(script_sig)), script_sig, b"\xff\xff\xff\xff"]
    parts.append(varint(len(outputs)))
    parts += [struct.pack("<q", value) + varint(len(script)) + script for value, script in outputs]
    if reserved is not None:
        parts += [b"\x01", varint(len(reserved)), reserved]
    parts.append(b"\x00\x00\x00\x00")
    return b"".join(parts)


def target_of(bits: str) -> int:
    compact = int(bits, 16)
    return (compact & 0xFFFFFF) << (8 * ((compact >> 24) - 3))


def build_block(
    tmpl: dict,
    *,
    txs: list[bytes] | None = None,
    script_sig: bytes | None = None,
    value: int | None = None,
    commit: bool = True,
    commitment: bytes | None = None,
    reserved: bytes | None = ZERO32,
    arrange: Callable[[list[bytes]], list[bytes]] | None = None,
    version: int = 0x20000000,
    prevhash: str | None = None,
    block_time: int | None = None,
    bits: str | None = None,
    merkle_root: bytes | None = None,
    miss: bool = False,
) -> tuple[str, str]:
    """A block on `tmpl`, honest unless told otherwise; returns (hex, hash in display order)."""
    if txs is None:
        txs = [bytes.fromhex(t["data"]) for t in tmpl["transactions"]]
    fees = {t["data"]: t["fee"] for t in tmpl["transactions"]}
    if value is None:
        value = tmpl["coinbasevalue"] - sum(t["fee"] for t in tmpl["transactions"]) + \
            sum(fees.get(raw.hex(), 0) for raw in txs)
    if script_sig is None:
        script_sig = height_push(tmpl["height"]) + b"\x08" + os.urandom(8)
    outputs = [(value, PAYOUT)]
    if commit:
        if commitment is None:
            root = merkle([ZERO32] + [sha256d(raw) for raw in txs])
            commitment = sha256d(root + ZERO32)
        outputs.append((0, bytes.fromhex("6a24aa21a9ed") + commitment))
    all_txs = [coinbase(script_sig, outputs, reserved)] + list(txs)
    if arrange is not None:
        all_txs = arrange(all_txs)
    if merkle_root is None:
        merkle_root = merkle([txid(raw) for raw in all_txs])
    bits = bits or tmpl["bits"]
    prefix = struct.pack("<i", version) + bytes.fromhex(prevhash or tmpl["previousblockhash"])[::-1] + \
        merkle_root + struct.pack("<II", block_time or tmpl["curtime"], int(bits, 16))
    target = target_of(bits)
    for nonce in range(1 << 16):
        header = prefix + struct.pack("<I", nonce)
        meets = int.from_bytes(sha256d(header), "little") <= target
        if meets != miss:
            break
    else:
        raise AssertionError("no nonce found")
    body = varint(len(all_txs)) + b"".join(all_txs)
    return (header + body).hex(), sha256d(header)[::-1].hex()


def random_tx() -> bytes:
    """A well-formed transaction no mempool has seen."""
    return struct.pack("<i", 2) + b"\x01" + os.urandom(32) + b"\x00\x00\x00\x00" + b"\x00" + b"\xff\xff\xff\xff" + \
        b"\x01" + struct.pack("<q", 10_000) + b"\x16\x00\x14" + os.urandom(20) + b"\x00\x00\x00\x00"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


class Subscriber:
    """A plain ZMQ SUB on hashblock, in place (the node has seen the subscription) before it returns."""

    def __init__(self, node: FakeNode) -> None:
        before = node.rpc("fake_zmqsubscriptions")
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"hashblock")
        self.socket.connect(node.zmq_endpoint)
        wait_until(lambda: node.rpc("fake_zmqsubscriptions") > before, what="the ZMQ subscription")

    def receive(self, timeout_ms: int = 5000) -> tuple[str, int]:
        assert self.socket.poll(timeout_ms), "no hashblock message"
        topic, body, sequence = self.socket.recv_multipart()
        assert topic == b"hashblock" and len(body) == 32 and len(sequence) == 4
        return body.hex(), int.from_bytes(sequence, "little")

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def node(tmp_path):
    started = FakeNode(tmp_path / "node")
    try:
        yield started
    finally:
        assert started.stop() == 0, started.output_text()


def test_builder_height_push_matches_core_examples():
    assert height_push(1) == b"\x51" and height_push(16) == b"\x60"
    assert height_push(17) == bytes.fromhex("0111")
    assert height_push(127) == bytes.fromhex("017f")
    assert height_push(128) == bytes.fromhex("028000")
    assert height_push(840000) == bytes.fromhex("0340d10c")


# ----------------------------------------------------------------------------------------------------------------
# The template.


def test_template_shape_and_numbers(node):
    tmpl = node.rpc("getblocktemplate", SEGWIT)
    assert tmpl["capabilities"] == ["proposal"]
    assert tmpl["version"] == 0x20000000
    assert tmpl["rules"] == ["csv", "!segwit", "taproot"]
    assert tmpl["vbavailable"] == {} and tmpl["vbrequired"] == 0 and tmpl["coinbaseaux"] == {}
    assert tmpl["mutable"] == ["time", "transactions", "prevblock"]
    assert tmpl["noncerange"] == "00000000ffffffff"
    assert (tmpl["sigoplimit"], tmpl["sizelimit"], tmpl["weightlimit"]) == (80000, 4000000, 4000000)
    assert tmpl["bits"] == "207fffff"
    assert tmpl["target"] == "7fffff" + "00" * 29
    assert tmpl["height"] == 101 == node.rpc("getblockcount") + 1
    assert tmpl["previousblockhash"] == node.rpc("getbestblockhash")
    assert abs(tmpl["curtime"] - time.time()) < 60

    txs = tmpl["transactions"]
    assert len(txs) == 20
    witnessed = 0
    for tx in txs:
        raw = bytes.fromhex(tx["data"])
        stripped, segwit = strip_witness(raw)
        witnessed += segwit
        assert raw[:4] == struct.pack("<i", 2) and raw[-4:] == ZERO32[:4]
        assert tx["txid"] == sha256d(stripped)[::-1].hex()
        assert tx["hash"] == sha256d(raw)[::-1].hex()
        assert (tx["hash"] != tx["txid"]) == segwit
        assert tx["weight"] == len(stripped) * 3 + len(raw)
        assert 1000 <= tx["fee"] <= 50_000
        assert tx["depends"] == [] and tx["sigops"] >= 1
    assert witnessed == 10  # --witness-fraction 0.5 of 20
    assert tmpl["coinbasevalue"] == 50 * COIN + sum(tx["fee"] for tx in txs)

    root = merkle([ZERO32] + [bytes.fromhex(tx["hash"])[::-1] for tx in txs])
    assert tmpl["default_witness_commitment"] == "6a24aa21a9ed" + sha256d(root + ZERO32).hex()

    tip = node.rpc("getblockcount")
    times = sorted(node.rpc("getblockheader", node.rpc("getblockhash", h))["time"] for h in range(tip - 10, tip + 1))
    assert tmpl["mintime"] == times[5] + 1
    assert tmpl["longpollid"].startswith(tmpl["previousblockhash"])

    added = node.rpc("fake_addtxs", 5)
    again = node.rpc("getblocktemplate", SEGWIT)
    assert [tx["txid"] for tx in again["transactions"]] == [tx["txid"] for tx in txs] + added
    assert again["coinbasevalue"] == 50 * COIN + sum(tx["fee"] for tx in again["transactions"])
    assert again["longpollid"] != tmpl["longpollid"]


def test_template_after_halving_and_bip34_sign_byte(tmp_path):
    with FakeNode(tmp_path / "n", "--start-height", "149", "--mempool-txs", "3") as node:
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        assert tmpl["height"] == 150  # the regtest halving interval is 150
        assert tmpl["coinbasevalue"] == 25 * COIN + sum(tx["fee"] for tx in tmpl["transactions"])
        assert height_push(150) == bytes.fromhex("029600")
        unsigned, _ = build_block(tmpl, script_sig=bytes.fromhex("0196") + b"\x00")
        assert node.rpc("submitblock", unsigned) == "bad-cb-height"
        over, _ = build_block(tmpl, value=tmpl["coinbasevalue"] + 25 * COIN)
        assert node.rpc("submitblock", over) == "bad-cb-amount"
        good, block_hash = build_block(tmpl)
        assert node.rpc("submitblock", good) is None
        assert node.rpc("getbestblockhash") == block_hash


def test_small_heights_take_op_n(tmp_path):
    with FakeNode(tmp_path / "n", "--start-height", "15", "--mempool-txs", "0") as node:
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        assert tmpl["height"] == 16
        pushed, _ = build_block(tmpl, script_sig=bytes.fromhex("0110") + b"\x00")
        assert node.rpc("submitblock", pushed) == "bad-cb-height"
        short, _ = build_block(tmpl, script_sig=b"\x60")
        assert node.rpc("submitblock", short) == "bad-cb-length"
        good, _ = build_block(tmpl, script_sig=b"\x60\x00")
        assert node.rpc("submitblock", good) is None
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        good, _ = build_block(tmpl, script_sig=bytes.fromhex("0111") + b"\x00")
        assert node.rpc("submitblock", good) is None
        assert node.rpc("getblockcount") == 17


def test_getblocktemplate_needs_segwit_and_refuses_during_ibd(node):
    message = 'getblocktemplate must be called with the segwit rule set (call with {"rules": ["segwit"]})'
    for params in ([], [{}], [{"rules": []}], [{"rules": "segwit"}]):
        with pytest.raises(RpcError) as refused:
            node.rpc("getblocktemplate", *params)
        assert (refused.value.code, refused.value.message) == (-8, message)

    assert node.rpc("fake_setibd", True) is True
    assert node.rpc("getblockchaininfo")["initialblockdownload"] is True
    with pytest.raises(RpcError) as refused:
        node.rpc("getblocktemplate", SEGWIT)
    assert (refused.value.code, refused.value.message) == (-10, "Bitcoin Core is in initial sync and waiting for blocks...")
    node.rpc("fake_setibd", False)
    assert node.rpc("getblockchaininfo")["initialblockdownload"] is False
    assert node.rpc("getblocktemplate", SEGWIT)["height"] == 101


def test_longpoll_answers_when_the_tip_moves(node):
    tmpl = node.rpc("getblocktemplate", SEGWIT)
    answer = {}
    poller = threading.Thread(target=lambda: answer.update(
        node.rpc("getblocktemplate", {"rules": ["segwit"], "longpollid": tmpl["longpollid"]}, timeout=30)))
    poller.start()
    new_tip = node.mine(1)[0]
    poller.join(timeout=30)
    assert answer["previousblockhash"] == new_tip


# ----------------------------------------------------------------------------------------------------------------
# Blocks.


def test_honest_block_is_accepted_and_announced(node):
    subscriber = Subscriber(node)
    try:
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        block, block_hash = build_block(tmpl)
        assert node.rpc("submitblock", block) is None
        assert node.rpc("getbestblockhash") == block_hash
        assert node.rpc("getblockcount") == 101
        assert subscriber.receive() == (block_hash, 0)

        record = node.rpc("fake_block", block_hash)
        commitment = bytes.fromhex(tmpl["default_witness_commitment"])
        assert record["coinbase_outputs"] == [[tmpl["coinbasevalue"], PAYOUT.hex()], [0, commitment.hex()]]
        assert record["tx_count"] == 21 and record["hex"] == block and record["height"] == 101
        assert node.rpc("getblock", block_hash, 0) == block
        assert node.rpc("getblock", block_hash)["tx"][1:] == [tx["txid"] for tx in tmpl["transactions"]]

        assert node.rpc("submitblock", block) == "duplicate"

        after = node.rpc("getblocktemplate", SEGWIT)
        assert after["transactions"] == [] and after["coinbasevalue"] == 50 * COIN
        assert after["previousblockhash"] == block_hash and after["height"] == 102

        # Without a witness anywhere a block needs no commitment.
        empty, empty_hash = build_block(after, commit=False, reserved=None)
        assert node.rpc("submitblock", empty) is None
        assert subscriber.receive() == (empty_hash, 1)
        mined = node.mine(1)
        assert subscriber.receive() == (mined[0], 2)

        header = node.rpc("getblockheader", block_hash)
        assert header["confirmations"] == 3 and header["height"] == 101
        assert header["nextblockhash"] == empty_hash
        assert header["previousblockhash"] == tmpl["previousblockhash"]
        assert node.rpc("getblockheader", block_hash, False) == block[:160]

        log = node.rpc("fake_submissions")
        assert [(s["hash"], s["result"]) for s in log] == [(block_hash, None), (block_hash, "duplicate"),
                                                           (empty_hash, None)]
        assert log[0]["height"] == 101 and log[0]["coinbase_outputs"] == record["coinbase_outputs"]
    finally:
        subscriber.close()


def test_each_broken_block_is_refused_with_cores_reason(node):
    tmpl = node.rpc("getblocktemplate", SEGWIT)
    tip, height, value = tmpl["previousblockhash"], tmpl["height"], tmpl["coinbasevalue"]
    witnessed = [bytes.fromhex(t["data"]) for t in tmpl["transactions"] if t["hash"] != t["txid"]]
    assert witnessed
    cases = {
        "prev-blk-not-found": dict(prevhash="11" * 32),
        "bad-prevblk": dict(prevhash=node.rpc("getblockhash", height - 2)),
        "bad-diffbits": dict(bits="207ffffe"),
        "high-hash": dict(miss=True),
        "time-too-old": dict(block_time=tmpl["mintime"] - 1),
        "time-too-new": dict(block_time=int(time.time()) + 7200 + 600),
        "bad-version(0x00000001)": dict(version=1),
        "bad-cb-missing": dict(arrange=lambda txs: txs[1:]),
        "bad-cb-multiple": dict(arrange=lambda txs: txs + txs[:1]),
        "bad-txnmrklroot": dict(merkle_root=b"\x55" * 32),
        "bad-cb-length": dict(script_sig=height_push(height) + bytes(99)),
        "bad-cb-height": dict(script_sig=height_push(height + 1) + b"\x00"),
        "bad-txns-inputs-missingorspent": dict(txs=[bytes.fromhex(t["data"]) for t in tmpl["transactions"]]
                                               + [random_tx()]),
        "bad-txns-duplicate": dict(arrange=lambda txs: txs + txs[1:2]),
        "bad-cb-amount": dict(value=value + 1),
        "bad-witness-nonce-size": dict(reserved=None),
        "bad-witness-merkle-match": dict(commitment=b"\x66" * 32),
        "unexpected-witness": dict(commit=False, reserved=None),
    }
    for reason, variant in cases.items():
        block, _ = build_block(tmpl, **variant)
        assert node.rpc("submitblock", block) == reason, reason

    more = {
        "bad-cb-height": [  # the right number, not pushed the way Core pushes it
            dict(script_sig=bytes([2, height, 0]) + b"\x00"),
            dict(script_sig=bytes([0x4C, 1, height]) + b"\x00"),
            dict(script_sig=b"\x00" + height_push(height)),
        ],
        "bad-witness-nonce-size": [dict(reserved=bytes(31)), dict(reserved=bytes(33))],
        "bad-witness-merkle-match": [dict(reserved=b"\x01" * 32)],  # committed to with a zero reserved value
        "bad-txns-inputs-missingorspent": [dict(txs=[strip_witness(witnessed[0])[0]])],  # witness stripped
        "unexpected-witness": [dict(txs=witnessed[:1], commit=False, reserved=None)],
    }
    for reason, variants in more.items():
        for variant in variants:
            block, _ = build_block(tmpl, **variant)
            assert node.rpc("submitblock", block) == reason, (reason, variant)

    # Core remembers blocks that failed after their header was accepted, but not "mutated" ones.
    over, _ = build_block(tmpl, value=value + 1)
    assert node.rpc("submitblock", over) == "bad-cb-amount"
    assert node.rpc("submitblock", over) == "duplicate-invalid"
    mutated, _ = build_block(tmpl, reserved=None)
    assert node.rpc("submitblock", mutated) == "bad-witness-nonce-size"
    assert node.rpc("submitblock", mutated) == "bad-witness-nonce-size"

    good, good_hash = build_block(tmpl)
    for broken in (good[:-2], good + "00", good[:100], "zz" + good[2:], "", "0"):
        with pytest.raises(RpcError) as refused:
            node.rpc("submitblock", broken)
        assert (refused.value.code, refused.value.message) == (-22, "Block decode failed")

    assert node.rpc("getbestblockhash") == tip
    log = node.rpc("fake_submissions")
    assert all(entry["result"] is not None for entry in log)
    assert log[-1]["result"] == "Block decode failed"

    # A proposal is checked the same way (minus proof of work) and changes nothing.
    assert node.rpc("getblocktemplate", {"mode": "proposal", "data": good}) is None
    bad_root, _ = build_block(tmpl, merkle_root=b"\x55" * 32)
    assert node.rpc("getblocktemplate", {"mode": "proposal", "data": bad_root}) == "bad-txnmrklroot"
    assert node.rpc("getbestblockhash") == tip

    assert node.rpc("submitblock", good) is None
    assert node.rpc("getbestblockhash") == good_hash


def test_hard_target_refuses_honest_nonces(tmp_path):
    with FakeNode(tmp_path / "n", "--bits", "1d00ffff", "--mempool-txs", "2") as node:
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        assert tmpl["bits"] == "1d00ffff"
        assert tmpl["target"] == "00000000ffff" + "00" * 26
        target = int(tmpl["target"], 16)
        block, _ = build_block(tmpl, miss=True)
        header = bytes.fromhex(block[:160])
        hits = [n for n in range(2000)
                if int.from_bytes(sha256d(header[:76] + struct.pack("<I", n)), "little") <= target]
        assert hits == []
        assert node.rpc("submitblock", block) == "high-hash"
        assert node.rpc("getdifficulty") == 1.0


def test_fake_mine_and_reorg(node):
    subscriber = Subscriber(node)
    try:
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        mined = node.mine(2, PAYOUT.hex())
        assert [subscriber.receive()[1], subscriber.receive()[1]] == [0, 1]
        assert node.rpc("getblockcount") == 102 and node.rpc("getbestblockhash") == mined[1]
        first = node.rpc("fake_block", mined[0])
        assert first["coinbase_outputs"][0] == [tmpl["coinbasevalue"], PAYOUT.hex()]
        assert first["tx_count"] == 21  # it confirmed the whole mempool
        header = bytes.fromhex(first["hex"][:160])
        assert sha256d(header)[::-1].hex() == mined[0]
        assert int.from_bytes(sha256d(header), "little") <= target_of(tmpl["bits"])  # real work on regtest
        assert node.rpc("getblocktemplate", SEGWIT)["transactions"] == []
        assert [node.rpc("getblockheader", h)["confirmations"] for h in mined] == [2, 1]

        replaced = node.rpc("fake_reorg", 2)
        assert len(replaced) == 3
        assert subscriber.receive() == (replaced[-1], 2)  # one message, for the new tip
        assert node.rpc("getblockcount") == 103 and node.rpc("getbestblockhash") == replaced[-1]
        assert [node.rpc("getblockheader", h)["confirmations"] for h in mined] == [-1, -1]
        assert [node.rpc("getblockhash", h) for h in (101, 102, 103)] == replaced
        assert node.rpc("getblockheader", replaced[0])["confirmations"] == 3
        assert node.rpc("fake_block", mined[0])["active"] is False
        # The replacement blocks are empty: the disconnected transactions are back in the mempool.
        back = node.rpc("getblocktemplate", SEGWIT)
        assert [t["txid"] for t in back["transactions"]] == [t["txid"] for t in tmpl["transactions"]]

        stale = build_block(tmpl)[0]
        assert node.rpc("submitblock", stale) == "bad-prevblk"  # its parent is no longer the tip
        assert node.rpc("submitblock", node.rpc("fake_block", mined[0])["hex"]) == "duplicate"
        tips = node.rpc("getchaintips")
        assert {t["status"] for t in tips} == {"active", "valid-fork"}
    finally:
        subscriber.close()


# ----------------------------------------------------------------------------------------------------------------
# Addresses.

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def base58check(version: int, payload: bytes) -> str:
    data = bytes([version]) + payload
    data += sha256d(data)[:4]
    number, text = int.from_bytes(data, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        text = B58[digit] + text
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + text


def segwit_address(hrp: str, version: int, program: bytes) -> str:
    values, acc, bits = [version], 0, 0
    for byte in program:
        acc, bits = acc << 8 | byte, bits + 8
        while bits >= 5:
            bits -= 5
            values.append(acc >> bits & 31)
    if bits:
        values.append(acc << (5 - bits) & 31)

    def polymod(vals):
        chk = 1
        for v in vals:
            top, chk = chk >> 25, (chk & 0x1FFFFFF) << 5 ^ v
            for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
                chk ^= g if top >> i & 1 else 0
        return chk

    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    const = 1 if version == 0 else 0x2BC830A3
    mod = polymod(expanded + values + [0] * 6) ^ const
    return hrp + "1" + "".join(BECH32[v] for v in values + [mod >> 5 * (5 - i) & 31 for i in range(6)])


BIP350_VALID = [  # (address, scriptPubKey): BIP350's test vectors
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
]
BIP350_INVALID = [
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",  # invalid hrp
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # bech32 instead of bech32m
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",  # bech32 instead of bech32m
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",  # bech32 instead of bech32m
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # bech32m instead of bech32
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",  # bech32m instead of bech32
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",  # invalid character in checksum
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",  # invalid witness version
    "bc1pw5dgrnzv",  # program of 1 byte
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # program of 41 bytes
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # v0 program of 16 bytes
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",  # mixed case
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # more than 4 padding bits
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",  # non-zero padding
    "bc1gmk9yu",  # empty data section
]


def check_valid(node: FakeNode, address: str, script: str, *, isscript: bool | None, witness: int | None):
    info = node.rpc("validateaddress", address)
    assert info["isvalid"] is True, (address, info)
    assert info["scriptPubKey"] == script, address
    assert info["address"] == (address.lower() if witness is not None else address)
    assert info.get("isscript") is isscript and info["iswitness"] is (witness is not None)
    if witness is not None:
        assert (info["witness_version"], info["witness_program"]) == (witness, script[4:])


def check_invalid(node: FakeNode, address: str, error: str | None = None):
    info = node.rpc("validateaddress", address)
    assert info["isvalid"] is False, address
    assert info["error"], address
    if error is not None:
        assert info["error"] == error, (address, info["error"])


def test_validateaddress_mainnet(tmp_path):
    with FakeNode(tmp_path / "n", "--chain", "main", "--start-height", "3", "--mempool-txs", "0") as node:
        assert node.cookie_path == tmp_path / "n" / ".cookie"
        check_valid(node, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
                    "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac", isscript=False, witness=None)
        check_valid(node, "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
                    "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87", isscript=True, witness=None)
        for address, script in BIP350_VALID:
            if address.lower().startswith("bc1"):
                version = 0 if script[:2] == "00" else int(script[:2], 16) - 0x50
                isscript = {0: len(script) == 68, 1: True if len(script) == 68 else None}.get(version)
                check_valid(node, address, script, isscript=isscript, witness=version)
            else:
                check_invalid(node, address)
        for address in BIP350_INVALID:
            check_invalid(node, address)
        check_invalid(node, BIP350_VALID[1][0],
                      "Invalid or unsupported Segwit (Bech32) or Base58 encoding.")  # testnet on main
        check_invalid(node, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
                      "Invalid or unsupported prefix for Segwit (Bech32) address (expected bc, got bcrt).")
        check_invalid(node, BIP350_INVALID[1], "Version 1+ witness address must use Bech32m checksum")
        check_invalid(node, BIP350_INVALID[4], "Version 0 witness address must use Bech32 checksum")
        check_invalid(node, BIP350_INVALID[10], "Invalid Bech32 v0 address program size (16 bytes), per BIP141")
        check_invalid(node, BIP350_INVALID[8], "Invalid Bech32 address program size (1 byte)")
        check_invalid(node, BIP350_INVALID[7], "Invalid Bech32 address witness version")
        check_invalid(node, BIP350_INVALID[14], "Empty Bech32 data section")
        check_invalid(node, base58check(0x6F, bytes(20)), "Invalid or unsupported Base58-encoded address.")
        check_invalid(node, base58check(0x00, bytes(19)), "Invalid length for Base58 address (P2PKH or P2SH)")
        check_invalid(node, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3",
                      "Invalid checksum or length of Base58 address (P2PKH or P2SH)")
        check_invalid(node, "not an address", "Invalid or unsupported Segwit (Bech32) or Base58 encoding.")


@pytest.mark.parametrize("chain, hrp, subdir", [("test", "tb", "testnet3"), ("regtest", "bcrt", "regtest")])
def test_validateaddress_test_networks(tmp_path, chain, hrp, subdir):
    with FakeNode(tmp_path / "n", "--chain", chain, "--start-height", "3", "--mempool-txs", "0") as node:
        assert node.cookie_path == tmp_path / "n" / subdir / ".cookie"
        assert node.rpc("getblockchaininfo")["chain"] == chain
        key, script_hash = bytes.fromhex("77bff20c60e522dfaa3350c39b030a5d004e839a"), bytes(range(20))
        check_valid(node, base58check(0x6F, key), f"76a914{key.hex()}88ac", isscript=False, witness=None)
        check_valid(node, base58check(0xC4, script_hash), f"a914{script_hash.hex()}87", isscript=True, witness=None)
        for version, program, isscript in ((0, bytes(range(20)), False), (0, bytes(range(32)), True),
                                           (1, bytes(range(32)), True), (2, bytes(range(16)), None)):
            address = segwit_address(hrp, version, program)
            script = bytes([version + 0x50 if version else 0, len(program)]) + program
            check_valid(node, address, script.hex(), isscript=isscript, witness=version)
            check_valid(node, address.upper(), script.hex(), isscript=isscript, witness=version)
        for address, script in BIP350_VALID:
            if address.lower().startswith(hrp + "1"):
                check_valid(node, address, script, isscript=script.startswith("0020") or script.startswith("5120"),
                            witness=0 if script[:2] == "00" else 1)
            else:
                check_invalid(node, address)  # a mainnet address, or testnet's on regtest
        for address in BIP350_INVALID:
            check_invalid(node, address)
        check_invalid(node, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "Invalid or unsupported Base58-encoded address.")
        check_invalid(node, "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "Invalid or unsupported Base58-encoded address.")
        check_invalid(node, segwit_address("bc", 0, bytes(20)))


# ----------------------------------------------------------------------------------------------------------------
# HTTP, authentication, processes.


def post(url: str, body: bytes, auth: str | None = None, path: str = "/") -> tuple[int, bytes]:
    request = urllib.request.Request(url + path, data=body, method="POST")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


CALL = json.dumps({"jsonrpc": "1.0", "id": 7, "method": "getblockcount", "params": []}).encode()


def test_authentication_and_cookie_rotation(tmp_path):
    node = FakeNode(tmp_path / "n", "--rpcuser", "alice", "--rpcpassword", "s3cret")
    try:
        cookie = node.cookie
        assert re.fullmatch(r"__cookie__:[0-9a-f]{64}", cookie)
        assert node.cookie_path.stat().st_mode & 0o777 == 0o600
        assert node.url_with_auth == node.url.replace("http://", f"http://{cookie}@")
        assert post(node.url, CALL) == (401, b"")
        assert post(node.url, CALL, "__cookie__:" + "0" * 64) == (401, b"")
        assert post(node.url, CALL, "alice:wrong") == (401, b"")
        assert post(node.url, CALL, cookie) == (200, b'{"result":100,"error":null,"id":7}\n')
        assert rpc_call(node.url, "alice:s3cret", "getblockcount", []) == 100

        url, tip, mempool = node.url, node.rpc("getbestblockhash"), node.rpc("getrawmempool")
        node.restart()
        assert node.url == url
        assert node.cookie != cookie
        assert post(node.url, CALL, cookie) == (401, b"")
        assert node.rpc("getbestblockhash") == tip and node.rpc("getrawmempool") == mempool
        assert rpc_call(node.url, "alice:s3cret", "getblockcount", []) == 100
    finally:
        assert node.stop() == 0, node.output_text()
    assert not node.cookie_path.exists()  # a clean exit removes it, as Core


def test_restart_keeps_the_chain_even_after_sigkill(tmp_path):
    node = FakeNode(tmp_path / "n")
    try:
        tmpl = node.rpc("getblocktemplate", SEGWIT)
        block, block_hash = build_block(tmpl)
        assert node.rpc("submitblock", block) is None
        node.mine(2)
        tip, height = node.rpc("getbestblockhash"), node.rpc("getblockcount")
        zmq_endpoint = node.zmq_endpoint
        node.restart()
        assert (node.rpc("getbestblockhash"), node.rpc("getblockcount")) == (tip, height)
        assert node.zmq_endpoint == zmq_endpoint
        assert node.rpc("fake_block", block_hash)["hex"] == block
        added = node.rpc("fake_addtxs", 3)
        node.kill()
        node.restart()
        assert node.rpc("getblockcount") == height == 103
        assert node.rpc("getrawmempool") == added
        assert node.rpc("submitblock", block) == "duplicate"
    finally:
        node.stop()


def test_paused_node_times_out_then_answers(node):
    node.pause()
    try:
        started = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            node.rpc("getblockcount", timeout=1)
        assert time.monotonic() - started < 5
    finally:
        node.resume()
    assert node.rpc("getblockcount") == 100


def test_json_rpc_envelope_like_core(node):
    auth = node.cookie
    status, body = post(node.url, b"{not json", auth)
    assert status == 500 and json.loads(body)["error"] == {"code": -32700, "message": "Parse error"}
    status, body = post(node.url, json.dumps({"id": 1, "method": "nosuch", "params": []}).encode(), auth)
    assert status == 404 and json.loads(body) == {"result": None, "id": 1,
                                                  "error": {"code": -32601, "message": "Method not found"}}
    status, body = post(node.url, json.dumps({"id": 2, "params": []}).encode(), auth)
    assert status == 400 and json.loads(body)["error"]["code"] == -32600
    status, body = post(node.url, CALL, auth, path="/wallet/x")
    assert status == 404
    batch = json.dumps([json.loads(CALL), {"id": 8, "method": "getblockhash", "params": [0]}]).encode()
    status, body = post(node.url, batch, auth)
    regtest_genesis = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    assert status == 200 and [r["result"] for r in json.loads(body)] == [100, regtest_genesis]

    cases = [
        (("getblockheader", "00" * 32), -5, "Block not found"),
        (("getblockhash", 101), -8, "Block height out of range"),
        (("getblockhash", "1"), -3, "JSON value of type string is not of expected type number"),
        (("getblockcount", 1), -1, None),
        (("getblockheader", "xyz"), -8, "blockhash must be of length 64 (not 3, for 'xyz')"),
    ]
    for call, code, message in cases:
        with pytest.raises(RpcError) as refused:
            node.rpc(*call)
        assert refused.value.code == code, call
        if message is not None:
            assert refused.value.message == message

    connection = http.client.HTTPConnection("127.0.0.1", int(node.url.rsplit(":", 1)[1]), timeout=10)
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    try:
        sockets = []
        for _ in range(3):  # keep-alive: three requests, one connection
            connection.request("POST", "/", CALL, headers)
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Content-Length") is not None
            assert json.loads(response.read())["result"] == 100
            sockets.append(connection.sock)
        assert sockets[0] is sockets[1] is sockets[2]
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        assert response.status == 405
        response.read()
    finally:
        connection.close()

    info = node.rpc("getnetworkinfo")
    assert (info["version"], info["subversion"], info["connections"]) == (270000, "/FakeSatoshi:27.0.0/", 8)
    mining = node.rpc("getmininginfo")
    assert mining["blocks"] == 100 and mining["chain"] == "regtest" and mining["networkhashps"] > 0
    chain = node.rpc("getblockchaininfo")
    assert chain["blocks"] == chain["headers"] == 100 and chain["verificationprogress"] == 1
    assert chain["warnings"] == "" and chain["bestblockhash"] == node.rpc("getbestblockhash")
    zmq_info = node.rpc("getzmqnotifications")
    assert zmq_info == [{"type": "pubhashblock", "address": node.zmq_endpoint, "hwm": 1000}]


def test_sigterm_exits_promptly(tmp_path):
    node = FakeNode(tmp_path / "n")
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 5
    state = json.loads((Path(tmp_path) / "n" / "regtest" / "fakechain.json").read_text())
    assert len(state["blocks"]) == 101 and len(state["mempool"]) == 20


# ----------------------------------------------------------------------------------------------------------------
# Controls for the pool's block-submission and node-health tests (issue 17).


def test_invalidateblock_and_reconsiderblock_switch_branches_like_core(node):
    ours = node.mine(1)[0]
    replaced = node.rpc("fake_reorg", 1)                  # another branch, one block longer
    assert node.rpc("getblockheader", ours)["confirmations"] == -1
    assert node.rpc("invalidateblock", replaced[0]) is None
    assert node.rpc("getbestblockhash") == ours           # the best valid branch: ours again
    assert node.rpc("getblockheader", replaced[1])["confirmations"] == -1
    assert node.rpc("submitblock", node.rpc("fake_block", replaced[0])["hex"]) == "duplicate-invalid"
    assert node.rpc("reconsiderblock", replaced[0]) is None
    assert node.rpc("getbestblockhash") == replaced[1]    # more work wins again
    assert node.rpc("getblockheader", ours)["confirmations"] == -1
    with pytest.raises(RpcError) as missing:
        node.rpc("invalidateblock", "00" * 32)
    assert missing.value.code == -5


def test_submit_modes(node):
    tmpl = node.rpc("getblocktemplate", SEGWIT)
    block, block_hash = build_block(tmpl)
    assert node.rpc("fake_setsubmitmode", "busy") == "busy"
    status, body = post(node.url, json.dumps({"id": 1, "method": "submitblock", "params": [block]}).encode(),
                        node.cookie)
    assert status == 503 and body == b"Work queue depth exceeded"
    assert node.rpc("getblockcount") == 100                # other calls are served
    node.rpc("fake_setsubmitmode", "reject:bad-txnmrklroot")
    assert node.rpc("submitblock", block) == "bad-txnmrklroot"
    node.rpc("fake_setsubmitmode", "inconclusive")
    assert node.rpc("submitblock", block) == "inconclusive"   # valid, kept, not connected
    assert node.rpc("getblockheader", block_hash)["confirmations"] == -1
    assert node.rpc("submitblock", block) == "duplicate"      # Core: it has the block already
    node.rpc("fake_setsubmitmode", "normal")
    assert node.rpc("fake_activatebestchain") == block_hash
    assert node.rpc("getblockheader", block_hash)["confirmations"] == 1
    assert node.rpc("getblocktemplate", SEGWIT)["transactions"] == []   # its transactions left the mempool
    with pytest.raises(RpcError):
        node.rpc("fake_setsubmitmode", "sometimes")


def test_stall_holds_every_chain_call_like_cs_main(node):
    assert node.rpc("fake_stall", 1) is True            # whole seconds, as every number Core takes here
    started = time.monotonic()
    assert node.rpc("getbestblockhash")
    assert time.monotonic() - started >= 0.8


def test_idle_kept_alive_connections_are_closed_after_rpcservertimeout(tmp_path):
    with FakeNode(tmp_path / "node", "--rpcservertimeout", "0.3") as node:
        conn = http.client.HTTPConnection("127.0.0.1", node.rpc_port, timeout=5)
        headers = {"Authorization": "Basic " + base64.b64encode(node.cookie.encode()).decode()}
        conn.request("POST", "/", CALL, headers)
        assert json.loads(conn.getresponse().read())["result"] == 100
        deadline = time.monotonic() + 10
        while node.rpc("fake_rpcstats")["idle_closed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.rpc("fake_rpcstats")["idle_closed"] == 1
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
            conn.request("POST", "/", CALL, headers)
            conn.getresponse()
        conn.close()
