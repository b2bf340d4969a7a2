"""The Noise NX handshake and the encrypted frame stream, sans-IO: initiator and responder paired without a socket.

`spec_handshake` below recomputes the handshake straight from the spec's text (4.4-4.6), with its own hashing and
ChaCha20-Poly1305 calls and fixed keys, so the state machines are checked byte for byte against a literal reading
of the spec rather than only against each other. (Neither the spec nor SRI publishes handshake vectors; the
ElligatorSwift ECDH it relies on is checked against BIP324's vectors in test_sv2_crypto.py.)
"""
from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from gstratum.protocol.sv2 import codec, crypto
from gstratum.protocol.sv2.certificate import Certificate, ServerIdentity, sign_certificate, signed_digest
from gstratum.protocol.sv2.errors import (BadTag, CertificateError, CodecError, FrameError, FrameTooLarge,
                                          HandshakeError, NoiseError, Sv2Error)
from gstratum.protocol.sv2.noise import (ENCRYPTED_HEADER_SIZE, MAX_PLAINTEXT_CHUNK, RESPONDER_MESSAGE_SIZE,
                                         CipherState, NoiseInitiator, NoiseResponder, ciphertext_length)

NOW = 1_800_000_000
AUTHORITY = bytes.fromhex("11" * 32)
AUTHORITY_PUBLIC = crypto.xonly_public_key(AUTHORITY)


def fixed(byte: int) -> bytes:
    return bytes([byte]) * 32


@pytest.fixture(scope="module")
def identity():
    return ServerIdentity.create(AUTHORITY, NOW, validity=3600)


def handshake(identity, authority=AUTHORITY_PUBLIC, now=None, max_payload=1 << 20):
    initiator = NoiseInitiator(authority, now=now)
    responder = NoiseResponder(identity)
    answer = responder.receive(initiator.start())
    assert len(answer) == RESPONDER_MESSAGE_SIZE == 234
    assert initiator.receive(answer)
    assert initiator.done and responder.done
    return initiator.connection(max_payload), responder.connection(max_payload), initiator


# --- the handshake, from the spec's text ------------------------------------------------------------------------

def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def spec_hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp_key = hmac_hash(chaining_key, ikm)
    out1 = hmac_hash(temp_key, b"\x01")
    return out1, hmac_hash(temp_key, out1 + b"\x02")


def spec_nonce(n: int) -> bytes:
    return b"\x00" * 4 + n.to_bytes(8, "little")


def spec_handshake(initiator_e, initiator_e_pub, responder_e, responder_e_pub, static, static_pub, signature_message):
    """Act 2 as spec 4.5.1-4.5.2 describes it, step by step. Returns (message, k1, k2)."""
    h = sha256(b"Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256")         # 4.5.1: h = HASH(protocolName)
    ck = h                                                               # ck = h
    h = sha256(h)                                                        # h = HASH(h)
    h = sha256(h + initiator_e_pub)                                      # initiator: MixHash(e.public_key)
    h = sha256(h + b"")                                                  # EncryptAndHash(empty) with k empty
    out = responder_e_pub                                                # responder 2.: e.public_key
    h = sha256(h + responder_e_pub)                                      # 3.: MixHash
    ck, k = spec_hkdf(ck, crypto.ellswift_ecdh(responder_e, initiator_e_pub, responder_e_pub, initiator=False))
    ct = ChaCha20Poly1305(k).encrypt(spec_nonce(0), static_pub, h)       # 5.: EncryptAndHash(s.public_key)
    h = sha256(h + ct)
    out += ct
    ck, k = spec_hkdf(ck, crypto.ellswift_ecdh(static, initiator_e_pub, static_pub, initiator=False))
    ct = ChaCha20Poly1305(k).encrypt(spec_nonce(0), signature_message, h)   # 7.: new key, so n = 0 again
    out += ct
    k1, k2 = spec_hkdf(ck, b"")                                          # 9.: Split
    # The initiator's side computes the same ECDH results (its key first in the hash on both sides):
    assert crypto.ellswift_ecdh(initiator_e, initiator_e_pub, responder_e_pub, initiator=True) == \
        crypto.ellswift_ecdh(responder_e, initiator_e_pub, responder_e_pub, initiator=False)
    return out, k1, k2


