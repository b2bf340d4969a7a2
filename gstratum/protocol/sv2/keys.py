"""The pool's authority key: the file that holds its secret, and the encodings SRI and the firmware use.

- The file holds the 32-byte secret as 64 hex characters (what gstratum writes: created with mode 0600 when
  missing). A file holding SRI's format is read too: SRI's `authority_secret_key` is the base58check encoding of the
  bare 32-byte secret, with no version prefix (key_utils' `Secp256k1SecretKey`).
- The public key miners pin (`authority_pubkey` in SRI's configs and in the Bitaxe firmware, and the path of a
  `stratum2+tcp://host:port/KEY` URL) is the base58check encoding of a little-endian u16 version, currently 1 (bytes
  `01 00`), followed by the 32-byte x-only key (spec 4.7; key_utils' `Secp256k1PublicKey`; the firmware checks the
  version bytes and a decoded length of 38 = 2 + 32 + 4 checksum).
"""
from __future__ import annotations

import hashlib
import os
import struct

from gstratum.mining.address import BASE58_ALPHABET
from gstratum.protocol.sv2 import crypto
from gstratum.protocol.sv2.errors import KeyFormatError

AUTHORITY_KEY_VERSION = 1
_VERSION = struct.Struct("<H")
_BASE58_VALUES = {c: i for i, c in enumerate(BASE58_ALPHABET)}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
MAX_KEY_FILE_BYTES = 4096


def base58check_encode(payload: bytes) -> str:
    """Base58 of payload || first 4 bytes of SHA256d(payload); leading zero bytes become '1's."""
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(BASE58_ALPHABET[digit])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(digits))


def base58check_decode(text: str) -> bytes:
    """The payload of a base58check string; KeyFormatError on a bad character, a short string or a bad checksum."""
    if len(text) > 200:
        raise KeyFormatError("base58check string too long")
    number = 0
    for c in text:
        value = _BASE58_VALUES.get(c)
        if value is None:
            raise KeyFormatError(f"invalid base58 character {c!r}")
        number = number * 58 + value
    leading_zeros = len(text) - len(text.lstrip("1"))
    raw = bytes(leading_zeros) + number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(raw) < 4:
        raise KeyFormatError("too short for base58check")
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise KeyFormatError("wrong base58check checksum (mistyped?)")
    return payload


def encode_authority_public_key(public_key: bytes) -> str:
    """The string miners configure as `authority_pubkey`: base58check(01 00 || x-only key)."""
    if not crypto.is_valid_xonly(public_key):
        raise KeyFormatError("not an x-only secp256k1 public key")
    return base58check_encode(_VERSION.pack(AUTHORITY_KEY_VERSION) + public_key)


def decode_authority_public_key(text: str) -> bytes:
    """The 32-byte x-only key of an `authority_pubkey` string (version 1 only, as SRI and the firmware accept)."""
    payload = base58check_decode(text.strip())
    if len(payload) != 2 + crypto.XONLY_SIZE:
        raise KeyFormatError(f"an authority public key is 34 bytes before its checksum, not {len(payload)}")
    (version,) = _VERSION.unpack_from(payload)
    if version != AUTHORITY_KEY_VERSION:
        raise KeyFormatError(f"unknown authority public key version {version}")
    public_key = payload[2:]
    if not crypto.is_valid_xonly(public_key):
        raise KeyFormatError("not an x-only secp256k1 public key")
    return public_key


def authority_public_key_string(secret: bytes) -> str:
    """What `gstratum sv2-key` prints: the pinnable public key of an authority secret."""
    return encode_authority_public_key(crypto.xonly_public_key(secret))


def encode_sri_secret_key(secret: bytes) -> str:
    """A secret in SRI's `authority_secret_key` format (base58check of the bare 32 bytes), for operators moving a
    key to SRI tools."""
    if not crypto.is_valid_secret(secret):
        raise KeyFormatError("not a valid secp256k1 secret key")
    return base58check_encode(secret)


def parse_authority_secret(text: str) -> bytes:
    """The secret in a key file's text: 64 hex characters, or SRI's base58check secret. Surrounding whitespace and
    quotes (as copied from a TOML file) are ignored."""
    value = text.strip().strip('"\'').strip()
    if len(value) == 2 * crypto.SECRET_SIZE and set(value) <= _HEX_DIGITS:
        secret = bytes.fromhex(value)
    else:
        try:
            secret = base58check_decode(value)
        except KeyFormatError as exc:
            raise KeyFormatError(f"neither 64 hex characters nor an SRI base58check secret ({exc})") from None
        if len(secret) != crypto.SECRET_SIZE:
            raise KeyFormatError(f"an SRI secret key decodes to 32 bytes, not {len(secret)}")
    if not crypto.is_valid_secret(secret):
        raise KeyFormatError("not a valid secp256k1 secret key (zero or not below the group order)")
    return secret


def format_authority_secret(secret: bytes) -> str:
    """The file content gstratum writes: 64 lowercase hex characters and a newline."""
    if not crypto.is_valid_secret(secret):
        raise KeyFormatError("not a valid secp256k1 secret key")
    return secret.hex() + "\n"


def load_or_create_authority_key(path: str) -> tuple[bytes, bool]:
    """(secret, created): reads the key file, or creates it with a fresh secret, mode 0600, when it does not exist.
    Creation uses O_EXCL, so two processes starting together cannot both write a key: the loser reads the
    winner's. The one function here that touches the file system (called once at start-up, never per miner)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_authority_key(path), False
    secret = crypto.generate_secret()
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(format_authority_secret(secret))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return secret, True


def read_authority_key(path: str) -> bytes:
    """The secret in an existing key file; KeyFormatError (with the path) when its content is not a key."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise KeyFormatError(f"{path}: too large for a key file")
    try:
        return parse_authority_secret(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: not a key file (non-ASCII content)") from None
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None
