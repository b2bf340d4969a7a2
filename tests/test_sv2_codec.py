"""The Stratum V2 codec: data types, frames and every message, against the spec's field tables and the bytes the
Bitaxe firmware's V2 client builds and parses (ESP-Miner components/stratum_v2/sv2_protocol.c, read by hand: the
hex below is written from its builders, field by field)."""
from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.codec import (MESSAGES, ErrorCode, Frame, SetupConnectionFlags, decode, encode_frame,
                                         parse_frame)
from gstratum.protocol.sv2.datatypes import (B0_16M, B0_255, BOOL, OPTION, SEQ0_64K, SEQ0_255, STR0_255, U24, U32,
                                             U256, codec_of, int_to_u256, u256_to_int)
from gstratum.protocol.sv2.errors import CodecError, Sv2Error, UnknownMessage

MAX_TARGET = b"\xff" * 32
FIRMWARE_HASHRATE = struct.unpack("<f", struct.pack("<f", 1e12))[0]    # the C float 1e12 the firmware sends


def le32(value: int) -> str:
    return struct.pack("<I", value).hex()


def string(text: str) -> str:
    raw = text.encode()
    return f"{len(raw):02x}" + raw.hex()


def roundtrip(message):
    frame = encode_frame(message)
    decoded = decode(parse_frame(frame))
    assert decoded == message
    return frame


# --- the spec's chapter 8 table: message type and channel_msg bit -------------------------------------------------

SPEC_TABLE = {
    0x00: (False, "SetupConnection"), 0x01: (False, "SetupConnection.Success"),
    0x02: (False, "SetupConnection.Error"), 0x03: (True, "ChannelEndpointChanged"), 0x04: (False, "Reconnect"),
    0x10: (False, "OpenStandardMiningChannel"), 0x11: (False, "OpenStandardMiningChannel.Success"),
    0x12: (False, "OpenMiningChannel.Error"), 0x13: (False, "OpenExtendedMiningChannel"),
    0x14: (False, "OpenExtendedMiningChannel.Success"), 0x15: (True, "NewMiningJob"), 0x16: (True, "UpdateChannel"),
    0x17: (True, "UpdateChannel.Error"), 0x18: (True, "CloseChannel"), 0x19: (True, "SetExtranoncePrefix"),
    0x1A: (True, "SubmitSharesStandard"), 0x1B: (True, "SubmitSharesExtended"), 0x1C: (True, "SubmitShares.Success"),
    0x1D: (True, "SubmitShares.Error"), 0x1F: (True, "NewExtendedMiningJob"), 0x20: (True, "SetNewPrevHash"),
    0x21: (True, "SetTarget"), 0x25: (False, "SetGroupChannel"),
}


def test_message_types_and_channel_bits_follow_the_spec_table():
    assert {t: (cls.CHANNEL_MSG, cls.NAME) for t, cls in MESSAGES.items()} == SPEC_TABLE


@pytest.mark.parametrize("msg_type", sorted(SPEC_TABLE))
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_the_header_carries_the_channel_bit_as_bytes_00_80(msg_type, data):
    cls = MESSAGES[msg_type]
    frame = encode_frame(data.draw(instances(cls)))
    assert frame[:3] == (b"\x00\x80" if cls.CHANNEL_MSG else b"\x00\x00") + bytes([msg_type])


@pytest.mark.parametrize("msg_type", sorted(t for t, cls in MESSAGES.items() if hasattr(cls, "frame")))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_a_fixed_size_message_framed_from_its_values_is_the_encoded_frame(msg_type, data):
    cls = MESSAGES[msg_type]
    message = data.draw(instances(cls))
    assert cls.frame(*(getattr(message, name) for name, _ in cls.FIELDS)) == encode_frame(message)


def test_the_hot_path_messages_have_a_one_pack_frame():
    assert hasattr(codec.SubmitSharesSuccess, "frame") and hasattr(codec.SubmitSharesStandard, "frame")
    with pytest.raises(codec.CodecError):
        codec.SubmitSharesSuccess.frame(1, 2, 3, -1)


# --- exact bytes --------------------------------------------------------------------------------------------------

def test_submit_shares_standard_as_the_firmware_builds_it():
    share = codec.SubmitSharesStandard(channel_id=1, sequence_number=2, job_id=3, nonce=0xDEADBEEF,
                                       ntime=0x66AABBCC, version=0x20000000)
    expected = "00801a180000" + le32(1) + le32(2) + le32(3) + le32(0xDEADBEEF) + le32(0x66AABBCC) + le32(0x20000000)
    assert roundtrip(share).hex() == expected