def test_responder_answer_and_transport_keys_match_the_spec_text():
    initiator_e, responder_e, static = fixed(1), fixed(2), fixed(3)
    initiator_e_pub = crypto.ellswift_create(initiator_e, fixed(4))
    responder_e_pub = crypto.ellswift_create(responder_e, fixed(5))
    static_pub = crypto.ellswift_create(static, fixed(6))
    digest = signed_digest(0, NOW, NOW + 3600, crypto.xonly_public_key(static))
    certificate = Certificate(0, NOW, NOW + 3600, crypto.schnorr_sign(AUTHORITY, digest, fixed(7)))
    identity = ServerIdentity(static, static_pub, certificate)

    initiator = NoiseInitiator(AUTHORITY_PUBLIC, now=NOW, ephemeral_secret=initiator_e, ephemeral_aux=fixed(4))
    responder = NoiseResponder(identity, ephemeral_secret=responder_e, ephemeral_aux=fixed(5))
    first = initiator.start()
    assert first == initiator_e_pub
    answer = responder.receive(first)
    expected, k1, k2 = spec_handshake(initiator_e, initiator_e_pub, responder_e, responder_e_pub, static,
                                      static_pub, certificate.encode())
    assert answer == expected and len(answer) == 64 + 80 + 90
    assert initiator.receive(answer)
    assert initiator.certificate == certificate
    assert initiator.server_static_key == crypto.xonly_public_key(static)

    # Transport: initiator -> responder with k1, the other way with k2; header and payload take consecutive nonces.
    frame = codec.encode_frame(codec.SubmitSharesStandard(1, 2, 3, 4, 5, 6))
    client, server = initiator.connection(), responder.connection()
    first_wire = client.encrypt(frame)
    assert first_wire == (ChaCha20Poly1305(k1).encrypt(spec_nonce(0), frame[:6], None)
                          + ChaCha20Poly1305(k1).encrypt(spec_nonce(1), frame[6:], None))
    second_wire = client.encrypt(frame)
    assert second_wire[:22] == ChaCha20Poly1305(k1).encrypt(spec_nonce(2), frame[:6], None)
    reply = codec.encode_frame(codec.SubmitSharesSuccess(1, 2, 1, 100))
    assert server.encrypt(reply) == (ChaCha20Poly1305(k2).encrypt(spec_nonce(0), reply[:6], None)
                                     + ChaCha20Poly1305(k2).encrypt(spec_nonce(1), reply[6:], None))
    assert server.feed(first_wire + second_wire) == [codec.parse_frame(frame)] * 2


def test_initial_hash_is_the_constant_sri_and_the_firmware_check():
    constant = bytes([46, 180, 120, 129, 32, 142, 158, 238, 31, 102, 159, 103, 198, 110, 231, 14, 169, 234, 136, 9,
                      13, 80, 63, 232, 48, 220, 75, 200, 62, 41, 191, 16])
    assert sha256(b"Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256") == constant


# --- the handshake, between our two ends -------------------------------------------------------------------------

def test_handshake_then_frames_both_ways(identity):
    client, server, initiator = handshake(identity, now=NOW + 10)
    share = codec.SubmitSharesStandard(7, 1, 3, 0xDEADBEEF, NOW, 0x20000000)
    frames = server.feed(client.encrypt(codec.encode_frame(share)))
    assert [codec.decode(f) for f in frames] == [share]
    assert frames[0].channel_msg
    ok = codec.SubmitSharesSuccess(7, 1, 1, 1000)
    assert [codec.decode(f) for f in client.feed(server.encrypt(codec.encode_frame(ok)))] == [ok]
    assert initiator.certificate == identity.certificate


