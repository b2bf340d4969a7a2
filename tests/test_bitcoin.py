"""Known-answer vectors: real Bitcoin blocks rebuilt from Stratum-style fields must hash to their real hashes."""
from __future__ import annotations

import struct
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gstratum.mining import bitcoin
from gstratum.client.miner import find_share
from gstratum.mining.shares import HeaderTemplate, check_share

GENESIS_COINBASE = bytes.fromhex(
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054"
    "696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f7574"
    "20666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea"
    "1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000")
GENESIS_HASH = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
GENESIS_MERKLE = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"

# Block 100000: four transactions, so a two-step merkle branch.
B100K_TXIDS = [
    "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",  # coinbase
    "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
    "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
    "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
]
B100K = dict(version=1, prev="000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250",
             root="f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766", time=1293623863,
             bits=0x1B04864C, nonce=274148111,
             hash="000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506")


def internal(display_hex: str) -> bytes:
    """Hashes are displayed byte-reversed; headers and merkle trees use the internal order."""
    return bytes.fromhex(display_hex)[::-1]


def test_genesis_block_through_the_stratum_path():
    assert bitcoin.sha256d(GENESIS_COINBASE)[::-1].hex() == GENESIS_MERKLE
    # the pool would send coinb1/coinb2 around a 12-byte extranonce slot; cut the real coinbase at its scriptSig
    cut = 60
    coinb1, extranonce, coinb2 = GENESIS_COINBASE[:cut], GENESIS_COINBASE[cut:cut + 12], GENESIS_COINBASE[cut + 12:]
    template = HeaderTemplate.from_stratum(
        prevhash=bitcoin.header_prevhash_to_stratum(bytes(32)), coinb1=coinb1.hex(), coinb2=coinb2.hex(),
        merkle_branch=[], version=f"{1:08x}", nbits=f"{0x1D00FFFF:08x}")
    header = template.header(extranonce[:8], extranonce[8:], f"{1231006505:08x}", f"{2083236893:08x}", 1)
    assert len(header) == 80
    assert bitcoin.sha256d(header)[::-1].hex() == GENESIS_HASH
    assert template.hash_int(header) == int(GENESIS_HASH, 16)
    network = bitcoin.target_from_nbits(0x1D00FFFF)
    assert network == bitcoin.DIFF1
    result = check_share(template, extranonce[:8], extranonce[8:], f"{1231006505:08x}", f"{2083236893:08x}", 1,
                         share_target=bitcoin.target_from_difficulty(1), network_target=network)
    assert result.meets_share and result.is_block and result.achieved_difficulty > 2000


def test_block_100000_merkle_branch_and_header():
    txids = [internal(t) for t in B100K_TXIDS]
    branch = bitcoin.merkle_branch_for_coinbase(txids[1:])
    assert len(branch) == 2 and branch[0] == txids[1]
    root = bitcoin.merkle_root_from_branch(txids[0], branch)
    assert root == internal(B100K["root"])
    header = (struct.pack("<I", B100K["version"]) + internal(B100K["prev"]) + root +
              struct.pack("<III", B100K["time"], B100K["bits"], B100K["nonce"]))
    assert bitcoin.sha256d(header)[::-1].hex() == B100K["hash"]
    # the same header from the Stratum fields a pool would send (prevhash word-swapped, 32-bit fields as BE hex)
    stratum_prev = bitcoin.header_prevhash_to_stratum(internal(B100K["prev"]))
    assert stratum_prev != internal(B100K["prev"]).hex()
    assert bitcoin.stratum_prevhash_to_header(stratum_prev) == internal(B100K["prev"])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13])
