"""Payout addresses to scriptPubKeys, strictly (pure, no I/O): a coinbase paying to a mistyped address or to
another network's address loses the block reward, so anything doubtful is refused with the reason.

Supported: base58check P2PKH / P2SH, and native segwit per BIP173 (bech32, witness v0) and BIP350 (bech32m,
witness v1..v16). Hash160s and witness programs are used as encoded in the address: no byte reversal anywhere.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum


class AddressError(ValueError):
    """An address that cannot be paid to on the configured chain; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class Network:
    hrp: str
    p2pkh_version: int
    p2sh_version: int


# Keyed by the chain names of Bitcoin Core's getblockchaininfo "chain".
NETWORKS: dict[str, Network] = {
    "main": Network("bc", 0x00, 0x05),
    "test": Network("tb", 0x6F, 0xC4),
    "testnet4": Network("tb", 0x6F, 0xC4),
    "signet": Network("tb", 0x6F, 0xC4),
    "regtest": Network("bcrt", 0x6F, 0xC4),
}

BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
BECH32_MAX_LENGTH = 90
BECH32M_CONST = 0x2BC830A3
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
BASE58_MAX_LENGTH = 35      # 25 bytes (version, hash160, checksum) never take more than 35 base58 characters

_BECH32_VALUES = {c: i for i, c in enumerate(BECH32_CHARSET)}
_BASE58_VALUES = {c: i for i, c in enumerate(BASE58_ALPHABET)}

OP_0, OP_1, OP_16 = 0x00, 0x51, 0x60
OP_DUP, OP_HASH160, OP_EQUAL, OP_EQUALVERIFY, OP_CHECKSIG = 0x76, 0xA9, 0x87, 0x88, 0xAC


class Encoding(Enum):
    BECH32 = "bech32"
    BECH32M = "bech32m"


def _chains_with(predicate) -> str:
    return "/".join(name for name, network in NETWORKS.items() if predicate(network))


# --- bech32 / bech32m (BIP173, BIP350) ------------------------------------------------------------------------

def _polymod(values) -> int:
    generators = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                checksum ^= generators[i]
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_decode(text: str) -> tuple[str, list[int], Encoding]:
    """Decode a bech32 or bech32m string to (hrp lowercased, 5-bit data without checksum, encoding).
    AddressError on any violation of BIP173's format (characters, case, length, separator, checksum)."""
    if any(ord(c) < 33 or ord(c) > 126 for c in text):
        raise AddressError(f"{text!r}: character out of range for bech32")
    if text.lower() != text and text.upper() != text:
        raise AddressError(f"{text!r}: mixed upper and lower case")
    if len(text) > BECH32_MAX_LENGTH:
        raise AddressError(f"{text!r}: longer than {BECH32_MAX_LENGTH} characters")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1:
        raise AddressError(f"{text!r}: no human-readable part before the '1' separator")
    if separator + 7 > len(text):
        raise AddressError(f"{text!r}: checksum shorter than 6 characters")
    hrp, data_part = text[:separator], text[separator + 1:]
    bad = [c for c in data_part if c not in _BECH32_VALUES]
    if bad:
        raise AddressError(f"{text!r}: invalid bech32 data character {bad[0]!r}")
    data = [_BECH32_VALUES[c] for c in data_part]
    check = _polymod(_hrp_expand(hrp) + data)
    if check == 1:
        encoding = Encoding.BECH32
    elif check == BECH32M_CONST:
        encoding = Encoding.BECH32M
    else:
        raise AddressError(f"{text!r}: wrong bech32/bech32m checksum (mistyped?)")
    return hrp, data[:-6], encoding