def test_handshake_bytes_may_arrive_in_pieces(identity):
    initiator = NoiseInitiator(AUTHORITY_PUBLIC)
    responder = NoiseResponder(identity)
    first = initiator.start()
    assert responder.receive(first[:10]) == b""
    assert responder.receive(first[10:63]) == b""
    answer = responder.receive(first[63:])
    assert not initiator.receive(answer[:1])
    assert not initiator.receive(answer[1:233])
    assert initiator.receive(answer[233:])


def test_a_payload_larger_than_one_chunk(identity):
    client, server, _ = handshake(identity)
    job = codec.NewExtendedMiningJob(9, 1, None, 0x20000000, True, tuple(bytes([i]) * 32 for i in range(30)),
                                     b"\x01" * 65535, b"\x02" * 65535)
    frame = codec.encode_frame(job)
    payload_length = len(frame) - 6
    assert payload_length > 2 * MAX_PLAINTEXT_CHUNK                     # three chunks
    wire = server.encrypt(frame)
    assert len(wire) == ENCRYPTED_HEADER_SIZE + payload_length + 3 * 16 == 22 + ciphertext_length(payload_length)
    received = []
    for start in range(0, len(wire), 7001):                             # in arbitrary pieces
        received += client.feed(wire[start:start + 7001])
    assert [codec.decode(f) for f in received] == [job]
    assert client.buffered == 0


def test_chunk_boundaries_are_exactly_65535_bytes_on_the_wire(identity):
    """A payload of exactly one full chunk (65519) takes one 65535-byte AEAD message; one byte more takes two."""
    client, server, _ = handshake(identity)
    for length, chunks in ((MAX_PLAINTEXT_CHUNK, 1), (MAX_PLAINTEXT_CHUNK + 1, 2), (0, 0), (1, 1)):
        frame = struct.pack("<HBHB", 0, 0x70, length & 0xFFFF, length >> 16) + b"\xaa" * length
        wire = server.encrypt(frame)
        assert len(wire) == 22 + length + 16 * chunks
        assert client.feed(wire) == [codec.Frame(0, 0x70, b"\xaa" * length)]


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_split_of_the_stream_gives_the_same_frames(cuts):
    identity = ServerIdentity.create(AUTHORITY, NOW)
    client, server, _ = handshake(identity)
    messages = [codec.SubmitSharesStandard(1, i, 2, i * 7, NOW, 0x20000000) for i in range(5)]
    messages.append(codec.SetupConnectionError(0, "x" * 200))
    wire = b"".join(client.encrypt(codec.encode_frame(m)) for m in messages)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    frames = []
    for a, b in zip(points, points[1:]):
        frames += server.feed(wire[a:b])
    assert [codec.decode(f) for f in frames] == messages


# --- refusals ------------------------------------------------------------------------------------------------------

def test_a_tampered_frame_byte_is_a_bad_tag_and_the_connection_stays_failed(identity):
    client, server, _ = handshake(identity)
    wire = bytearray(client.encrypt(codec.encode_frame(codec.SubmitSharesStandard(1, 2, 3, 4, 5, 6))))
    wire[30] ^= 0x01                                                    # inside the payload's ciphertext
    with pytest.raises(BadTag):
        server.feed(bytes(wire))
    with pytest.raises(NoiseError):
        server.feed(b"")


def test_a_tampered_header_is_a_bad_tag_before_any_payload_is_awaited(identity):
    client, server, _ = handshake(identity)
    wire = bytearray(client.encrypt(codec.encode_frame(codec.SubmitSharesStandard(1, 2, 3, 4, 5, 6))))
    wire[21] ^= 0x80                                                    # the header's MAC
    with pytest.raises(BadTag):
        server.feed(bytes(wire[:22]))


