"""Stratum V2 frames and messages (Common and Mining protocols), sans-IO.

A frame (spec 3.2) is `extension_type U16 | msg_type U8 | msg_length U24 | payload`. Bit 0x8000 of extension_type
is `channel_msg` (on the wire: `00 80` for a core channel message); when set, the payload starts with the U32
channel_id. Every message here is a core message (extension_type 0); its channel_msg bit follows the spec's table
(chapter 8, the same as SRI's CHANNEL_BIT_* constants). Decoding ignores the bit, as the spec's extension lookup
and SRI's parser do; encoding always sets it as the table says.

Messages are dataclasses whose annotations are the spec's field tables (datatypes.py). `encode_frame(message)`
gives the plaintext frame; `decode(frame)` gives the message and raises nothing but CodecError (UnknownMessage
for a type this codec does not know). A message whose fields are all fixed-size decodes with a single
`struct.unpack` (SubmitSharesStandard, SubmitShares.Success, SetTarget, ...).
"""
from __future__ import annotations

import enum
import struct
import typing
from dataclasses import dataclass
from operator import attrgetter
from typing import ClassVar, NamedTuple

from gstratum.protocol.sv2.datatypes import (B0_32, B0_64K, BOOL, F32, OPTION, SEQ0_64K, SEQ0_255, STR0_255, U8,
                                             U16, U32, U64, U256, FieldCodec, codec_of)
from gstratum.protocol.sv2.errors import CodecError, UnknownMessage

FRAME_HEADER = struct.Struct("<HBHB")      # extension_type, msg_type, msg_length (low 16 bits, high 8 bits)
FRAME_HEADER_SIZE = FRAME_HEADER.size
CHANNEL_MSG = 0x8000
MAX_PAYLOAD_SIZE = 0xFFFFFF                 # msg_length is a U24
PROTOCOL_VERSION = 2                        # SetupConnection min/max_version: "currently must be 2"

# Limits of the Bitaxe firmware's V2 client (ESP-Miner components/stratum_v2): frames whose payload exceeds its
# 8,192-byte receive buffer, and NewExtendedMiningJob with more than 20 merkle path entries, break it.
BITAXE_MAX_PAYLOAD = 8192
BITAXE_MAX_MERKLE_PATH = 20


class Protocol(enum.IntEnum):
    """SetupConnection.protocol."""

    MINING = 0
    JOB_DECLARATION = 1
    TEMPLATE_DISTRIBUTION = 2


class SetupConnectionFlags(enum.IntFlag):
    """Mining protocol flags in SetupConnection.flags and SetupConnection.Error.flags (spec 5.3.1)."""

    REQUIRES_STANDARD_JOBS = 1 << 0
    REQUIRES_WORK_SELECTION = 1 << 1
    REQUIRES_VERSION_ROLLING = 1 << 2


class SetupConnectionSuccessFlags(enum.IntFlag):
    """Mining protocol flags in SetupConnection.Success.flags (spec 5.3.1)."""

    REQUIRES_FIXED_VERSION = 1 << 0
    REQUIRES_EXTENDED_CHANNELS = 1 << 1


class ErrorCode(enum.StrEnum):
    """error_code strings. The spec listed these until May 2026 (its commit "remove all error code suggestions"
    left the choice to implementations); SRI's constants use the same strings, plus a few of its own marked SRI.
    The spec's old section 3.5 also said `too-low-difficulty`, its own SubmitShares.Error table and SRI say
    `difficulty-too-low`: we send the latter."""

    # SetupConnection.Error
    UNSUPPORTED_FEATURE_FLAGS = "unsupported-feature-flags"
    UNSUPPORTED_PROTOCOL = "unsupported-protocol"
    PROTOCOL_VERSION_MISMATCH = "protocol-version-mismatch"
    # OpenMiningChannel.Error
    UNKNOWN_USER = "unknown-user"
    MAX_TARGET_OUT_OF_RANGE = "max-target-out-of-range"
    INVALID_USER_IDENTITY = "invalid-user-identity"                        # SRI
    INVALID_NOMINAL_HASHRATE = "invalid-nominal-hashrate"                  # SRI (also UpdateChannel.Error)
    MIN_EXTRANONCE_SIZE_TOO_LARGE = "min-extranonce-size-too-large"        # SRI
    STANDARD_CHANNELS_NOT_SUPPORTED = "standard-channels-not-supported-for-custom-work"                # SRI
    EXTENDED_CHANNELS_NOT_SUPPORTED = "extended-channels-not-supported-for-standard-jobs"              # SRI
    # UpdateChannel.Error, SubmitShares.Error
    INVALID_CHANNEL_ID = "invalid-channel-id"
    # SubmitShares.Error
    STALE_SHARE = "stale-share"
    DIFFICULTY_TOO_LOW = "difficulty-too-low"
    INVALID_JOB_ID = "invalid-job-id"
    DUPLICATE_SHARE = "duplicate-share"                                    # SRI
    BAD_EXTRANONCE_SIZE = "bad-extranonce-size"                            # SRI
    VERSION_ROLLING_NOT_ALLOWED = "version-rolling-not-allowed"            # SRI
    INVALID_NON_ROLLABLE_VERSION_BIT = "invalid-non-rollable-version-bit"  # SRI
    INVALID_SHARE = "invalid-share"                                        # SRI


