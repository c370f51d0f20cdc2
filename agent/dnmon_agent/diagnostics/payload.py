"""Decode an event payload by its metadata's field list (protocols.md §2.5 "Payload encoding").

Each field list is compiled once into a chain of small steps — runs of fixed-size fields become
one precompiled ``struct.Struct`` — and cached per metadata object, so decoding an event costs a
dict lookup plus the steps. Values: Boolean (4 bytes) → ``bool``; Char → 1-character ``str``;
integers → ``int``; Single/Double → ``float``; Decimal (16 bytes, .NET's in-memory layout
flags/hi32/lo64) → exact ``decimal.Decimal``; DateTime (FILETIME, UTC) → aware ``datetime``
truncated to microseconds; Guid → ``uuid.UUID``; String (UTF-16LE, NUL-terminated; ill-formed
UTF-16 replaced with U+FFFD) → ``str``; Object → nested ``dict``; Array (uint16 count) → ``list``,
or ``bytes`` for Byte elements. Bytes after the last field are ignored (TraceEvent does the same).
A malformed payload raises ``NettraceError`` whose offset is relative to the payload's start.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .errors import NettraceError
from .events import EPOCH_FILETIME, EventMetadata, FieldDescriptor, TypeCode

__all__ = ["compile_fields", "decode_payload"]

Decoder = Callable[[bytes], dict[str, Any]]
_Step = Callable[[bytes, int, dict[str, Any]], int]  # (payload, position, output) → new position
_Struct = Callable[[bytes, int], tuple[dict[str, Any], int]]
_Value = Callable[[bytes, int], tuple[Any, int]]

_CACHE_LIMIT = 4096
_by_metadata: dict[int, tuple[EventMetadata, Decoder]] = {}
_by_layout: dict[tuple[FieldDescriptor, ...], Decoder] = {}


def decode_payload(metadata: EventMetadata, payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The payload's fields by name; ``{}`` when the metadata describes no fields."""
    if metadata.fields is None:
        return {}
    entry = _by_metadata.get(id(metadata))
    if entry is None or entry[0] is not metadata:  # the entry keeps its metadata alive: ids stay unique
        decoder = _by_layout.get(metadata.fields)
        if decoder is None:
            decoder = compile_fields(metadata.fields)
            if len(_by_layout) >= _CACHE_LIMIT:
                _by_layout.clear()
            _by_layout[metadata.fields] = decoder
        if len(_by_metadata) >= _CACHE_LIMIT:
            _by_metadata.clear()
        _by_metadata[id(metadata)] = (metadata, decoder)
    else:
        decoder = entry[1]
    if type(payload) is not bytes:
        payload = bytes(payload)
    return decoder(payload)


def compile_fields(fields: tuple[FieldDescriptor, ...]) -> Decoder:
    """A decoder for payloads laid out as ``fields`` (raises NettraceError for unknown types)."""
    decode = _compile_struct(fields, 0)

    def decoder(payload: bytes) -> dict[str, Any]:
        try:
            return decode(payload, 0)[0]
        except NettraceError:
            raise
        except Exception as exc:  # every step checks its bounds; this is a last resort
            raise NettraceError(f"malformed payload: {exc!r}", 0) from exc

    return decoder


# -- conversions --------------------------------------------------------------------------------