def test_replayed_frame_fails_because_the_nonce_moved_on(identity):
    client, server, _ = handshake(identity)
    wire = client.encrypt(codec.encode_frame(codec.SubmitSharesStandard(1, 2, 3, 4, 5, 6)))
    server.feed(wire)
    with pytest.raises(BadTag):
        server.feed(wire)


def test_garbage_after_the_handshake_is_a_bad_tag(identity):
    _, server, _ = handshake(identity)
    with pytest.raises(BadTag):
        server.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_an_oversized_frame_is_refused_from_its_header(identity):
    client, server, _ = handshake(identity, max_payload=100)
    big = codec.encode_frame(codec.SetupConnectionError(0, "e" * 200))
    wire = client.encrypt(big)
    with pytest.raises(FrameTooLarge, match="limit is 100"):
        server.feed(wire[:22])                                          # refused before the payload arrives


def test_frame_header_must_match_its_payload(identity):
    client, _, _ = handshake(identity)
    with pytest.raises(FrameError):
        client.encrypt(b"\x00\x00\x1a\x05\x00\x00abc")
    with pytest.raises(FrameError):
        client.encrypt(b"\x00")


def test_tampered_handshake_answer_is_refused(identity):
    for index in (70, 150, 233):                                        # static key, certificate, last MAC byte
        initiator = NoiseInitiator(AUTHORITY_PUBLIC)
        answer = bytearray(NoiseResponder(identity).receive(initiator.start()))
        answer[index] ^= 0x01
        with pytest.raises(HandshakeError):
            initiator.receive(bytes(answer))


def test_wrong_authority_key_refuses_the_certificate(identity):
    other = crypto.xonly_public_key(crypto.generate_secret())
    initiator = NoiseInitiator(other)
    with pytest.raises(CertificateError, match="signature"):
        initiator.receive(NoiseResponder(identity).receive(initiator.start()))


def test_certificate_for_another_static_key_is_refused():
    """A valid authority signature over a different server key must not vouch for this one."""
    static = crypto.generate_secret()
    stolen = sign_certificate(AUTHORITY, crypto.xonly_public_key(crypto.generate_secret()), NOW, NOW + 60)
    identity = ServerIdentity(static, crypto.ellswift_create(static), stolen)
    initiator = NoiseInitiator(AUTHORITY_PUBLIC)
    with pytest.raises(CertificateError):
        initiator.receive(NoiseResponder(identity).receive(initiator.start()))


def test_expired_certificate_is_refused_only_when_the_initiator_checks_times(identity):
    expired_at = identity.certificate.not_valid_after + 11              # past the 10 s leeway
    checking = NoiseInitiator(AUTHORITY_PUBLIC, now=expired_at)
    with pytest.raises(CertificateError, match="valid from"):
        checking.receive(NoiseResponder(identity).receive(checking.start()))
    like_the_firmware = NoiseInitiator(AUTHORITY_PUBLIC)                # signature only
    assert like_the_firmware.receive(NoiseResponder(identity).receive(like_the_firmware.start()))
    within_leeway = NoiseInitiator(AUTHORITY_PUBLIC, now=identity.certificate.not_valid_after + 10)
    assert within_leeway.receive(NoiseResponder(identity).receive(within_leeway.start()))
    too_early = NoiseInitiator(AUTHORITY_PUBLIC, now=identity.certificate.valid_from - 11)
    with pytest.raises(CertificateError):
        too_early.receive(NoiseResponder(identity).receive(too_early.start()))


def test_no_pinned_key_accepts_any_certificate():
    stranger = ServerIdentity.create(crypto.generate_secret(), NOW)
    initiator = NoiseInitiator(None)
    assert initiator.receive(NoiseResponder(stranger).receive(initiator.start()))


