"""The Stratum V2 Noise transport, sans-IO: the `Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256` handshake as two
state machines, then encrypted frames.

Spec: sv2-spec "4 Protocol Security". Where the spec's text and the implementations that interoperate differ, this
follows the implementations (SRI's noise_sv2 and the Bitaxe firmware's sv2_noise.c agree with each other):

- The responder's answer is 234 bytes: 64 (ephemeral key, plain) + 80 (static key, 64 + MAC) + 90 (certificate,
  74 + MAC). The spec's table says 170 (it predates the 64-byte ElligatorSwift encodings); its step-by-step text
  (64 + 80 + 90) agrees with the implementations.
- ECDH is BIP324's `v2_ecdh`: the tagged hash covers the initiator's ElligatorSwift encoding first, then the
  responder's, on both sides (spec 4.4.2 says so too; libsecp256k1's `ellswift_xdh` with party 0/1).
- The certificate's validity times are checked only if the initiator wants to (`now=`); the firmware checks only
  the signature, and only when the operator pinned an authority key.

Frames after the handshake (spec 4.6): the 6-byte header is one AEAD message (22 bytes on the wire), the payload
follows as AEAD messages of at most 65535 bytes each (65519 plaintext + 16 MAC); an empty payload has none. Every
AEAD message consumes one nonce of its direction's cipher state: n is encoded as 4 zero bytes and n as a 64-bit
little-endian integer. The header's msg_length is the plaintext payload length.

Usage, pool side (one `ServerIdentity` shared by all connections; see certificate.py):

    responder = NoiseResponder(identity)
    answer = responder.receive(data)           # b"" until the initiator's 64 bytes are in, then 234 bytes to send
    connection = responder.connection(max_payload=16384)   # once responder.done
    frames = connection.feed(data)              # [Frame(extension_type, msg_type, payload), ...]
    wire = connection.encrypt(codec.encode_frame(message))
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gstratum.protocol.sv2 import crypto
from gstratum.protocol.sv2.certificate import CERTIFICATE_SIZE, TIME_LEEWAY, Certificate, ServerIdentity
from gstratum.protocol.sv2.codec import FRAME_HEADER, FRAME_HEADER_SIZE, MAX_PAYLOAD_SIZE, Frame
from gstratum.protocol.sv2.errors import (BadTag, CertificateError, FrameError, FrameTooLarge, HandshakeError,
                                          NoiseError, Sv2Error)

PROTOCOL_NAME = b"Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256"
MAC_SIZE = 16
INITIATOR_MESSAGE_SIZE = crypto.ELLSWIFT_SIZE                                   # 64
RESPONDER_MESSAGE_SIZE = (crypto.ELLSWIFT_SIZE + (crypto.ELLSWIFT_SIZE + MAC_SIZE)
                          + (CERTIFICATE_SIZE + MAC_SIZE))                      # 234
MAX_CIPHERTEXT_CHUNK = 65535
MAX_PLAINTEXT_CHUNK = MAX_CIPHERTEXT_CHUNK - MAC_SIZE                           # 65519
ENCRYPTED_HEADER_SIZE = FRAME_HEADER_SIZE + MAC_SIZE                            # 22
DEFAULT_MAX_PAYLOAD = 16 * 1024     # what a miner may send us: its largest message (SetupConnection) is < 1.3 KiB
_MAX_NONCE = 2 ** 64 - 1            # Noise reserves this value
_NONCE = struct.Struct("<4xQ").pack
_unpack_header = FRAME_HEADER.unpack
_new_tuple = tuple.__new__          # builds a Frame without NamedTuple's Python-level __new__ (hot path)

_CK0 = hashlib.sha256(PROTOCOL_NAME).digest()          # ck = HASH(protocolName) (the name exceeds 32 bytes)
_H0 = hashlib.sha256(_CK0).digest()                    # h = HASH(h): the spec's step 3 (an empty prologue)


def hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (RFC 5869 with HMAC-SHA256, empty info)."""
    temp_key = hmac.digest(chaining_key, input_key_material, "sha256")
    output1 = hmac.digest(temp_key, b"\x01", "sha256")
    return output1, hmac.digest(temp_key, output1 + b"\x02", "sha256")


