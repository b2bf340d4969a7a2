"""secp256k1 for Stratum V2, all in libsecp256k1 (through coincurve): ElligatorSwift keys, the BIP324 x-only ECDH,
BIP340 Schnorr signatures.

coincurve ships libsecp256k1 built with its ellswift, extrakeys and schnorrsig modules; its public API covers
Schnorr and x-only keys, and its cffi module `coincurve._libsecp256k1` exposes the ellswift functions, which we call
directly (the version is pinned in requirements.txt because that module is not a public API). No field arithmetic
is done in Python.
"""
from __future__ import annotations

import os

from coincurve import PrivateKey, PublicKeyXOnly
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

SECRET_SIZE = 32
ELLSWIFT_SIZE = 64
XONLY_SIZE = 32
SIGNATURE_SIZE = 64

_CTX = GLOBAL_CONTEXT.ctx       # randomized by coincurve at import; read-only use below


def is_valid_secret(secret: bytes) -> bool:
    """A 32-byte string that is a valid secp256k1 secret key (0 < d < n)."""
    return len(secret) == SECRET_SIZE and lib.secp256k1_ec_seckey_verify(_CTX, secret) == 1


def generate_secret() -> bytes:
    """A fresh random secret key (the loop almost never runs twice: an invalid draw has probability ~2^-128)."""
    while True:
        secret = os.urandom(SECRET_SIZE)
        if is_valid_secret(secret):
            return secret


def _check_secret(secret: bytes) -> None:
    if not is_valid_secret(secret):
        raise ValueError("not a valid secp256k1 secret key")


def ellswift_create(secret: bytes, aux: bytes | None = None) -> bytes:
    """The 64-byte ElligatorSwift encoding of secret·G (BIP324 `ellswift_create`). `aux` (32 bytes) picks one of
    the many encodings; random by default so the bytes on the wire look uniformly random."""
    _check_secret(secret)
    out = ffi.new("unsigned char[64]")
    if not lib.secp256k1_ellswift_create(_CTX, out, secret, aux if aux is not None else os.urandom(32)):
        raise ValueError("ellswift_create failed")
    return bytes(out)


def ellswift_decode_x(encoding: bytes) -> bytes:
    """The 32-byte x coordinate an ElligatorSwift encoding stands for (every 64-byte string decodes to a point)."""
    if len(encoding) != ELLSWIFT_SIZE:
        raise ValueError("an ElligatorSwift encoding is 64 bytes")
    pubkey = ffi.new("secp256k1_pubkey *")
    lib.secp256k1_ellswift_decode(_CTX, pubkey, encoding)
    out = ffi.new("unsigned char[33]")
    size = ffi.new("size_t *", 33)
    lib.secp256k1_ec_pubkey_serialize(_CTX, out, size, pubkey, lib.SECP256K1_EC_COMPRESSED)
    return bytes(out)[1:]


def ellswift_ecdh(secret: bytes, initiator_encoding: bytes, responder_encoding: bytes, initiator: bool) -> bytes:
    """BIP324's `v2_ecdh`: SHA256 tagged "bip324_ellswift_xonly_ecdh" over initiator's encoding, responder's
    encoding and the shared x. The initiator's key always comes first, whichever side computes it; `initiator`
    says which of the two encodings belongs to `secret`."""
    if len(initiator_encoding) != ELLSWIFT_SIZE or len(responder_encoding) != ELLSWIFT_SIZE:
        raise ValueError("an ElligatorSwift encoding is 64 bytes")
    out = ffi.new("unsigned char[32]")
    party = 0 if initiator else 1
    if not lib.secp256k1_ellswift_xdh(_CTX, out, initiator_encoding, responder_encoding, secret, party,
                                      lib.secp256k1_ellswift_xdh_hash_function_bip324, ffi.NULL):
        raise ValueError("ellswift ECDH failed (invalid secret key)")
    return bytes(out)


def xonly_public_key(secret: bytes) -> bytes:
    """The BIP340 x-only public key (32 bytes) of a secret key: the x of secret·G, whatever the parity of y."""
    _check_secret(secret)
    return PrivateKey(secret).public_key_xonly.format()


def schnorr_sign(secret: bytes, digest: bytes, aux: bytes | None = None) -> bytes:
    """A BIP340 signature (64 bytes) of a 32-byte message with `secret` (libsecp256k1 negates the key when its
    point has an odd y, as BIP340 requires, so no key grinding is needed)."""
    _check_secret(secret)
    return PrivateKey(secret).sign_schnorr(digest, aux if aux is not None else os.urandom(32))


def schnorr_verify(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid BIP340 signature of the 32-byte `digest` under x-only `public_key`."""
    if len(public_key) != XONLY_SIZE or len(signature) != SIGNATURE_SIZE or len(digest) != 32:
        return False
    try:
        key = PublicKeyXOnly(public_key)
    except ValueError:
        return False            # not the x of a curve point
    return bool(key.verify(signature, digest))


def is_valid_xonly(public_key: bytes) -> bool:
    """A 32-byte string that is the x coordinate of a secp256k1 point."""
    if len(public_key) != XONLY_SIZE:
        return False
    try:
        PublicKeyXOnly(public_key)
    except ValueError:
        return False
    return True