def test_submit_shares_extended_with_its_b0_32_extranonce():
    share = codec.SubmitSharesExtended(5, 6, 7, 8, 9, 0x3FFFE000, b"\xab\xcd")
    payload = le32(5) + le32(6) + le32(7) + le32(8) + le32(9) + le32(0x3FFFE000) + "02abcd"
    assert roundtrip(share).hex() == "00801b1b0000" + payload


def test_setup_connection_as_the_firmware_builds_it():
    setup = codec.SetupConnection(protocol=0, min_version=2, max_version=2,
                                  flags=SetupConnectionFlags.REQUIRES_STANDARD_JOBS, endpoint_host="pool.example",
                                  endpoint_port=3336, vendor="bitaxe", hardware_version="BM1370", firmware="",
                                  device_id="")
    payload = ("00" + "0200" + "0200" + le32(1) + string("pool.example") + struct.pack("<H", 3336).hex()
               + string("bitaxe") + string("BM1370") + "00" + "00")
    assert roundtrip(setup).hex() == "000000" + struct.pack("<I", len(payload) // 2)[:3].hex() + payload


def test_open_channels_as_the_firmware_builds_them():
    standard = codec.OpenStandardMiningChannel(1, "bc1qworker.bitaxe", FIRMWARE_HASHRATE, MAX_TARGET)
    payload = le32(1) + string("bc1qworker.bitaxe") + "a5d46853" + "ff" * 32
    assert roundtrip(standard).hex() == "000010" + f"{len(payload) // 2:02x}0000" + payload
    extended = codec.OpenExtendedMiningChannel(1, "bc1qworker.bitaxe", FIRMWARE_HASHRATE, MAX_TARGET, 2)
    payload += "0200"
    assert roundtrip(extended).hex() == "000013" + f"{len(payload) // 2:02x}0000" + payload


def test_answers_the_firmware_parses():
    """Offsets as sv2_parse_* read them: request_id, channel_id, target[32], (extranonce_size u16), B0_32 prefix,
    group_channel_id; SetupConnection.Success used_version u16 + flags u32."""
    target = int_to_u256(0xFFFF << 200)
    prefix = bytes(range(8))
    success = encode_frame(codec.OpenStandardMiningChannelSuccess(1, 42, target, prefix, 0))[6:]
    assert success == struct.pack("<II", 1, 42) + target + b"\x08" + prefix + struct.pack("<I", 0)
    extended = encode_frame(codec.OpenExtendedMiningChannelSuccess(1, 42, target, 4, prefix, 0))[6:]
    assert extended == struct.pack("<II", 1, 42) + target + struct.pack("<H", 4) + b"\x08" + prefix + bytes(4)
    assert encode_frame(codec.SetupConnectionSuccess(2, 0)).hex() == "000001060000" + "0200" + "00000000"
    ok = encode_frame(codec.SubmitSharesSuccess(42, 9, 3, 3000))
    assert ok.hex() == "00801c140000" + le32(42) + le32(9) + le32(3) + struct.pack("<Q", 3000).hex()
    error = encode_frame(codec.SubmitSharesError(42, 9, ErrorCode.STALE_SHARE))
    assert error.hex() == "00801d140000" + le32(42) + le32(9) + string("stale-share")


def test_jobs_with_and_without_min_ntime():
    root = bytes(range(32))
    future = encode_frame(codec.NewMiningJob(3, 7, None, 0x20000000, root))
    assert future.hex() == "008015" + "2d0000" + le32(3) + le32(7) + "00" + le32(0x20000000) + root.hex()
    active = encode_frame(codec.NewMiningJob(3, 8, 0x66000000, 0x20000000, root))
    assert active.hex() == "008015" + "310000" + le32(3) + le32(8) + "01" + le32(0x66000000) + le32(0x20000000) \
        + root.hex()
    job = codec.NewExtendedMiningJob(3, 9, 0x66000000, 0x20000000, True, (root, root[::-1]), b"\x01\x02", b"\x03")
    payload = (le32(3) + le32(9) + "01" + le32(0x66000000) + le32(0x20000000) + "01" + "02" + root.hex()
               + root[::-1].hex() + "0200" + "0102" + "0100" + "03")
    assert roundtrip(job).hex() == "00801f" + struct.pack("<I", len(payload) // 2)[:3].hex() + payload


def test_prev_hash_and_target():
    prev = bytes(range(32, 64))
    frame = roundtrip(codec.SetNewPrevHash(3, 9, prev, 0x66000000, 0x1703A30C))
    assert frame.hex() == "008020300000" + le32(3) + le32(9) + prev.hex() + le32(0x66000000) + le32(0x1703A30C)
    target = int_to_u256(1 << 224)
    assert roundtrip(codec.SetTarget(3, target)).hex() == "008021240000" + le32(3) + target.hex()
    assert u256_to_int(target) == 1 << 224


def test_a_payload_over_65535_bytes_uses_the_third_length_byte():
    job = codec.NewExtendedMiningJob(1, 1, None, 2, False, (), b"\x00" * 65535, b"\x00" * 10)
    frame = roundtrip(job)
    length = len(frame) - 6
    assert length > 0xFFFF and frame[3:6] == length.to_bytes(3, "little")


# --- every message round-trips ------------------------------------------------------------------------------------

STRATEGIES = {
    "U8": st.integers(0, 0xFF), "U16": st.integers(0, 0xFFFF), "U24": st.integers(0, 0xFFFFFF),
    "U32": st.integers(0, 0xFFFFFFFF), "U64": st.integers(0, 0xFFFFFFFFFFFFFFFF),
    "U256": st.binary(min_size=32, max_size=32), "BOOL": st.booleans(),
    "F32": st.floats(width=32, allow_nan=False), "B0_32": st.binary(max_size=32),
    "B0_255": st.binary(max_size=255), "B0_64K": st.binary(max_size=2000),
    "STR0_255": st.text(max_size=63),                       # at most 4 UTF-8 bytes a character: never over 255
    "SEQ0_255[U256]": st.lists(st.binary(min_size=32, max_size=32), max_size=30).map(tuple),
    "SEQ0_64K[U32]": st.lists(st.integers(0, 0xFFFFFFFF), max_size=100).map(tuple),
    "OPTION[U32]": st.none() | st.integers(0, 0xFFFFFFFF),
}


def instances(cls):
    return st.builds(cls, **{name: STRATEGIES[repr(field_codec)] for name, field_codec in cls.FIELDS})


@pytest.mark.parametrize("cls", list(MESSAGES.values()), ids=lambda c: c.NAME)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_message_round_trips_and_refuses_cut_or_padded_payloads(cls, data):
    message = data.draw(instances(cls))
    frame = roundtrip(message)
    payload = frame[6:]
    cut = data.draw(st.integers(0, len(payload) - 1)) if payload else None
    if cut is not None:
        with pytest.raises(CodecError):
            cls.decode(payload[:cut])
    with pytest.raises(CodecError):
        cls.decode(payload + b"\x00")


# --- refusals -------------------------------------------------------------------------------------------------------

@settings(max_examples=250, deadline=None)
@given(extension_type=st.sampled_from([0, 0x8000, 1, 0x8001]) | st.integers(0, 0xFFFF),
       msg_type=st.sampled_from(sorted(MESSAGES)) | st.integers(0, 0xFF), payload=st.binary(max_size=200))
def test_garbage_decodes_or_raises_only_codec_errors(extension_type, msg_type, payload):
    try:
        message = decode(Frame(extension_type, msg_type, payload))
    except Sv2Error as exc:
        assert isinstance(exc, CodecError), exc
    else:
        assert encode_frame(message)                        # what decodes re-encodes


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=60))
def test_parse_frame_raises_only_codec_errors(data):
    try:
        parse_frame(data)
    except Sv2Error as exc:
        assert isinstance(exc, CodecError)