def test_responder_refuses_bytes_beyond_the_first_message(identity):
    initiator = NoiseInitiator(AUTHORITY_PUBLIC)
    with pytest.raises(HandshakeError, match="65 bytes"):
        NoiseResponder(identity).receive(initiator.start() + b"x")
    with pytest.raises(HandshakeError):
        NoiseResponder(identity).receive(b'{"id": 1, "method": "mining.subscribe", "params": ["cgminer/4.12.0"]}\n')


def test_initiator_refuses_a_long_answer_and_misuse(identity):
    initiator = NoiseInitiator(AUTHORITY_PUBLIC)
    with pytest.raises(HandshakeError):
        initiator.receive(b"x")                                         # before start()
    answer = NoiseResponder(identity).receive(initiator.start())
    with pytest.raises(HandshakeError):
        initiator.receive(answer + b"\x00")
    responder = NoiseResponder(identity)
    with pytest.raises(HandshakeError):
        responder.connection()
    responder.receive(NoiseInitiator(None).start())
    with pytest.raises(HandshakeError):
        responder.receive(b"more")


def test_cipher_state_keeps_its_nonce_after_a_failed_decryption():
    key = fixed(9)
    sender, receiver = CipherState(key), CipherState(key)
    good = sender.encrypt(b"hello")
    with pytest.raises(BadTag):
        receiver.decrypt(good[:-1] + bytes([good[-1] ^ 1]))
    assert receiver.nonce == 0
    assert receiver.decrypt(good) == b"hello" and receiver.nonce == 1


def test_nonce_exhaustion_is_an_error_not_a_wrap():
    cipher = CipherState(fixed(9))
    cipher.nonce = 2 ** 64 - 1
    with pytest.raises(NoiseError):
        cipher.encrypt(b"x")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_after_the_handshake_raise_only_sv2_errors(data):
    identity = ServerIdentity.create(AUTHORITY, NOW)
    _, server, _ = handshake(identity)
    try:
        frames = server.feed(data)
    except Sv2Error:
        return
    for frame in frames:                 # never reached with random bytes (the tag fails), but decode stays safe
        try:
            codec.decode(frame)
        except CodecError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_any_64_bytes_get_an_answer_from_the_responder(data):
    """Every 64-byte string is a valid ElligatorSwift encoding: a scanner's bytes cost one handshake, no crash."""
    identity = ServerIdentity.create(AUTHORITY, NOW)
    assert len(NoiseResponder(identity).receive(data)) == 234


# --- certificates ---------------------------------------------------------------------------------------------------

def test_certificate_layout_and_signature():
    static = crypto.generate_secret()
    certificate = sign_certificate(AUTHORITY, crypto.xonly_public_key(static), 100, 200)
    raw = certificate.encode()
    assert len(raw) == 74
    assert raw[:10] == struct.pack("<HII", 0, 100, 200)
    assert Certificate.decode(raw) == certificate
    message = sha256(struct.pack("<HII", 0, 100, 200) + crypto.xonly_public_key(static))
    assert crypto.schnorr_verify(AUTHORITY_PUBLIC, message, raw[10:])
    assert certificate.verify(crypto.xonly_public_key(static), AUTHORITY_PUBLIC)
    with pytest.raises(CertificateError):
        Certificate.decode(raw[:-1])


def test_identity_renewal_is_due_at_half_the_window():
    identity = ServerIdentity.create(AUTHORITY, NOW, validity=3600)
    assert identity.certificate.valid_from == NOW and identity.certificate.not_valid_after == NOW + 3600
    assert not identity.renewal_due(NOW + 1799)
    assert identity.renewal_due(NOW + 1800)
    renewed = ServerIdentity.create(AUTHORITY, NOW + 1800, validity=3600)
    assert renewed.static_secret != identity.static_secret
    assert crypto.ellswift_decode_x(renewed.static_encoding) == crypto.xonly_public_key(renewed.static_secret)
    with pytest.raises(ValueError):
        ServerIdentity.create(AUTHORITY, NOW, validity=0)
