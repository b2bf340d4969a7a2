"""The server certificate (the spec's SIGNATURE_NOISE_MESSAGE) and the server identity it vouches for.

The certificate is `version u16 | valid_from u32 | not_valid_after u32 | signature[64]` (74 bytes, little-endian),
and the signature is BIP340 Schnorr by the authority key over the 32-byte message
`SHA256(version | valid_from | not_valid_after | server static x-only key)` (spec 4.5.3.1; SRI's
`SignatureNoiseMessage::sign_with_rng` and the Bitaxe firmware hash exactly these 10 + 32 bytes). The server's
static key travels ElligatorSwift-encoded in the handshake; the certificate covers its x-only form.

SRI signs a fresh certificate (and a fresh static key) for every connection. gstratum signs one per validity window
and reuses it (a Schnorr signature per miner saved on the handshake path); the caller renews it when
`ServerIdentity.renewal_due(now)` says so. Everything here takes the clock as an argument.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from gstratum.protocol.sv2 import crypto
from gstratum.protocol.sv2.errors import CertificateError

CERTIFICATE_VERSION = 0             # what SRI's responder writes; the spec does not fix a value
CERTIFICATE_SIZE = 74
DEFAULT_VALIDITY = 3600
TIME_LEEWAY = 10                    # seconds of clock skew an initiator forgives either side (SRI's TIME_LEEWAY)
_SIGNED = struct.Struct("<HII")
_MAX_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Certificate:
    """A SIGNATURE_NOISE_MESSAGE: validity window and the authority's signature."""

    version: int
    valid_from: int
    not_valid_after: int
    signature: bytes

    def encode(self) -> bytes:
        return _SIGNED.pack(self.version, self.valid_from, self.not_valid_after) + self.signature

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        if len(data) != CERTIFICATE_SIZE:
            raise CertificateError(f"a certificate is {CERTIFICATE_SIZE} bytes, not {len(data)}")
        version, valid_from, not_valid_after = _SIGNED.unpack_from(data)
        return cls(version, valid_from, not_valid_after, bytes(data[_SIGNED.size:]))

    def digest(self, server_public_key: bytes) -> bytes:
        """The 32-byte message the authority signs."""
        return signed_digest(self.version, self.valid_from, self.not_valid_after, server_public_key)

    def verify(self, server_public_key: bytes, authority_public_key: bytes) -> bool:
        """True when the signature is the authority's over this window and this server key (x-only)."""
        return crypto.schnorr_verify(authority_public_key, self.digest(server_public_key), self.signature)

    def valid_at(self, now: int, leeway: int = TIME_LEEWAY) -> bool:
        """Inside [valid_from, not_valid_after], forgiving `leeway` seconds at both ends (SRI's rule)."""
        return self.valid_from - leeway <= now <= self.not_valid_after + leeway


def signed_digest(version: int, valid_from: int, not_valid_after: int, server_public_key: bytes) -> bytes:
    if len(server_public_key) != crypto.XONLY_SIZE:
        raise ValueError("the server key in a certificate is its 32-byte x-only form")
    return hashlib.sha256(_SIGNED.pack(version, valid_from, not_valid_after) + server_public_key).digest()


def sign_certificate(authority_secret: bytes, server_public_key: bytes, valid_from: int, not_valid_after: int,
                     version: int = CERTIFICATE_VERSION) -> Certificate:
    """A certificate for the x-only `server_public_key`, signed by the authority."""
    if not 0 <= valid_from <= not_valid_after <= _MAX_U32:
        raise ValueError("a validity window is two u32 timestamps, valid_from <= not_valid_after")
    digest = signed_digest(version, valid_from, not_valid_after, server_public_key)
    return Certificate(version, valid_from, not_valid_after, crypto.schnorr_sign(authority_secret, digest))


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What the responder presents: its static key (secret and precomputed ElligatorSwift encoding) and the
    certificate the authority signed for it. Immutable; renewal builds a new one."""

    static_secret: bytes
    static_encoding: bytes
    certificate: Certificate

    @classmethod
    def create(cls, authority_secret: bytes, now: int, validity: int = DEFAULT_VALIDITY,
               static_secret: bytes | None = None) -> ServerIdentity:
        """A fresh static key (unless given) and a certificate valid from `now` for `validity` seconds."""
        if validity <= 0:
            raise ValueError("certificate validity must be positive")
        secret = static_secret if static_secret is not None else crypto.generate_secret()
        certificate = sign_certificate(authority_secret, crypto.xonly_public_key(secret), now,
                                       min(now + validity, _MAX_U32))
        return cls(secret, crypto.ellswift_create(secret), certificate)

    @property
    def validity(self) -> int:
        return self.certificate.not_valid_after - self.certificate.valid_from

    def renewal_due(self, now: int) -> bool:
        """Half the window has passed: renew, so every certificate a miner sees has at least half its validity
        left (room for a miner whose clock runs ahead)."""
        return now >= self.certificate.valid_from + self.validity // 2