@pytest.mark.parametrize("extension_type,msg_type", [(0, 0x1E), (0, 0x22), (0, 0x70), (0x0001, 0x00),
                                                     (0x8002, 0x1A), (0x4000, 0x10)])
def test_unknown_messages(extension_type, msg_type):
    with pytest.raises(UnknownMessage):
        decode(Frame(extension_type, msg_type, b""))


def test_decoding_ignores_the_channel_bit_like_sri():
    payload = encode_frame(codec.SubmitSharesStandard(1, 2, 3, 4, 5, 6))[6:]
    assert decode(Frame(0x0000, 0x1A, payload)) == decode(Frame(0x8000, 0x1A, payload))


@pytest.mark.parametrize("payload,reason", [
    (le32(1) + "21" + "00" * 33, "exceeds 32"),                               # B0_32 prefix 33
    (le32(1) + "05" + "0000", "announces 5 bytes"),                           # prefix longer than the rest
    (le32(1), "truncated"),                                                   # no prefix at all
])
def test_bad_length_prefixes(payload, reason):
    with pytest.raises(CodecError, match=reason):
        codec.SetExtranoncePrefix.decode(bytes.fromhex(payload))


def test_option_count_above_one_and_bad_utf8():
    with pytest.raises(CodecError):
        codec.NewMiningJob.decode(bytes.fromhex(le32(1) + le32(2) + "02" + le32(3) + le32(4) + le32(5) + "00" * 32))
    with pytest.raises(CodecError, match="UTF-8"):
        codec.CloseChannel.decode(bytes.fromhex(le32(1) + "02c328"))


