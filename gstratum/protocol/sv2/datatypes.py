"""Stratum V2 binary data types (spec 3.1), all little-endian, as annotations for message fields.

Each type is an `Annotated` alias: the Python type a field holds, plus the `FieldCodec` that reads and writes it.
Messages in codec.py are declared as dataclasses annotated with these names, field for field as the spec's tables:

    channel_id: U32                 -> int
    target: U256                    -> bytes (32, as on the wire: little-endian; u256_to_int/int_to_u256 convert)
    user_identity: STR0_255         -> str (UTF-8, at most 255 bytes encoded)
    extranonce_prefix: B0_32        -> bytes (at most 32)
    min_ntime: OPTION[U32]          -> int | None
    merkle_path: SEQ0_255[U256]     -> tuple[bytes, ...]

Fixed-size numeric types carry a struct format character so a message's consecutive fixed fields compile into one
`struct.Struct` (one C call per run of fields, no per-field objects on the hot path). Readers raise CodecError and
nothing else on truncated or invalid input; writers raise CodecError on values the type cannot carry.
"""
from __future__ import annotations

import struct
from typing import Annotated, Any, get_args

from gstratum.protocol.sv2.errors import CodecError


class FieldCodec:
    """How one data type is read from and written to a payload. `fmt` is the struct format of a fixed-size type
    that struct can handle alone (None otherwise); `size` its byte size (None when variable)."""

    __slots__ = ("name", "fmt", "size")

    def __init__(self, name: str, fmt: str | None = None, size: int | None = None) -> None:
        self.name = name
        self.fmt = fmt
        self.size = size if size is not None else (struct.calcsize("<" + fmt) if fmt else None)

    def read(self, data: bytes, offset: int) -> tuple[Any, int]:
        raise NotImplementedError

    def write(self, value: Any) -> bytes:
        raise NotImplementedError

    def check(self, value: Any) -> None:
        """Extra validation for a struct-packed value that struct itself would accept wrongly (none by default)."""

    def read_last(self, data: bytes, offset: int) -> Any:
        """The value of a message's last field, which must end exactly where the payload does."""
        value, end = self.read(data, offset)
        if end != len(data):
            raise CodecError(f"{len(data) - end} unexpected bytes after the last field")
        return value

    def __repr__(self) -> str:
        return self.name


class _Fixed(FieldCodec):
    __slots__ = ("_struct",)

    def __init__(self, name: str, fmt: str) -> None:
        super().__init__(name, fmt)
        self._struct = struct.Struct("<" + fmt)

    def read(self, data: bytes, offset: int) -> tuple[Any, int]:
        try:
            (value,) = self._struct.unpack_from(data, offset)
        except struct.error:
            raise CodecError(f"truncated {self.name} at byte {offset}") from None
        return value, offset + self.size

    def write(self, value: Any) -> bytes:
        self.check(value)
        try:
            return self._struct.pack(value)
        except (struct.error, TypeError, OverflowError) as exc:
            raise CodecError(f"{self.name}: {exc}") from None


class _U256(_Fixed):
    __slots__ = ()

    def check(self, value: Any) -> None:
        if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
            raise CodecError(f"U256 is 32 bytes, not {value!r:.80}")


class _U24(FieldCodec):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("U24", size=3)

    def read(self, data: bytes, offset: int) -> tuple[int, int]:
        end = offset + 3
        if end > len(data):
            raise CodecError(f"truncated U24 at byte {offset}")
        return int.from_bytes(data[offset:end], "little"), end

    def write(self, value: int) -> bytes:
        if not isinstance(value, int) or not 0 <= value < 1 << 24:
            raise CodecError(f"U24 out of range: {value!r:.80}")
        return value.to_bytes(3, "little")


