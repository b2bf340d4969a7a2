"""Payout addresses against published vectors: BIP173 and BIP350 (texts of bitcoin/bips), Bitcoin Core's
key_io_valid.json / key_io_invalid.json (copied into tests/data/key_io_addresses.json) and well-known base58
addresses."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gstratum.mining.address import (NETWORKS, AddressError, Encoding, bech32_decode, describe_script,
                                     normalize_address, script_for_address)

DATA = Path(__file__).resolve().parent / "data"
KEY_IO = json.loads((DATA / "key_io_addresses.json").read_text())
HRP_CHAINS = {"bc": ["main"], "tb": ["test", "testnet4", "signet"], "bcrt": ["regtest"]}

# --- BIP173 "Test vectors": strings with a valid Bech32 checksum ----------------------------------------------
BIP173_VALID_BECH32 = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BIP173_INVALID_BECH32 = [
    "\x20" + "1nwldj5",      # HRP character out of range
    "\x7f" + "1axkwrx",      # HRP character out of range
    "\x80" + "1eym55h",      # HRP character out of range
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",  # too long
    "pzry9x0s0muk",          # No separator character
    "1pzry9x0s0muk",         # Empty HRP
    "x1b4n0q5v",             # Invalid data character
    "li1dgmt3",              # Too short checksum
    "de1lg7wt" + "\xff",     # Invalid character in checksum
    "A1G7SGD8",              # checksum calculated with uppercase form of HRP
    "10a06t8",               # empty HRP
    "1qzzfhee",              # empty HRP
]
# --- BIP350 "Test vectors for Bech32m" -------------------------------------------------------------------------
BIP350_VALID_BECH32M = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllludsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
BIP350_INVALID_BECH32M = [
    "\x20" + "1xj0phk",      # HRP character out of range
    "\x7f" + "1g6xzxy",      # HRP character out of range
    "\x80" + "1vctc34",      # HRP character out of range
    "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",  # too long
    "qyrz8wqd2c9m",          # No separator character
    "1qyrz8wqd2c9m",         # Empty HRP
    "y1b0jsk6g",             # Invalid data character
    "lt1igcx5c0",            # Invalid data character
    "in1muywd",              # Too short checksum
    "mm1crxm3i",             # Invalid character in checksum
    "au1s5cgom",             # Invalid character in checksum
    "M1VUXWEZ",              # checksum calculated with uppercase form of HRP
    "16plkw9",               # empty HRP
    "1p2gdwpf",              # empty HRP
]
# --- BIP350 "Test vectors for v0-v16 native segregated witness addresses" (BIP173's v0 ones are among them) ------
BIP350_VALID_SEGWIT = [
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
BIP350_INVALID_SEGWIT = [
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",    # Invalid human-readable part
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",    # Bech32 instead of Bech32m
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",    # Bech32 instead of Bech32m
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",    # Bech32 instead of Bech32m
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",                        # Bech32m instead of Bech32
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",    # Bech32m instead of Bech32
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",    # Invalid character in checksum
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",    # Invalid witness version
    "bc1pw5dgrnzv",                                                      # Invalid program length (1 byte)
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # 41 bytes
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",                              # v0 program length (BIP141)
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",    # Mixed case
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # zero padding of more than 4 bits
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",    # Non-zero padding in 8-to-5 conversion
    "bc1gmk9yu",                                                         # Empty data section
]
BIP173_INVALID_SEGWIT = [
    "tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty",                        # Invalid human-readable part
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",                        # Invalid checksum
    "BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2",                        # Invalid witness version
    "bc1rw5uspcuh",                                                      # Invalid program length
    "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",  # Invalid program length
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",                              # v0 program length (BIP141)
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",    # Mixed case
    "bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du",                             # zero padding of more than 4 bits
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv",    # Non-zero padding in 8-to-5 conversion
    "bc1gmk9yu",                                                         # Empty data section
]
# BIP173 listed these v1+ addresses as valid with a bech32 checksum; BIP350 makes them invalid (v1+ is bech32m).
BIP173_V1_PLUS_NOW_INVALID = [
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",
    "BC1SW50QA3JX3S",
    "bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj",
]


def chains_for(address: str) -> list[str]:
    return HRP_CHAINS[address.lower().rpartition("1")[0]]


def test_networks_match_bitcoin_core_chain_params():
    assert set(NETWORKS) == {"main", "test", "testnet4", "signet", "regtest"}
    assert {name: n.hrp for name, n in NETWORKS.items()} == {
        "main": "bc", "test": "tb", "testnet4": "tb", "signet": "tb", "regtest": "bcrt"}
    assert (NETWORKS["main"].p2pkh_version, NETWORKS["main"].p2sh_version) == (0x00, 0x05)
    for name in ("test", "testnet4", "signet", "regtest"):
        assert (NETWORKS[name].p2pkh_version, NETWORKS[name].p2sh_version) == (0x6F, 0xC4)


@pytest.mark.parametrize("text", BIP173_VALID_BECH32)
def test_bip173_valid_bech32_strings(text):
    hrp, data, encoding = bech32_decode(text)
    assert encoding is Encoding.BECH32
    assert hrp == text.lower().rpartition("1")[0]
    assert len(data) == len(text) - len(hrp) - 1 - 6


@pytest.mark.parametrize("text", BIP350_VALID_BECH32M)
def test_bip350_valid_bech32m_strings(text):
    hrp, _, encoding = bech32_decode(text)
    assert encoding is Encoding.BECH32M
    assert hrp == text.lower().rpartition("1")[0]


@pytest.mark.parametrize("text", BIP173_INVALID_BECH32 + BIP350_INVALID_BECH32M)
def test_bip173_bip350_invalid_strings(text):
    with pytest.raises(AddressError):
        bech32_decode(text)


@pytest.mark.parametrize("address, script_hex", BIP350_VALID_SEGWIT)
def test_bip350_valid_segwit_addresses(address, script_hex):
    for chain in chains_for(address):
        assert script_for_address(address, chain).hex() == script_hex
        assert script_for_address(address.swapcase(), chain).hex() == script_hex  # all-upper and all-lower


@pytest.mark.parametrize("address", BIP350_INVALID_SEGWIT + BIP173_INVALID_SEGWIT + BIP173_V1_PLUS_NOW_INVALID)
def test_bip173_bip350_invalid_segwit_addresses_rejected_on_every_chain(address):
    for chain in NETWORKS:
        with pytest.raises(AddressError) as caught:
            script_for_address(address, chain)
        assert address in str(caught.value)


@pytest.mark.parametrize("address, fragment", [
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixed"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "must use bech32m"),
    ("BC1SW50QA3JX3S", "must use bech32m"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "must use bech32,"),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "16 bytes"),
    ("bc1pw5dgrnzv", "1 bytes"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "checksum"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "witness version 17"),
    ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "'tc'"),
    ("bc1" + "q" * 88, "longer than 90"),
])
def test_rejections_say_why(address, fragment):
    with pytest.raises(AddressError) as caught:
        script_for_address(address, "main")
    assert fragment in str(caught.value)


@pytest.mark.parametrize("address, chain, owner", [
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "main", "test/testnet4/signet"),
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "regtest", "main"),
    ("bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9", "signet", "regtest"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "testnet4", "main"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "test", "main"),
    ("mzK2FFDEhxqHcmrJw1ysqFkVyhUULo45hZ", "main", "test/testnet4/signet/regtest"),
    ("2NC2hEhe28ULKAJkW5MjZ3jtTMJdvXmByvK", "main", "test/testnet4/signet/regtest"),
])
def test_another_networks_address_names_its_network(address, chain, owner):
    with pytest.raises(AddressError) as caught:
        script_for_address(address, chain)
    message = str(caught.value)
    assert address in message and f"address of {owner}" in message and repr(chain) in message


@pytest.mark.parametrize("address, script_hex", [
    # well-known mainnet addresses (the famous example address, the genesis coinbase's key, the Bitcoin wiki's
    # "technical background of version 1 addresses" walk-through, and HASH160 of the empty string as P2SH)
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"),
    ("16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM", "76a914010966776006953d5567439e5e39f86a0d273bee88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
])
def test_base58_known_answers(address, script_hex):
    assert script_for_address(address, "main").hex() == script_hex


@pytest.mark.parametrize("address, reason", [
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", "checksum"),          # last character changed
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN0", "character '0'"),     # 0, O, I, l are not base58
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVNl", "character 'l'"),
    ("1bvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "checksum"),          # base58 is case-sensitive
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2" + "1" * 10, "too long"),
    (" 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "character ' '"),    # no silent trimming
])
def test_base58_rejections(address, reason):
    with pytest.raises(AddressError) as caught:
        script_for_address(address, "main")
    assert reason in str(caught.value)


def base58check_encode(payload: bytes) -> str:
    """An independent textbook encoder, to build a well-formed string with a version byte no chain uses."""
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number, out = int.from_bytes(raw, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        out = alphabet[digit] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def test_base58_unknown_version_byte():
    assert base58check_encode(bytes.fromhex("00" + "77bff20c60e522dfaa3350c39b030a5d004e839a")) == \
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"  # the encoder agrees with the known answer above
    litecoin_style = base58check_encode(bytes([0x30]) + bytes(range(20)))
    for chain in NETWORKS:
        with pytest.raises(AddressError, match="unknown base58 version byte 0x30"):
            script_for_address(litecoin_style, chain)
    too_long_payload = base58check_encode(bytes([0x00]) + bytes(21))
    with pytest.raises(AddressError, match="22 bytes"):
        script_for_address(too_long_payload, "main")


def foreign_chains(address: str, chain: str) -> list[str]:
    """Chains on which a valid `chain` address must be refused (test, testnet4, signet and regtest share base58
    version bytes, so only bech32 tells regtest from the other test chains)."""
    is_bech32 = address.lower().startswith(("bc1", "tb1", "bcrt1"))
    if chain == "main":
        return ["test", "testnet4", "signet", "regtest"]
    if chain == "regtest":
        return ["main"] + (["test", "testnet4", "signet"] if is_bech32 else [])
    return ["main"] + (["regtest"] if is_bech32 else [])


@pytest.mark.parametrize("vector", KEY_IO["valid"], ids=lambda v: v["address"][:20])
def test_bitcoin_core_key_io_valid(vector):
    address, chain, script_hex = vector["address"], vector["chain"], vector["script"]
    assert script_for_address(address, chain).hex() == script_hex
    if chain == "testnet4":  # Core's vectors name testnet4; testnet3 ("test") has the same parameters
        assert script_for_address(address, "test").hex() == script_hex
    if address.lower().startswith(("bc1", "tb1", "bcrt1")):  # Core's tryCaseFlip
        assert script_for_address(address.swapcase(), chain).hex() == script_hex
    for other in foreign_chains(address, chain):
        with pytest.raises(AddressError, match="address of"):
            script_for_address(address, other)


@pytest.mark.parametrize("address", KEY_IO["invalid"], ids=lambda a: a[:20] or "empty")
def test_bitcoin_core_key_io_invalid_on_every_chain(address):
    for chain in NETWORKS:
        with pytest.raises(AddressError):
            script_for_address(address, chain)


def test_key_io_sample_is_a_good_one():
    chains = {v["chain"] for v in KEY_IO["valid"]}
    kinds = {describe_script(bytes.fromhex(v["script"])) for v in KEY_IO["valid"]}
    assert chains == {"main", "testnet4", "signet", "regtest"}
    assert {"p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr", "witness_v2", "witness_v3", "witness_v16"} <= kinds
    assert len(KEY_IO["valid"]) >= 50 and len(KEY_IO["invalid"]) >= 70


def test_unknown_chain_is_refused():
    with pytest.raises(AddressError, match="unknown chain 'mainnet'"):
        script_for_address("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet")


@pytest.mark.parametrize("script_hex, kind", [
    ("76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac", "p2pkh"),
    ("a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87", "p2sh"),
    ("0014751e76e8199196d454941c45d1b3a323f1433bd6", "p2wpkh"),
    ("00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262", "p2wsh"),
    ("512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798", "p2tr"),
    ("5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6", "witness_v1"),
    ("6002751e", "witness_v16"),
    ("5210751e76e8199196d454941c45d1b3a323", "witness_v2"),
    ("0010751e76e8199196d454941c45d1b3a323", "nonstandard"),          # v0 with 16 bytes: never spendable
    ("6a24aa21a9ed" + "00" * 32, "nonstandard"),                    # OP_RETURN commitment
    ("4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7"
     "ba0b8d578a4c702b6bf11d5fac", "nonstandard"),                   # genesis P2PK: not an address type here
    ("", "nonstandard"),
    ("5101", "nonstandard"),                                        # program of 1 byte
])
def test_describe_script(script_hex, kind):
    assert describe_script(bytes.fromhex(script_hex)) == kind


@pytest.mark.parametrize("text, key", [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),   # bech32 v0
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
    ("BC1SW50QGDZ25J", "bc1sw50qgdz25j"),                                                        # bech32m v16
    ("TB1QRP33G0Q5C5TXSP9ARYSRX4K6ZDKFS4NCE4XJ0GDCCCEFVPYSXF3Q0SL5K7",
     "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"),
    ("BCRT1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KYGT080", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"),  # regtest
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),   # base58: case-sensitive
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"),
    ("A12UEL5L", "A12UEL5L"),                     # a valid bech32 string, but not a Bitcoin network's
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T5", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T5"),   # bad checksum
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",                              # mixed case
     "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7"),
    ("Alice", "Alice"), ("", ""),                 # pool accounts (not addresses) are kept as they are
])
def test_normalize_address_keys_bech32_lowercase_and_keeps_everything_else(text, key):
    assert normalize_address(text) == key
    assert normalize_address(key) == key          # idempotent