def test_bool_reads_only_the_least_significant_bit():
    job = encode_frame(codec.NewExtendedMiningJob(1, 2, None, 3, False, (), b"", b""))[6:]
    flag = 4 + 4 + 1 + 4
    assert codec.NewExtendedMiningJob.decode(job[:flag] + b"\x02" + job[flag + 1:]).version_rolling_allowed is False
    assert codec.NewExtendedMiningJob.decode(job[:flag] + b"\xff" + job[flag + 1:]).version_rolling_allowed is True


@pytest.mark.parametrize("message", [
    codec.SubmitSharesStandard(1 << 32, 0, 0, 0, 0, 0),
    codec.SubmitSharesStandard(-1, 0, 0, 0, 0, 0),
    codec.SetTarget(1, b"\x00" * 31),
    codec.SetTarget(1, "f" * 32),
    codec.CloseChannel(1, "é" * 128),
    codec.SetExtranoncePrefix(1, b"\x00" * 33),
    codec.OpenStandardMiningChannel(1, "u", 1e39, MAX_TARGET),
    codec.NewExtendedMiningJob(1, 2, None, 3, True, (b"\x00" * 32,) * 256, b"", b""),
    codec.NewExtendedMiningJob(1, 2, None, 3, True, (b"\x00" * 31,), b"", b""),
    codec.NewMiningJob(1, 2, 1 << 32, 3, b"\x00" * 32),
    codec.SetupConnectionError(0, b"not text"),
])
def test_values_a_type_cannot_carry_are_codec_errors(message):
    with pytest.raises(CodecError):
        encode_frame(message)


def test_f32_is_ieee_single_precision():
    decoded = decode(parse_frame(encode_frame(codec.UpdateChannel(1, 1e12, MAX_TARGET))))
    assert decoded.nominal_hash_rate == FIRMWARE_HASHRATE != 1e12
    assert math.isinf(decode(parse_frame(encode_frame(codec.UpdateChannel(1, math.inf, MAX_TARGET))))
                      .nominal_hash_rate)


def test_parse_frame_checks_the_announced_length():
    frame = encode_frame(codec.SetTarget(1, MAX_TARGET))
    with pytest.raises(CodecError):
        parse_frame(frame + b"\x00")
    with pytest.raises(CodecError):
        parse_frame(frame[:-1])
    with pytest.raises(CodecError):
        parse_frame(frame[:5])


def test_error_codes_are_the_strings_on_the_wire():
    assert ErrorCode.DIFFICULTY_TOO_LOW == "difficulty-too-low"
    assert encode_frame(codec.OpenMiningChannelError(1, ErrorCode.UNKNOWN_USER)).endswith(b"\x0cunknown-user")


# --- data types no message here uses, and items that are not fixed-size -------------------------------------------

@pytest.mark.parametrize("annotation,strategy", [
    (U24, st.integers(0, 0xFFFFFF)),
    (B0_255, st.binary(max_size=255)),
    (B0_16M, st.binary(max_size=70000)),
    (SEQ0_255[U32], st.lists(st.integers(0, 0xFFFFFFFF), max_size=255).map(tuple)),
    (SEQ0_64K[U256], st.lists(st.binary(min_size=32, max_size=32), max_size=40).map(tuple)),
    (SEQ0_255[BOOL], st.lists(st.booleans(), max_size=40).map(tuple)),
    (SEQ0_255[STR0_255], st.lists(st.text(max_size=10), max_size=10).map(tuple)),
    (OPTION[U256], st.none() | st.binary(min_size=32, max_size=32)),
], ids=lambda a: repr(codec_of(a)) if not isinstance(a, st.SearchStrategy) else "")
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_other_data_types_round_trip_and_refuse_truncation(annotation, strategy, data):
    field_codec = codec_of(annotation)
    value = data.draw(strategy)
    raw = field_codec.write(value)
    assert field_codec.read(raw, 0) == (value, len(raw))
    assert field_codec.read(b"\x00" + raw, 1) == (value, len(raw) + 1)
    with pytest.raises(CodecError):
        field_codec.read(raw[:-1], 0)


def test_type_limits():
    with pytest.raises(CodecError):
        codec_of(U24).write(1 << 24)
    with pytest.raises(CodecError):
        codec_of(SEQ0_255[U32]).write(range(256))
    assert codec_of(B0_16M).write(b"ab") == b"\x02\x00\x00ab"
    assert codec_of(SEQ0_64K[U32]).write((1,)) == b"\x01\x00\x01\x00\x00\x00"