def _filetime(value: int) -> datetime:
    if value < 0:
        raise ValueError(f"negative FILETIME {value}")
    return EPOCH_FILETIME + timedelta(microseconds=value // 10)


_DECIMAL = struct.Struct("<IIQ")


def _decimal(raw: bytes) -> Decimal:
    flags, hi, lo = _DECIMAL.unpack(raw)
    scale = (flags >> 16) & 0xFF
    if flags & 0x7F00FFFF or scale > 28:
        raise ValueError(f"invalid decimal flags 0x{flags:08X}")
    digits = tuple(int(c) for c in str((hi << 64) | lo))
    return Decimal((flags >> 31, digits, -scale))


def _guid(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=raw)


# format character, size, converter (None: the struct value is final)
_FIXED: dict[int, tuple[str, Callable[[Any], Any] | None]] = {
    TypeCode.BOOLEAN: ("i", bool),
    TypeCode.CHAR: ("H", chr),
    TypeCode.SBYTE: ("b", None),
    TypeCode.BYTE: ("B", None),
    TypeCode.INT16: ("h", None),
    TypeCode.UINT16: ("H", None),
    TypeCode.INT32: ("i", None),
    TypeCode.UINT32: ("I", None),
    TypeCode.INT64: ("q", None),
    TypeCode.UINT64: ("Q", None),
    TypeCode.SINGLE: ("f", None),
    TypeCode.DOUBLE: ("d", None),
    TypeCode.DECIMAL: ("16s", _decimal),
    TypeCode.DATETIME: ("q", _filetime),
    TypeCode.GUID: ("16s", _guid),
}
_MAX_NESTING = 64


def _short(what: str, need: int, pos: int, payload: bytes) -> NettraceError:
    return NettraceError(f"{what} needs {need} bytes, {max(len(payload) - pos, 0)} left in the payload", pos)


def _read_string(payload: bytes, pos: int) -> tuple[str, int]:
    end = payload.find(b"\x00\x00", pos)
    while end != -1 and (end - pos) & 1:
        end = payload.find(b"\x00\x00", end + 1)
    if end == -1:
        raise NettraceError("string without a NUL terminator", pos)
    return payload[pos:end].decode("utf-16-le", "replace"), end + 2


# -- compilation --------------------------------------------------------------------------------


def _compile_struct(fields: tuple[FieldDescriptor, ...], depth: int) -> _Struct:
    if depth > _MAX_NESTING:
        raise NettraceError(f"fields nested deeper than {_MAX_NESTING}", 0)
    steps: list[_Step] = []
    run: list[FieldDescriptor] = []
    for field in fields:
        if field.type_code in _FIXED:
            run.append(field)
            continue
        if run:
            steps.append(_fixed_run(run))
            run = []
        steps.append(_variable_step(field, depth))
    if run:
        steps.append(_fixed_run(run))

    if len(steps) == 1:
        (only,) = steps

        def decode_one(payload: bytes, pos: int) -> tuple[dict[str, Any], int]:
            out: dict[str, Any] = {}
            return out, only(payload, pos, out)

        return decode_one

    chain = tuple(steps)

    def decode(payload: bytes, pos: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        for step in chain:
            pos = step(payload, pos, out)
        return out, pos

    return decode


def _fixed_run(run: list[FieldDescriptor]) -> _Step:
    """Consecutive fixed-size fields: one struct unpack, then per-field conversions if any."""
    layout = struct.Struct("<" + "".join(_FIXED[f.type_code][0] for f in run))
    size = layout.size
    unpack = layout.unpack_from
    names = tuple(f.name for f in run)
    converters = tuple(_FIXED[f.type_code][1] for f in run)
    what = f"field {names[0]!r}" if len(names) == 1 else f"fields {names[0]!r}…{names[-1]!r}"

    if not any(converters):

        def plain(payload: bytes, pos: int, out: dict[str, Any]) -> int:
            if len(payload) - pos < size:
                raise _short(what, size, pos, payload)
            out.update(zip(names, unpack(payload, pos), strict=True))
            return pos + size

        return plain

    def converted(payload: bytes, pos: int, out: dict[str, Any]) -> int:
        if len(payload) - pos < size:
            raise _short(what, size, pos, payload)
        for name, convert, value in zip(names, converters, unpack(payload, pos), strict=True):
            if convert is None:
                out[name] = value
                continue
            try:
                out[name] = convert(value)
            except (ValueError, OverflowError) as exc:
                raise NettraceError(f"field {name!r}: {exc}", pos) from None
        return pos + size

    return converted


def _variable_step(field: FieldDescriptor, depth: int) -> _Step:
    read = _value_reader(field, depth)
    name = field.name

    def step(payload: bytes, pos: int, out: dict[str, Any]) -> int:
        out[name], pos = read(payload, pos)
        return pos

    return step


def _value_reader(field: FieldDescriptor, depth: int) -> _Value:
    """Read one value of ``field``'s type at a position (used for fields and array elements)."""
    code = field.type_code
    if code == TypeCode.STRING:
        return _read_string
    if code == TypeCode.OBJECT:
        return _compile_struct(field.fields, depth + 1)
    if code == TypeCode.ARRAY:
        if field.element is None:
            raise NettraceError(f"array field {field.name!r} has no element type", 0)
        return _array_reader(field.element, depth + 1)
    if code in _FIXED:
        fmt, convert = _FIXED[code]
        layout = struct.Struct("<" + fmt)
        size = layout.size
        unpack = layout.unpack_from

        def read_fixed(payload: bytes, pos: int) -> tuple[Any, int]:
            if len(payload) - pos < size:
                raise _short("array element", size, pos, payload)
            (value,) = unpack(payload, pos)
            if convert is not None:
                try:
                    value = convert(value)
                except (ValueError, OverflowError) as exc:
                    raise NettraceError(f"array element: {exc}", pos) from None
            return value, pos + size

        return read_fixed
    raise NettraceError(f"field {field.name!r} has unsupported type code {code}", 0)


def _array_reader(element: FieldDescriptor, depth: int) -> _Value:
    """uint16 count, then the elements; fixed-size elements are unpacked in one call."""
    if element.type_code == TypeCode.BYTE:

        def read_bytes(payload: bytes, pos: int) -> tuple[Any, int]:
            count, start = _count(payload, pos)
            if len(payload) - start < count:
                raise _short("byte array", count, start, payload)
            return payload[start : start + count], start + count

        return read_bytes

    fixed = _FIXED.get(element.type_code)
    if fixed is not None and fixed[0] == "16s":  # Guid, Decimal: a repeat count would mean length
        convert16 = fixed[1]
        assert convert16 is not None

        def read_16_byte_array(payload: bytes, pos: int) -> tuple[Any, int]:
            count, start = _count(payload, pos)
            end = start + 16 * count
            if len(payload) < end:
                raise _short(f"array of {count}", 16 * count, start, payload)
            try:
                return [convert16(payload[p : p + 16]) for p in range(start, end, 16)], end
            except (ValueError, OverflowError) as exc:
                raise NettraceError(f"array element: {exc}", start) from None

        return read_16_byte_array

    if fixed is not None:
        fmt, convert = fixed
        item_size = struct.calcsize("<" + fmt)
        layouts: dict[int, struct.Struct] = {}

        def read_fixed_array(payload: bytes, pos: int) -> tuple[Any, int]:
            count, start = _count(payload, pos)
            size = count * item_size
            if len(payload) - start < size:
                raise _short(f"array of {count}", size, start, payload)
            layout = layouts.get(count)
            if layout is None:
                layout = struct.Struct(f"<{count}{fmt}")
                if count <= 64:  # small arrays repeat; a hostile payload must not grow the cache
                    layouts[count] = layout
            values = list(layout.unpack_from(payload, start))
            if convert is not None:
                try:
                    values = [convert(v) for v in values]
                except (ValueError, OverflowError) as exc:
                    raise NettraceError(f"array element: {exc}", start) from None
            return values, start + size

        return read_fixed_array

    read = _value_reader(element, depth)

    def read_array(payload: bytes, pos: int) -> tuple[Any, int]:
        count, pos = _count(payload, pos)
        values = []
        for _ in range(count):
            value, pos = read(payload, pos)
            values.append(value)
        return values, pos

    return read_array


def _count(payload: bytes, pos: int) -> tuple[int, int]:
    if len(payload) - pos < 2:
        raise _short("array count", 2, pos, payload)
    return payload[pos] | payload[pos + 1] << 8, pos + 2