def ciphertext_length(payload_length: int) -> int:
    """Bytes on the wire for a payload of this plaintext length: 16 bytes of MAC per started 65519-byte chunk."""
    chunks = -(-payload_length // MAX_PLAINTEXT_CHUNK)
    return payload_length + chunks * MAC_SIZE


class CipherState:
    """One direction's key and nonce counter (spec 4.4.1). A failed decryption leaves the nonce unchanged."""

    __slots__ = ("_aead", "nonce")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.nonce = 0

    def encrypt(self, plaintext: bytes, ad: bytes | None = None) -> bytes:
        n = self.nonce
        if n >= _MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        self.nonce = n + 1
        return self._aead.encrypt(_NONCE(n), plaintext, ad)

    def decrypt(self, ciphertext: bytes, ad: bytes | None = None) -> bytes:
        n = self.nonce
        if n >= _MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        try:
            plaintext = self._aead.decrypt(_NONCE(n), ciphertext, ad)
        except InvalidTag:
            raise BadTag(f"AEAD tag check failed (nonce {n}, {len(ciphertext)} bytes)") from None
        self.nonce = n + 1
        return plaintext


class _SymmetricState:
    """h, ck and the handshake cipher (spec 4.4.2: MixHash, MixKey, EncryptAndHash, DecryptAndHash, Split)."""

    __slots__ = ("h", "ck", "cipher")

    def __init__(self) -> None:
        self.h = _H0
        self.ck = _CK0
        self.cipher: CipherState | None = None

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf2(self.ck, input_key_material)
        self.cipher = CipherState(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(plaintext, self.h) if self.cipher else plaintext
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(ciphertext, self.h) if self.cipher else ciphertext
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator→responder, responder→initiator)."""
        k1, k2 = hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


class NoiseInitiator:
    """The miner side: `start()` gives the 64 bytes to send; `receive()` takes the responder's answer (in any
    pieces) and returns True once the handshake is complete.

    `authority_public_key` (x-only, 32 bytes) pins the pool: the certificate's signature must verify under it.
    None skips authentication, as a miner with no key configured does. `now` (unix seconds) also checks the
    certificate's validity window, with `leeway` seconds of skew; None skips the times (the firmware's choice)."""

    __slots__ = ("_authority", "_now", "_leeway", "_state", "_e_secret", "_e_encoding", "_buffer", "_ciphers",
                 "certificate", "server_static_key")

    def __init__(self, authority_public_key: bytes | None, *, now: int | None = None, leeway: int = TIME_LEEWAY,
                 ephemeral_secret: bytes | None = None, ephemeral_aux: bytes | None = None) -> None:
        if authority_public_key is not None and not crypto.is_valid_xonly(authority_public_key):
            raise ValueError("the authority public key is a 32-byte x-only key")
        self._authority = authority_public_key
        self._now = now
        self._leeway = leeway
        self._state = _SymmetricState()
        self._e_secret = ephemeral_secret if ephemeral_secret is not None else crypto.generate_secret()
        self._e_encoding = crypto.ellswift_create(self._e_secret, ephemeral_aux)
        self._buffer = b""
        self._ciphers: tuple[CipherState, CipherState] | None = None
        self.certificate: Certificate | None = None
        self.server_static_key: bytes | None = None      # x-only, once received

    @property
    def done(self) -> bool:
        return self._ciphers is not None

    def start(self) -> bytes:
        """Act 1 (`-> e`): the 64-byte ElligatorSwift encoding of the ephemeral key."""
        if self._state.h != _H0:
            raise HandshakeError("start() already called")
        self._state.mix_hash(self._e_encoding)
        self._state.encrypt_and_hash(b"")          # no key yet: MixHash of an empty payload
        return self._e_encoding

    def receive(self, data: bytes) -> bool:
        """Act 2 (`<- e, ee, s, es, SIGNATURE_NOISE_MESSAGE`) and server authentication."""
        if self._ciphers is not None:
            raise HandshakeError("handshake already complete: feed the connection instead")
        if self._state.h == _H0:
            raise HandshakeError("receive() before start()")
        self._buffer += data
        if len(self._buffer) < RESPONDER_MESSAGE_SIZE:
            return False
        if len(self._buffer) > RESPONDER_MESSAGE_SIZE:
            raise HandshakeError(f"the responder sent {len(self._buffer)} bytes, more than its "
                                 f"{RESPONDER_MESSAGE_SIZE}-byte answer, before the handshake completed")
        message, self._buffer = self._buffer, b""
        state = self._state
        re = message[:64]
        state.mix_hash(re)
        state.mix_key(crypto.ellswift_ecdh(self._e_secret, self._e_encoding, re, initiator=True))
        try:
            rs = state.decrypt_and_hash(message[64:144])
        except BadTag:
            raise HandshakeError("the responder's static key fails authentication") from None
        state.mix_key(crypto.ellswift_ecdh(self._e_secret, self._e_encoding, rs, initiator=True))
        try:
            certificate = Certificate.decode(state.decrypt_and_hash(message[144:]))
        except BadTag:
            raise HandshakeError("the responder's certificate fails authentication") from None
        server_key = crypto.ellswift_decode_x(rs)
        if self._authority is not None and not certificate.verify(server_key, self._authority):
            raise CertificateError("the certificate's signature does not verify under the pinned authority key")
        if self._now is not None and not certificate.valid_at(self._now, self._leeway):
            raise CertificateError(f"the certificate is valid from {certificate.valid_from} to "
                                   f"{certificate.not_valid_after}, not at {self._now}")
        self.certificate = certificate
        self.server_static_key = server_key
        self._ciphers = state.split()
        self._e_secret = b""
        return True

    def connection(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> NoiseConnection:
        if self._ciphers is None:
            raise HandshakeError("handshake not complete")
        send, receive = self._ciphers
        return NoiseConnection(send, receive, max_payload)


class NoiseResponder:
    """The pool side, one per connection: `receive()` returns b"" until the initiator's 64 bytes are in, then the
    234-byte answer (once); `done` is then True and `connection()` gives the transport. Costs two ECDHs and one
    ElligatorSwift key generation per connection; the certificate is `identity`'s, signed once per window."""

    __slots__ = ("_identity", "_state", "_e_secret", "_e_aux", "_buffer", "_ciphers")

    def __init__(self, identity: ServerIdentity, *, ephemeral_secret: bytes | None = None,
                 ephemeral_aux: bytes | None = None) -> None:
        self._identity = identity
        self._state = _SymmetricState()
        self._e_secret = ephemeral_secret
        self._e_aux = ephemeral_aux
        self._buffer = b""
        self._ciphers: tuple[CipherState, CipherState] | None = None

    @property
    def done(self) -> bool:
        return self._ciphers is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def receive(self, data: bytes) -> bytes:
        if self._ciphers is not None:
            raise HandshakeError("handshake already complete: feed the connection instead")
        self._buffer += data
        if len(self._buffer) < INITIATOR_MESSAGE_SIZE:
            return b""
        if len(self._buffer) > INITIATOR_MESSAGE_SIZE:
            raise HandshakeError(f"the initiator sent {len(self._buffer)} bytes before our answer; its first "
                                 f"message is {INITIATOR_MESSAGE_SIZE} bytes (not a Stratum V2 Noise client?)")
        re, self._buffer = self._buffer, b""
        identity = self._identity
        state = self._state
        state.mix_hash(re)
        state.decrypt_and_hash(b"")                # no key yet: MixHash of the empty payload
        e_secret = self._e_secret if self._e_secret is not None else crypto.generate_secret()
        e_encoding = crypto.ellswift_create(e_secret, self._e_aux)
        state.mix_hash(e_encoding)
        state.mix_key(crypto.ellswift_ecdh(e_secret, re, e_encoding, initiator=False))
        encrypted_static = state.encrypt_and_hash(identity.static_encoding)
        state.mix_key(crypto.ellswift_ecdh(identity.static_secret, re, identity.static_encoding, initiator=False))
        encrypted_certificate = state.encrypt_and_hash(identity.certificate.encode())
        initiator_to_responder, responder_to_initiator = state.split()
        self._ciphers = (responder_to_initiator, initiator_to_responder)
        self._e_secret = None
        return e_encoding + encrypted_static + encrypted_certificate

    def connection(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> NoiseConnection:
        if self._ciphers is None:
            raise HandshakeError("handshake not complete")
        send, receive = self._ciphers
        return NoiseConnection(send, receive, max_payload)


class NoiseConnection:
    """The encrypted frame stream after the handshake: `feed(bytes)` returns the complete frames; `encrypt(frame)`
    turns a plaintext frame (6-byte header + payload, as `codec.encode_frame` makes it) into wire bytes.

    A frame whose header announces more than `max_payload` bytes raises FrameTooLarge as soon as its header is
    decrypted, so at most one header and `max_payload` bytes (plus MACs) are ever buffered. Any error (BadTag,
    FrameTooLarge) leaves the connection failed: the caller logs and closes; frames decoded earlier in the same
    `feed` call are dropped with it."""

    __slots__ = ("_send", "_recv", "max_payload", "_buffer", "_pending", "_failed")

    def __init__(self, send: CipherState, receive: CipherState, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD_SIZE:
            raise ValueError(f"max_payload must be within 0..{MAX_PAYLOAD_SIZE}")
        self._send = send
        self._recv = receive
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._pending: tuple[int, int, int] | None = None    # a decrypted header awaiting its payload
        self._failed = False

    @property
    def buffered(self) -> int:
        """Received bytes held for an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """The complete frames in the bytes received so far (every share goes through here: the AEAD is called
        directly, the nonce kept in a local and stored once, rather than through CipherState per message)."""
        if self._failed:
            raise NoiseError("the connection already failed")
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data
        size = len(buf)
        pos = 0
        frames = []
        cipher = self._recv
        decrypt = cipher._aead.decrypt
        nonce = cipher.nonce
        pending = self._pending
        try:
            while True:
                if pending is None:
                    if size - pos < ENCRYPTED_HEADER_SIZE:
                        break
                    if nonce >= _MAX_NONCE:
                        raise NoiseError("nonce space exhausted")
                    extension_type, msg_type, length_low, length_high = _unpack_header(
                        decrypt(_NONCE(nonce), buf[pos:pos + ENCRYPTED_HEADER_SIZE], None))
                    nonce += 1
                    pos += ENCRYPTED_HEADER_SIZE
                    length = length_low | length_high << 16
                    if length > self.max_payload:
                        raise FrameTooLarge(f"frame (extension 0x{extension_type:04x}, type 0x{msg_type:02x}) "
                                            f"announces {length} payload bytes; the limit is {self.max_payload}")
                    wire_length = length + MAC_SIZE if 0 < length <= MAX_PLAINTEXT_CHUNK else ciphertext_length(length)
                else:
                    extension_type, msg_type, wire_length = pending
                    pending = None
                if size - pos < wire_length:
                    pending = (extension_type, msg_type, wire_length)
                    break
                if wire_length <= MAX_CIPHERTEXT_CHUNK:
                    if wire_length:
                        if nonce >= _MAX_NONCE:
                            raise NoiseError("nonce space exhausted")
                        payload = decrypt(_NONCE(nonce), buf[pos:pos + wire_length], None)
                        nonce += 1
                    else:
                        payload = b""
                else:
                    end = pos + wire_length
                    chunks = []
                    for start in range(pos, end, MAX_CIPHERTEXT_CHUNK):
                        if nonce >= _MAX_NONCE:
                            raise NoiseError("nonce space exhausted")
                        chunks.append(decrypt(_NONCE(nonce), buf[start:min(start + MAX_CIPHERTEXT_CHUNK, end)], None))
                        nonce += 1
                    payload = b"".join(chunks)
                pos += wire_length
                frames.append(_new_tuple(Frame, (extension_type, msg_type, payload)))
        except InvalidTag:
            self._fail()
            raise BadTag(f"AEAD tag check failed (nonce {nonce}, at byte {pos} of {size})") from None
        except Sv2Error:
            self._fail()
            raise
        cipher.nonce = nonce
        self._pending = pending
        if buf is self._buffer:
            del buf[:pos]
        elif pos < size:
            self._buffer = bytearray(buf[pos:])
        return frames

    def _fail(self) -> None:
        self._failed = True
        self._buffer = bytearray()

    def encrypt(self, frame: bytes) -> bytes:
        """Wire bytes for one plaintext frame: the encrypted header, then the payload in 65519-byte chunks."""
        size = len(frame)
        if size < FRAME_HEADER_SIZE:
            raise FrameError("a frame starts with a 6-byte header")
        _, _, length_low, length_high = FRAME_HEADER.unpack_from(frame)
        length = size - FRAME_HEADER_SIZE
        if length_low | length_high << 16 != length:
            raise FrameError(f"header says {length_low | length_high << 16} payload bytes, frame carries {length}")
        cipher = self._send
        if length and length <= MAX_PLAINTEXT_CHUNK:      # nearly every frame: header and payload, two nonces
            nonce = cipher.nonce
            if nonce >= _MAX_NONCE - 1:
                raise NoiseError("nonce space exhausted")
            cipher.nonce = nonce + 2
            encrypt = cipher._aead.encrypt
            return (encrypt(_NONCE(nonce), frame[:FRAME_HEADER_SIZE], None)
                    + encrypt(_NONCE(nonce + 1), frame[FRAME_HEADER_SIZE:], None))
        encrypt = cipher.encrypt
        if length == 0:
            return encrypt(frame)
        parts = [encrypt(frame[:FRAME_HEADER_SIZE])]
        for start in range(FRAME_HEADER_SIZE, size, MAX_PLAINTEXT_CHUNK):
            parts.append(encrypt(frame[start:start + MAX_PLAINTEXT_CHUNK]))
        return b"".join(parts)