class _Bool(FieldCodec):
    """One byte; only the least significant bit means anything (spec 3.1: senders may set the others)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("BOOL", size=1)

    def read(self, data: bytes, offset: int) -> tuple[bool, int]:
        if offset >= len(data):
            raise CodecError(f"truncated BOOL at byte {offset}")
        return bool(data[offset] & 1), offset + 1

    def write(self, value: bool) -> bytes:
        return b"\x01" if value else b"\x00"


class _Prefixed(FieldCodec):
    """A length prefix of `prefix` bytes (little-endian), then that many bytes, at most `limit`."""

    __slots__ = ("prefix", "limit")

    def __init__(self, name: str, prefix: int, limit: int) -> None:
        super().__init__(name)
        self.prefix = prefix
        self.limit = limit

    def _read_length(self, data: bytes, offset: int) -> tuple[int, int]:
        start = offset + self.prefix
        if start > len(data):
            raise CodecError(f"truncated {self.name} length at byte {offset}")
        length = data[offset] if self.prefix == 1 else int.from_bytes(data[offset:start], "little")
        if length > self.limit:
            raise CodecError(f"{self.name} length {length} exceeds {self.limit}")
        return length, start

    def _write_length(self, length: int) -> bytes:
        if length > self.limit:
            raise CodecError(f"{self.name} holds at most {self.limit}, not {length}")
        return length.to_bytes(self.prefix, "little")


class _Bytes(_Prefixed):
    __slots__ = ()

    def read(self, data: bytes, offset: int) -> tuple[bytes, int]:
        length, start = self._read_length(data, offset)
        end = start + length
        if end > len(data):
            raise CodecError(f"{self.name} announces {length} bytes, {len(data) - start} remain")
        return bytes(data[start:end]), end

    def read_last(self, data: bytes, offset: int) -> bytes:
        if self.prefix != 1:
            return super().read_last(data, offset)
        if offset >= len(data):                 # a one-byte length (B0_32, B0_255): SubmitSharesExtended's extranonce
            raise CodecError(f"truncated {self.name} length at byte {offset}")
        length = data[offset]
        if length > self.limit:
            raise CodecError(f"{self.name} length {length} exceeds {self.limit}")
        if offset + 1 + length != len(data):
            raise CodecError(f"{self.name} announces {length} bytes, {len(data) - offset - 1} follow")
        return bytes(data[offset + 1:])

    def write(self, value: bytes) -> bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise CodecError(f"{self.name} takes bytes, not {type(value).__name__}")
        return self._write_length(len(value)) + value


class _Str(_Bytes):
    """STR0_255 as text: UTF-8, strictly (invalid UTF-8 is a CodecError: the pool stores these as text)."""

    __slots__ = ()

    def read(self, data: bytes, offset: int) -> tuple[str, int]:
        raw, end = super().read(data, offset)
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise CodecError(f"{self.name} at byte {offset} is not valid UTF-8") from None

    read_last = FieldCodec.read_last        # through `read` above: text, not _Bytes' raw fast path

    def write(self, value: str) -> bytes:
        if not isinstance(value, str):
            raise CodecError(f"{self.name} takes str, not {type(value).__name__}")
        try:
            return super().write(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise CodecError(f"{self.name}: not encodable as UTF-8") from None


class _Seq(_Prefixed):
    """SEQ0_255[T] / SEQ0_64K[T] / OPTION[T] (a sequence of at most one): a count, then the items."""

    __slots__ = ("item", "_items")

    def __init__(self, name: str, prefix: int, limit: int, item: FieldCodec) -> None:
        super().__init__(f"{name}[{item.name}]", prefix, limit)
        self.item = item
        self._items = {}            # count -> struct.Struct, for items struct can read in one call

    def _struct_for(self, count: int) -> struct.Struct:
        compiled = self._items.get(count)
        if compiled is None:
            compiled = struct.Struct(f"<{count}{self.item.fmt}" if self.item.fmt != "32s" else "<" + "32s" * count)
            if len(self._items) < 64:
                self._items[count] = compiled
        return compiled

    def read(self, data: bytes, offset: int) -> tuple[tuple, int]:
        count, offset = self._read_length(data, offset)
        if self.item.fmt is not None:
            compiled = self._struct_for(count)
            try:
                values = compiled.unpack_from(data, offset)
            except struct.error:
                raise CodecError(f"{self.name} of {count} items is truncated") from None
            return values, offset + compiled.size
        values = []
        for _ in range(count):
            value, offset = self.item.read(data, offset)
            values.append(value)
        return tuple(values), offset

    def write(self, value: Any) -> bytes:
        try:
            items = list(value)
        except TypeError:
            raise CodecError(f"{self.name} takes a sequence, not {type(value).__name__}") from None
        return self._write_length(len(items)) + b"".join(self.item.write(item) for item in items)


class _Option(_Seq):
    __slots__ = ()

    def __init__(self, item: FieldCodec) -> None:
        super().__init__("OPTION", 1, 1, item)

    def read(self, data: bytes, offset: int) -> tuple[Any, int]:
        values, offset = super().read(data, offset)
        return (values[0] if values else None), offset

    def write(self, value: Any) -> bytes:
        return b"\x00" if value is None else b"\x01" + self.item.write(value)


def codec_of(annotation: Any) -> FieldCodec:
    """The FieldCodec carried by a data-type annotation (U32, SEQ0_255[U256], ...)."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, FieldCodec):
            return meta
    raise TypeError(f"{annotation!r} is not a Stratum V2 data type")


U8 = Annotated[int, _Fixed("U8", "B")]
U16 = Annotated[int, _Fixed("U16", "H")]
U24 = Annotated[int, _U24()]
U32 = Annotated[int, _Fixed("U32", "I")]
U64 = Annotated[int, _Fixed("U64", "Q")]
U256 = Annotated[bytes, _U256("U256", "32s")]
F32 = Annotated[float, _Fixed("F32", "f")]
BOOL = Annotated[bool, _Bool()]
B0_32 = Annotated[bytes, _Bytes("B0_32", 1, 32)]
B0_255 = Annotated[bytes, _Bytes("B0_255", 1, 255)]
B0_64K = Annotated[bytes, _Bytes("B0_64K", 2, 0xFFFF)]
B0_16M = Annotated[bytes, _Bytes("B0_16M", 3, 0xFFFFFF)]
STR0_255 = Annotated[str, _Str("STR0_255", 1, 255)]


class SEQ0_255:
    """`SEQ0_255[T]`: a 1-byte count (0..255) then the items, as a tuple."""

    def __class_getitem__(cls, item: Any) -> Any:
        inner = codec_of(item)
        return Annotated[tuple[get_args(item)[0], ...], _Seq("SEQ0_255", 1, 0xFF, inner)]


class SEQ0_64K:
    """`SEQ0_64K[T]`: a 2-byte little-endian count (0..65535) then the items, as a tuple."""

    def __class_getitem__(cls, item: Any) -> Any:
        inner = codec_of(item)
        return Annotated[tuple[get_args(item)[0], ...], _Seq("SEQ0_64K", 2, 0xFFFF, inner)]


class OPTION:
    """`OPTION[T]` (SEQ0_1[T]): byte 0 for None, or byte 1 and the value."""

    def __class_getitem__(cls, item: Any) -> Any:
        inner = codec_of(item)
        return Annotated[get_args(item)[0] | None, _Option(inner)]


def u256_to_int(value: bytes) -> int:
    """A U256 field (32 little-endian bytes) as an integer, e.g. a target."""
    return int.from_bytes(value, "little")


def int_to_u256(value: int) -> bytes:
    """An integer (0 <= value < 2**256) as a U256 field."""
    if not 0 <= value < 1 << 256:
        raise CodecError("U256 out of range")
    return value.to_bytes(32, "little")
