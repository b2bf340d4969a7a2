"""Stratum V2 exceptions: one base class, so the connection glue catches `Sv2Error`, logs one line and closes.

Each subclass names what went wrong, because the log line (and the test) should say which: a peer that fails the
AEAD tag is not the same incident as one that sends an unknown message.
"""
from __future__ import annotations


class Sv2Error(Exception):
    """Anything the Stratum V2 layer refuses; the connection it came from is closed."""


class CodecError(Sv2Error):
    """A message payload that does not decode (truncated, trailing bytes, bad length prefix, invalid UTF-8, a value
    out of range), or a message that cannot be encoded. The only exception the codec raises."""


class UnknownMessage(CodecError):
    """A frame whose (extension_type, msg_type) this codec does not know."""


class FrameError(Sv2Error):
    """A frame the transport refuses before decoding its payload."""


class FrameTooLarge(FrameError):
    """A frame whose announced payload exceeds the receiver's limit (or a payload too long for the U24 length)."""


class NoiseError(Sv2Error):
    """The Noise layer failed: handshake or transport."""


class BadTag(NoiseError):
    """A ciphertext failed ChaCha20-Poly1305 authentication: tampered, truncated, or not from this peer."""


class HandshakeError(NoiseError):
    """The handshake could not complete (wrong size, bad key encoding, unexpected bytes)."""


class CertificateError(HandshakeError):
    """The responder's certificate is refused: its signature does not verify under the pinned authority key, or
    it is outside its validity window when the initiator checks times."""


class KeyFormatError(Sv2Error, ValueError):
    """An authority key (file content, base58check string) that cannot be read."""