class Frame(NamedTuple):
    """One plaintext frame: its header fields and its payload."""

    extension_type: int
    msg_type: int
    payload: bytes

    @property
    def channel_msg(self) -> bool:
        return bool(self.extension_type & CHANNEL_MSG)


class Message:
    """Base of every message: `encode()` gives the payload, `decode(payload)` the message (CodecError otherwise).
    Subclasses are made by `@message(...)`; their FIELDS are (name, FieldCodec) pairs in wire order. A message of
    fixed-size fields only also has `frame(*values)`: its whole plaintext frame in one struct pack."""

    __slots__ = ()
    MSG_TYPE: ClassVar[int]
    CHANNEL_MSG: ClassVar[bool]
    NAME: ClassVar[str]                     # the spec's name, e.g. "SubmitShares.Success"
    FIELDS: ClassVar[tuple[tuple[str, FieldCodec], ...]]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, payload: bytes) -> Message:
        raise NotImplementedError


MESSAGES: dict[int, type[Message]] = {}     # msg_type -> class, for extension_type 0


def _compile(cls: type) -> None:
    """Build cls.encode/cls.decode from FIELDS: runs of fixed-size fields become one struct.Struct each."""
    segments: list[tuple[struct.Struct | FieldCodec, tuple[str, ...]]] = []
    run_names: list[str] = []
    run_codecs: list[FieldCodec] = []

    def close_run() -> None:
        if run_names:
            layout = struct.Struct("<" + "".join(c.fmt for c in run_codecs))
            segments.append((layout, tuple(run_names)))
            run_names.clear()
            run_codecs.clear()

    for name, field_codec in cls.FIELDS:
        if field_codec.fmt is not None:
            run_names.append(name)
            run_codecs.append(field_codec)
        else:
            close_run()
            segments.append((field_codec, (name,)))
    close_run()

    checked = tuple((name, c) for name, c in cls.FIELDS if type(c).check is not FieldCodec.check)

    if len(segments) == 1 and isinstance(segments[0][0], struct.Struct):
        layout, names = segments[0]
        unpack, pack = layout.unpack, layout.pack
        size = layout.size

        def decode(payload: bytes, _cls=cls):
            try:
                return _cls(*unpack(payload))
            except struct.error:
                raise CodecError(f"{_cls.NAME} is {size} bytes, not {len(payload)}") from None

        getter = _getter(names)

        def encode(self) -> bytes:
            for name, field_codec in checked:
                field_codec.check(getattr(self, name))
            try:
                return pack(*getter(self))
            except (struct.error, TypeError, OverflowError) as exc:
                raise CodecError(f"{self.NAME}: {exc}") from None

        if not checked:
            # the whole plaintext frame from the field values in one pack: no message object on the way (the
            # batched SubmitShares.Success of every V2 share goes out this way)
            framed = struct.Struct(FRAME_HEADER.format + layout.format.lstrip("<")).pack
            head = (CHANNEL_MSG if cls.CHANNEL_MSG else 0, cls.MSG_TYPE, size & 0xFFFF, size >> 16)

            def frame(*values, _cls=cls) -> bytes:
                try:
                    return framed(*head, *values)
                except (struct.error, TypeError, OverflowError) as exc:
                    raise CodecError(f"{_cls.NAME}: {exc}") from None

            cls.frame = staticmethod(frame)
    elif len(segments) == 2 and isinstance(segments[0][0], struct.Struct):
        # fixed fields, then one variable one (SubmitSharesExtended: a share's hot path): no loop, no isinstance
        (layout, head_names), (tail, (tail_name,)) = segments
        unpack_from, head_size, read_last = layout.unpack_from, layout.size, tail.read_last

        def decode(payload: bytes, _cls=cls):
            try:
                return _cls(*unpack_from(payload), read_last(payload, head_size))
            except struct.error:
                raise CodecError(f"{_cls.NAME} truncated at byte 0") from None
            except CodecError as exc:
                raise CodecError(f"{_cls.NAME}: {exc}") from None

        plan = tuple((seg, _getter(names)) for seg, names in segments)
        encode = _plan_encoder(plan, checked)
    else:
        plan = tuple((seg, _getter(names)) for seg, names in segments)

        def decode(payload: bytes, _cls=cls):
            values: list = []
            offset = 0
            for seg, _ in plan:
                if isinstance(seg, struct.Struct):
                    try:
                        values.extend(seg.unpack_from(payload, offset))
                    except struct.error:
                        raise CodecError(f"{_cls.NAME} truncated at byte {offset}") from None
                    offset += seg.size
                else:
                    value, offset = seg.read(payload, offset)
                    values.append(value)
            if offset != len(payload):
                raise CodecError(f"{_cls.NAME}: {len(payload) - offset} unexpected bytes after the last field")
            return _cls(*values)

        encode = _plan_encoder(plan, checked)

    cls.decode = staticmethod(decode)
    cls.encode = encode