def test_branch_matches_full_merkle_tree(count):
    txids = [bitcoin.sha256d(bytes([i])) for i in range(count)]
    level = list(txids)
    while len(level) > 1:  # the textbook tree
        if len(level) % 2:
            level.append(level[-1])
        level = [bitcoin.sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    branch = bitcoin.merkle_branch_for_coinbase(txids[1:])
    assert bitcoin.merkle_root_from_branch(txids[0], branch) == level[0]


def parse_tx(raw: bytes) -> dict:
    """Just enough of a transaction parser to check what build_coinbase_parts produced."""
    pos = 0

    def take(n):
        nonlocal pos
        pos += n
        return raw[pos - n:pos]

    def compact():
        first = take(1)[0]
        return first if first < 0xFD else int.from_bytes(take({0xFD: 2, 0xFE: 4, 0xFF: 8}[first]), "little")

    tx = {"version": int.from_bytes(take(4), "little"), "inputs": [], "outputs": []}
    for _ in range(compact()):
        prevout = take(36)
        script = take(compact())
        tx["inputs"].append((prevout, script, take(4)))
    for _ in range(compact()):
        value = int.from_bytes(take(8), "little")
        tx["outputs"].append((value, take(compact())))
    tx["locktime"] = int.from_bytes(take(4), "little")
    assert pos == len(raw), "trailing bytes"
    return tx


def test_coinbase_parts_form_a_transaction():
    commitment = bytes(range(32))
    coinb1, coinb2 = bitcoin.build_coinbase_parts(840_000, b"/gstratum/", 12, [(312_500_000, b"\x51")], commitment)
    tx = parse_tx(coinb1 + bytes(12) + coinb2)
    (prevout, script, sequence), = tx["inputs"]
    assert prevout == bytes(32) + b"\xff" * 4 and sequence == b"\xff" * 4
    assert script[0] == 3 and int.from_bytes(script[1:4], "little") == 840_000  # BIP34 height push
    assert b"/gstratum/" in script and script.endswith(bytes(12))
    assert tx["outputs"][0] == (312_500_000, b"\x51")
    assert tx["outputs"][1] == (0, bytes.fromhex("6a24aa21a9ed") + commitment)


def test_coinbase_script_length_bounds():
    with pytest.raises(ValueError):
        bitcoin.build_coinbase_parts(840_000, b"x" * 90, 12, [(1, b"\x51")])


@pytest.mark.parametrize("height, encoded", [(1, "51"), (16, "60"), (17, "0111"), (128, "028000"),
                                             (840_000, "0340d10c")])
def test_bip34_height_push(height, encoded):
    assert bitcoin.script_push_int(height).hex() == encoded


def test_difficulty_targets_exact():
    assert bitcoin.target_from_difficulty(1) == bitcoin.DIFF1
    assert bitcoin.target_from_difficulty(0.0025) == bitcoin.DIFF1 * Fraction(0.0025).denominator // Fraction(
        0.0025).numerator
    assert bitcoin.target_from_difficulty(1e-8) > bitcoin.DIFF1 * 10**7
    assert bitcoin.target_from_difficulty(1e-80) == 2**256 - 1
    assert bitcoin.difficulty_from_hash(bitcoin.DIFF1 // 1024) == pytest.approx(1024)


@given(st.binary(min_size=32, max_size=32))
def test_prevhash_swap_round_trip(prev):
    assert bitcoin.stratum_prevhash_to_header(bitcoin.header_prevhash_to_stratum(prev)) == prev


def test_cpu_miner_finds_an_accepted_share():
    coinb1, coinb2 = bitcoin.build_coinbase_parts(900_000, b"/t/", 12, [(50, b"\x51")])
    template = HeaderTemplate.from_stratum("00" * 32, coinb1.hex(), coinb2.hex(), ["11" * 32, "22" * 32],
                                           "20000000", "1d00ffff")
    en1, en2, ntime = bytes.fromhex("0000000000000007"), bytes.fromhex("00000001"), "6553f100"
    target = bitcoin.target_from_difficulty(1e-5)
    found = find_share(template, en1, en2, ntime, 0x20000000, target, max_tries=2_000_000)
    assert found is not None
    nonce, value = found
    result = check_share(template, en1, en2, ntime, nonce, 0x20000000, target, bitcoin.target_from_nbits(0x1D00FFFF))
    assert result.hash_int == value and result.meets_share and not result.is_block
    # the same nonce is not a share at a huge difficulty
    hard = check_share(template, en1, en2, ntime, nonce, 0x20000000, bitcoin.target_from_difficulty(1e12), 0)
    assert not hard.meets_share