def _convert_bits(data: list[int], from_bits: int, to_bits: int) -> bytes | None:
    """Regroup 5-bit groups into bytes without padding; None when the padding is over 4 bits or not zero."""
    accumulator, bits, out = 0, 0, bytearray()
    mask = (1 << to_bits) - 1
    for value in data:
        accumulator = (accumulator << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((accumulator >> bits) & mask)
    if bits >= from_bits or (accumulator << (to_bits - bits)) & mask:
        return None
    return bytes(out)


def decode_segwit(address: str, hrp_expected: str) -> tuple[int, bytes]:
    """(witness version, program) of a native segwit address for the given hrp; AddressError otherwise."""
    hrp, data, encoding = bech32_decode(address)
    if hrp != hrp_expected:
        raise AddressError(f"{address!r}: human-readable part {hrp!r}, expected {hrp_expected!r}")
    if not data:
        raise AddressError(f"{address!r}: empty data section (no witness version)")
    version = data[0]
    if version > 16:
        raise AddressError(f"{address!r}: witness version {version} does not exist (0..16)")
    program = _convert_bits(data[1:], 5, 8)
    if program is None:
        raise AddressError(f"{address!r}: invalid padding in the witness program")
    if not 2 <= len(program) <= 40:
        raise AddressError(f"{address!r}: witness program of {len(program)} bytes (must be 2..40)")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError(f"{address!r}: witness v0 program of {len(program)} bytes (must be 20 or 32, BIP141)")
    if version == 0 and encoding is not Encoding.BECH32:
        raise AddressError(f"{address!r}: witness v0 address must use bech32, not bech32m (BIP350)")
    if version != 0 and encoding is not Encoding.BECH32M:
        raise AddressError(f"{address!r}: witness v{version} address must use bech32m, not bech32 (BIP350)")
    return version, program


def witness_script(version: int, program: bytes) -> bytes:
    """scriptPubKey of a witness program: OP_0 or OP_1..OP_16, then a direct push of the program."""
    return bytes([OP_0 if version == 0 else OP_1 + version - 1, len(program)]) + program


# --- base58check ------------------------------------------------------------------------------------------------

def base58check_decode(address: str) -> bytes:
    """The payload (version byte + data) of a base58check string; AddressError on a bad character, length or
    checksum."""
    if len(address) > BASE58_MAX_LENGTH:
        raise AddressError(f"{address!r}: too long for a base58 address ({len(address)} characters)")
    number = 0
    for c in address:
        if c not in _BASE58_VALUES:
            raise AddressError(f"{address!r}: invalid base58 character {c!r}")
        number = number * 58 + _BASE58_VALUES[c]
    leading_zeros = len(address) - len(address.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = bytes(leading_zeros) + body
    if len(raw) < 5:
        raise AddressError(f"{address!r}: too short for base58check")
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise AddressError(f"{address!r}: wrong base58 checksum (mistyped?)")
    return payload


def _script_for_base58(address: str, chain: str, network: Network) -> bytes:
    payload = base58check_decode(address)
    if len(payload) != 21:
        raise AddressError(f"{address!r}: base58 payload of {len(payload)} bytes is not an address (21 expected)")
    version, hash160 = payload[0], payload[1:]
    if version == network.p2pkh_version:
        return bytes([OP_DUP, OP_HASH160, 20]) + hash160 + bytes([OP_EQUALVERIFY, OP_CHECKSIG])
    if version == network.p2sh_version:
        return bytes([OP_HASH160, 20]) + hash160 + bytes([OP_EQUAL])
    owners = _chains_with(lambda n: version in (n.p2pkh_version, n.p2sh_version))
    if owners:
        raise AddressError(f"{address!r} is an address of {owners}, but the node's chain is {chain!r}")
    raise AddressError(f"{address!r}: unknown base58 version byte 0x{version:02x}")


# --- entry points -----------------------------------------------------------------------------------------------

def script_for_address(address: str, chain: str) -> bytes:
    """The scriptPubKey paying `address` on `chain` (a getblockchaininfo chain name). Bech32 is accepted all
    lower or all upper case; base58 is case-sensitive. AddressError says what is wrong."""
    network = NETWORKS.get(chain)
    if network is None:
        raise AddressError(f"unknown chain {chain!r} for address {address!r}; expected one of {', '.join(NETWORKS)}")
    if not isinstance(address, str) or not address:
        raise AddressError(f"{address!r}: empty address")
    hrp = address.lower().rpartition("1")[0]
    known_hrps = {n.hrp for n in NETWORKS.values()}
    if hrp in known_hrps:
        if hrp != network.hrp:
            decode_segwit(address, hrp)  # a damaged address is reported as damaged, not as another network's
            owners = _chains_with(lambda n: n.hrp == hrp)
            raise AddressError(f"{address!r} is an address of {owners} (prefix {hrp!r}), but the node's chain is "
                               f"{chain!r} (prefix {network.hrp!r})")
        return witness_script(*decode_segwit(address, network.hrp))
    try:
        return _script_for_base58(address, chain, network)
    except AddressError as base58_error:
        if "1" in address:
            try:
                other_hrp, _, _ = bech32_decode(address)
            except AddressError:
                raise base58_error from None
            raise AddressError(f"{address!r}: bech32 prefix {other_hrp!r} is not Bitcoin's (expected "
                               f"{network.hrp!r} on {chain!r})") from None
        raise


def describe_script(script: bytes) -> str:
    """A short name for an output script, for logs and the API."""
    n = len(script)
    if (n == 25 and script[0] == OP_DUP and script[1] == OP_HASH160 and script[2] == 20
            and script[23] == OP_EQUALVERIFY and script[24] == OP_CHECKSIG):
        return "p2pkh"
    if n == 23 and script[0] == OP_HASH160 and script[1] == 20 and script[22] == OP_EQUAL:
        return "p2sh"
    if 4 <= n <= 42 and (script[0] == OP_0 or OP_1 <= script[0] <= OP_16) and script[1] == n - 2:
        version = 0 if script[0] == OP_0 else script[0] - OP_1 + 1
        if version == 0:
            return {20: "p2wpkh", 32: "p2wsh"}.get(n - 2, "nonstandard")
        if version == 1 and n - 2 == 32:
            return "p2tr"
        return f"witness_v{version}"
    return "nonstandard"


def normalize_address(text: str) -> str:
    """The one spelling of an address, for keys (balances, payouts) and for lookups by an address typed in a URL.

    A bech32/bech32m address of a Bitcoin network (hrp bc, tb, bcrt) may be written all upper or all lower case and
    names the same script: it is keyed lowercase, as Bitcoin Core's validateaddress returns it. Base58 is
    case-sensitive (changing a letter's case makes another string, with a wrong checksum), so it is kept as given,
    and so is anything that is not a valid bech32 string of a Bitcoin network (a pool account name, a typo): the
    lookup then finds what was stored under exactly that text, if anything."""
    try:
        hrp, _, _ = bech32_decode(text)
    except AddressError:
        return text
    return text.lower() if hrp in {network.hrp for network in NETWORKS.values()} else text