def _plan_encoder(plan: tuple, checked: tuple):
    """encode() for a message of several segments (struct runs and variable-size fields), in order."""
    def encode(self) -> bytes:
        for name, field_codec in checked:
            field_codec.check(getattr(self, name))
        parts = []
        try:
            for seg, getter in plan:
                if isinstance(seg, struct.Struct):
                    parts.append(seg.pack(*getter(self)))
                else:
                    parts.append(seg.write(getter(self)[0]))
        except (struct.error, TypeError, OverflowError) as exc:
            raise CodecError(f"{self.NAME}: {exc}") from None
        return b"".join(parts)

    return encode


def _getter(names: tuple[str, ...]):
    """A function returning the tuple of these attributes (operator.attrgetter returns a bare value for one)."""
    if len(names) == 1:
        (name,) = names
        return lambda obj: (getattr(obj, name),)
    return attrgetter(*names)


def message(msg_type: int, name: str, channel_msg: bool):
    """Class decorator: a slotted dataclass whose annotated fields are the message's wire fields, registered under
    msg_type."""
    def wrap(cls):
        cls = dataclass(slots=True)(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        cls.FIELDS = tuple((f, codec_of(hints[f])) for f in cls.__dataclass_fields__)
        cls.MSG_TYPE = msg_type
        cls.CHANNEL_MSG = channel_msg
        cls.NAME = name
        _compile(cls)
        if msg_type in MESSAGES:
            raise TypeError(f"message type 0x{msg_type:02x} defined twice")
        MESSAGES[msg_type] = cls
        return cls
    return wrap


# --- Common protocol messages (spec 3.6) -----------------------------------------------------------------------

@message(0x00, "SetupConnection", channel_msg=False)
class SetupConnection(Message):
    protocol: U8
    min_version: U16
    max_version: U16
    flags: U32
    endpoint_host: STR0_255
    endpoint_port: U16
    vendor: STR0_255
    hardware_version: STR0_255
    firmware: STR0_255
    device_id: STR0_255


@message(0x01, "SetupConnection.Success", channel_msg=False)
class SetupConnectionSuccess(Message):
    used_version: U16
    flags: U32


@message(0x02, "SetupConnection.Error", channel_msg=False)
class SetupConnectionError(Message):
    flags: U32
    error_code: STR0_255


@message(0x03, "ChannelEndpointChanged", channel_msg=True)
class ChannelEndpointChanged(Message):
    channel_id: U32


@message(0x04, "Reconnect", channel_msg=False)
class Reconnect(Message):
    new_host: STR0_255
    new_port: U16


# --- Mining protocol messages (spec 5.3) -----------------------------------------------------------------------

@message(0x10, "OpenStandardMiningChannel", channel_msg=False)
class OpenStandardMiningChannel(Message):
    request_id: U32
    user_identity: STR0_255
    nominal_hash_rate: F32
    max_target: U256


@message(0x11, "OpenStandardMiningChannel.Success", channel_msg=False)
class OpenStandardMiningChannelSuccess(Message):
    request_id: U32
    channel_id: U32
    target: U256
    extranonce_prefix: B0_32
    group_channel_id: U32


@message(0x12, "OpenMiningChannel.Error", channel_msg=False)
class OpenMiningChannelError(Message):
    """The error answer to both OpenStandardMiningChannel and OpenExtendedMiningChannel."""

    request_id: U32
    error_code: STR0_255


@message(0x13, "OpenExtendedMiningChannel", channel_msg=False)
class OpenExtendedMiningChannel(Message):
    request_id: U32
    user_identity: STR0_255
    nominal_hash_rate: F32
    max_target: U256
    min_extranonce_size: U16


@message(0x14, "OpenExtendedMiningChannel.Success", channel_msg=False)
class OpenExtendedMiningChannelSuccess(Message):
    request_id: U32
    channel_id: U32
    target: U256
    extranonce_size: U16
    extranonce_prefix: B0_32
    group_channel_id: U32


@message(0x15, "NewMiningJob", channel_msg=True)
class NewMiningJob(Message):
    channel_id: U32
    job_id: U32
    min_ntime: OPTION[U32]          # None: a future job, activated by SetNewPrevHash
    version: U32
    merkle_root: U256


@message(0x16, "UpdateChannel", channel_msg=True)
class UpdateChannel(Message):
    channel_id: U32
    nominal_hash_rate: F32
    maximum_target: U256


@message(0x17, "UpdateChannel.Error", channel_msg=True)
class UpdateChannelError(Message):
    channel_id: U32
    error_code: STR0_255


@message(0x18, "CloseChannel", channel_msg=True)
class CloseChannel(Message):
    channel_id: U32
    reason_code: STR0_255


@message(0x19, "SetExtranoncePrefix", channel_msg=True)
class SetExtranoncePrefix(Message):
    channel_id: U32
    extranonce_prefix: B0_32


@message(0x1A, "SubmitSharesStandard", channel_msg=True)
class SubmitSharesStandard(Message):
    channel_id: U32
    sequence_number: U32
    job_id: U32
    nonce: U32
    ntime: U32
    version: U32


@message(0x1B, "SubmitSharesExtended", channel_msg=True)
class SubmitSharesExtended(Message):
    channel_id: U32
    sequence_number: U32
    job_id: U32
    nonce: U32
    ntime: U32
    version: U32
    extranonce: B0_32


@message(0x1C, "SubmitShares.Success", channel_msg=True)
class SubmitSharesSuccess(Message):
    channel_id: U32
    last_sequence_number: U32
    new_submits_accepted_count: U32
    new_shares_sum: U64


@message(0x1D, "SubmitShares.Error", channel_msg=True)
class SubmitSharesError(Message):
    channel_id: U32
    sequence_number: U32
    error_code: STR0_255


@message(0x1F, "NewExtendedMiningJob", channel_msg=True)
class NewExtendedMiningJob(Message):
    channel_id: U32
    job_id: U32
    min_ntime: OPTION[U32]
    version: U32
    version_rolling_allowed: BOOL
    merkle_path: SEQ0_255[U256]
    coinbase_tx_prefix: B0_64K
    coinbase_tx_suffix: B0_64K


@message(0x20, "SetNewPrevHash", channel_msg=True)
class SetNewPrevHash(Message):
    """The Mining protocol's SetNewPrevHash (0x20), not the Template Distribution one (0x72)."""

    channel_id: U32
    job_id: U32
    prev_hash: U256
    min_ntime: U32
    nbits: U32


@message(0x21, "SetTarget", channel_msg=True)
class SetTarget(Message):
    channel_id: U32
    maximum_target: U256


@message(0x25, "SetGroupChannel", channel_msg=False)
class SetGroupChannel(Message):
    group_channel_id: U32
    channel_ids: SEQ0_64K[U32]


# --- frames ----------------------------------------------------------------------------------------------------

def encode_frame(msg: Message) -> bytes:
    """The plaintext frame (header + payload) of a message; NoiseConnection.encrypt takes it from here."""
    payload = msg.encode()
    length = len(payload)
    if length > MAX_PAYLOAD_SIZE:
        raise CodecError(f"{msg.NAME} payload of {length} bytes exceeds the U24 length")
    return FRAME_HEADER.pack(CHANNEL_MSG if msg.CHANNEL_MSG else 0, msg.MSG_TYPE, length & 0xFFFF,
                             length >> 16) + payload


def decode(frame: Frame) -> Message:
    """The message in a frame. UnknownMessage for an extension or a type this codec does not know."""
    extension_type, msg_type, payload = frame
    cls = MESSAGES.get(msg_type) if not extension_type & ~CHANNEL_MSG else None
    if cls is None:
        raise UnknownMessage(f"unknown message: extension_type 0x{extension_type:04x}, msg_type 0x{msg_type:02x}")
    return cls.decode(payload)


def parse_frame(data: bytes) -> Frame:
    """One complete plaintext frame (no encryption: tests, captured traffic): the length must match exactly."""
    if len(data) < FRAME_HEADER_SIZE:
        raise CodecError(f"a frame header is {FRAME_HEADER_SIZE} bytes, not {len(data)}")
    extension_type, msg_type, length_low, length_high = FRAME_HEADER.unpack_from(data)
    length = length_low | length_high << 16
    if len(data) - FRAME_HEADER_SIZE != length:
        raise CodecError(f"frame header says {length} payload bytes, {len(data) - FRAME_HEADER_SIZE} follow")
    return Frame(extension_type, msg_type, bytes(data[FRAME_HEADER_SIZE:]))
