"""Payload decoding by field list (protocols.md §2.5): every type, nesting, arrays, errors."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmon_agent.diagnostics import payload
from dnmon_agent.diagnostics.errors import NettraceError
from dnmon_agent.diagnostics.events import EventMetadata, FieldDescriptor, TypeCode
from dnmon_agent.diagnostics.payload import compile_fields, decode_payload
from tests.unit.nettrace_builder import encode_payload, encode_value, utf16z

F = FieldDescriptor
T = TypeCode


def meta(*fields: FieldDescriptor) -> EventMetadata:
    return EventMetadata(1, "P", 1, "E", 0, 0, 4, None, fields)


def round_trip(fields: tuple[FieldDescriptor, ...], values: dict[str, Any]) -> dict[str, Any]:
    return decode_payload(meta(*fields), encode_payload(fields, values))


def test_no_fields_is_an_empty_dict() -> None:
    assert decode_payload(EventMetadata(1, "P", 1, "", 0, 0, 4), b"\x01\x02\x03") == {}


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (T.SBYTE, -128),
        (T.SBYTE, 127),
        (T.BYTE, 255),
        (T.INT16, -32768),
        (T.UINT16, 65535),
        (T.INT32, -(2**31)),
        (T.UINT32, 2**32 - 1),
        (T.INT64, -(2**63)),
        (T.UINT64, 2**64 - 1),
        (T.SINGLE, 1.5),
        (T.DOUBLE, -2.25e300),
        (T.BOOLEAN, True),
        (T.BOOLEAN, False),
        (T.CHAR, "é"),
        (T.STRING, ""),
        (T.STRING, "héllo wörld 😀"),
        (T.GUID, uuid.UUID("12345678-9abc-def0-1122-334455667788")),
        (T.DATETIME, datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)),
        (T.DATETIME, datetime(1601, 1, 1, tzinfo=UTC)),
        (T.DECIMAL, Decimal("1.5")),
        (T.DECIMAL, Decimal("-123.456")),
        (T.DECIMAL, Decimal("79228162514264337593543950335")),
        (T.DECIMAL, Decimal("0.0000000000000000000000000001")),
        (T.DECIMAL, Decimal("0")),
    ],
)
def test_each_type(code: int, value: Any) -> None:
    decoded = round_trip((F("v", code),), {"v": value})["v"]
    assert decoded == value and type(decoded) is type(value)


def test_wire_details() -> None:
    # Boolean is 4 bytes, any non-zero is true; Char is one UTF-16 code unit.
    assert decode_payload(meta(F("b", T.BOOLEAN), F("c", T.CHAR)), struct.pack("<iH", 2, 0xD83D)) == {
        "b": True,
        "c": "\ud83d",
    }
    # A Guid is .NET's Guid.ToByteArray() order (bytes_le).
    raw = bytes(range(16))
    assert decode_payload(meta(F("g", T.GUID)), raw)["g"] == uuid.UUID(bytes_le=raw)
    # DateTime is a FILETIME (100 ns ticks since 1601, UTC), kept to microseconds.
    ticks = 133_500_000_001_234_567
    got = decode_payload(meta(F("d", T.DATETIME)), struct.pack("<q", ticks))["d"]
    assert got == datetime(2024, 1, 17, 21, 20, 0, 123456, tzinfo=UTC)
    # Decimal is .NET's in-memory layout: flags (scale << 16, sign bit 31), hi32, lo64.
    raw = struct.pack("<IIQ", (3 << 16) | (1 << 31), 0, 123456)
    assert decode_payload(meta(F("m", T.DECIMAL)), raw)["m"] == Decimal("-123.456")


def test_strings_find_the_aligned_terminator() -> None:
    # "\u0100\u0001" is 00 01 01 00: a misaligned 00 00 pair sits at offset 1 of the next string.
    fields = (F("a", T.STRING), F("b", T.STRING), F("n", T.INT32))
    values = {"a": "\u0100", "b": "\u0001\u0100", "n": 7}
    assert round_trip(fields, values) == values
    # Ill-formed UTF-16 (a lone surrogate) is replaced rather than raised.
    raw = struct.pack("<H", 0xDC00) + "x".encode("utf-16-le") + b"\x00\x00"
    assert decode_payload(meta(F("s", T.STRING)), raw) == {"s": "\ufffdx"}


def test_nested_objects_and_mixed_runs() -> None:
    fields = (
        F(
            "",
            T.OBJECT,
            (F("Payload", T.OBJECT, (F("Name", T.STRING), F("Mean", T.DOUBLE), F("Count", T.INT32))),),
        ),
        F("x", T.INT64),
        F("label", T.STRING),
        F("flag", T.BOOLEAN),
        F("when", T.DATETIME),
    )
    values = {
        "": {"Payload": {"Name": "cpu-usage", "Mean": 1.25, "Count": 3}},
        "x": -5,
        "label": "z",
        "flag": True,
        "when": datetime(2030, 1, 1, tzinfo=UTC),
    }
    assert round_trip(fields, values) == values


def test_arrays() -> None:
    fields = (
        F("bytes", T.ARRAY, element=F("", T.BYTE)),
        F("ints", T.ARRAY, element=F("", T.INT32)),
        F("flags", T.ARRAY, element=F("", T.BOOLEAN)),
        F("ids", T.ARRAY, element=F("", T.GUID)),
        F("names", T.ARRAY, element=F("", T.STRING)),
        F("pairs", T.ARRAY, element=F("", T.OBJECT, (F("Key", T.STRING), F("Value", T.INT16)))),
        F("matrix", T.ARRAY, element=F("", T.ARRAY, element=F("", T.DOUBLE))),
        F("empty", T.ARRAY, element=F("", T.INT64)),
        F("many", T.ARRAY, element=F("", T.UINT16)),
    )
    values = {
        "bytes": b"\x00\xff\x10",
        "ints": [1, -2, 3],
        "flags": [True, False],
        "ids": [uuid.UUID(int=1), uuid.UUID(int=2**127)],
        "names": ["a", "", "ccc"],
        "pairs": [{"Key": "k", "Value": -1}, {"Key": "", "Value": 2}],
        "matrix": [[1.0, 2.0], [], [3.5]],
        "empty": [],
        "many": list(range(1000)),
    }
    assert round_trip(fields, values) == values


def test_bytes_after_the_last_field_are_ignored() -> None:
    assert decode_payload(meta(F("n", T.INT32)), struct.pack("<i", 9) + b"extra") == {"n": 9}


def test_duplicate_names_keep_the_last_value() -> None:
    assert decode_payload(meta(F("n", T.INT32), F("n", T.INT32)), struct.pack("<ii", 1, 2)) == {"n": 2}


@pytest.mark.parametrize(
    ("fields", "raw", "reason", "offset"),
    [
        ((F("a", T.INT32), F("b", T.INT64)), b"\x01" * 11, "fields 'a'…'b' needs 12 bytes, 11 left", 0),
        ((F("s", T.STRING), F("n", T.INT32)), utf16z("ab") + b"\x01", "field 'n' needs 4 bytes, 1 left", 6),
        ((F("s", T.STRING),), "abc".encode("utf-16-le"), "string without a NUL terminator", 0),
        ((F("n", T.INT16), F("s", T.STRING)), b"\x01\x00a\x00\x00", "string without a NUL terminator", 2),
        ((F("a", T.ARRAY, element=F("", T.INT32)),), b"\x03\x00" + bytes(8), "array of 3 needs 12 bytes", 2),
        ((F("a", T.ARRAY, element=F("", T.BYTE)),), b"\x05\x00abc", "byte array needs 5 bytes, 3 left", 2),
        ((F("a", T.ARRAY, element=F("", T.STRING)),), b"\x01", "array count needs 2 bytes", 0),
        ((F("a", T.ARRAY, element=F("", T.STRING)),), b"\x02\x00a\x00\x00\x00", "string without", 6),
        ((F("d", T.DATETIME),), struct.pack("<q", -1), "negative FILETIME", 0),
        ((F("d", T.DATETIME),), struct.pack("<q", 2**63 - 1), "field 'd'", 0),
        ((F("m", T.DECIMAL),), struct.pack("<IIQ", 29 << 16, 0, 1), "invalid decimal flags", 0),
        ((F("m", T.DECIMAL),), struct.pack("<IIQ", 1, 0, 1), "invalid decimal flags", 0),
        (
            (F("a", T.ARRAY, element=F("", T.DATETIME)),),
            b"\x01\x00" + struct.pack("<q", -5),
            "array element",
            2,
        ),
    ],
)
def test_malformed_payloads(
    fields: tuple[FieldDescriptor, ...], raw: bytes, reason: str, offset: int
) -> None:
    with pytest.raises(NettraceError) as caught:
        decode_payload(meta(*fields), raw)
    assert reason in caught.value.reason
    assert caught.value.offset == offset  # relative to the payload


def test_unsupported_layouts_are_nettrace_errors() -> None:
    with pytest.raises(NettraceError, match="unsupported type code 2"):
        decode_payload(meta(F("x", 2)), b"")
    with pytest.raises(NettraceError, match="no element type"):
        decode_payload(meta(F("x", T.ARRAY)), b"\x00\x00")


def test_decoders_are_compiled_once_per_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[tuple[FieldDescriptor, ...]] = []
    original = payload.compile_fields

    def counting(fields: tuple[FieldDescriptor, ...]) -> Any:
        compiled.append(fields)
        return original(fields)

    monkeypatch.setattr(payload, "compile_fields", counting)
    monkeypatch.setattr(payload, "_by_layout", {})
    monkeypatch.setattr(payload, "_by_metadata", {})
    first = meta(F("n", T.INT32), F("s", T.STRING))
    second = meta(F("n", T.INT32), F("s", T.STRING))  # equal layout, another record
    raw = struct.pack("<i", 4) + utf16z("x")
    for _ in range(3):
        assert decode_payload(first, raw) == decode_payload(second, bytearray(raw)) == {"n": 4, "s": "x"}
    assert len(compiled) == 1


def test_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "_CACHE_LIMIT", 8)
    monkeypatch.setattr(payload, "_by_layout", {})
    monkeypatch.setattr(payload, "_by_metadata", {})
    for i in range(50):
        assert decode_payload(meta(F(f"f{i}", T.BYTE)), b"\x07") == {f"f{i}": 7}
    assert len(payload._by_layout) <= 8 and len(payload._by_metadata) <= 8


# -- property: random layouts round-trip ----------------------------------------------------------

_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
_leaf_codes = st.sampled_from([T.BOOLEAN, T.CHAR, *range(T.SBYTE, T.STRING + 1)])


def _descriptor(depth: int) -> st.SearchStrategy[FieldDescriptor]:
    leaf = st.builds(lambda name, code: F(name, code), _names, _leaf_codes)
    if depth >= 2:
        return leaf
    inner = st.deferred(lambda: _descriptor(depth + 1))
    return st.one_of(
        leaf,
        st.builds(
            lambda name, fields: F(name, T.OBJECT, tuple(fields)),
            _names,
            st.lists(inner, max_size=3, unique_by=lambda f: f.name),
        ),
        st.builds(lambda name, element: F(name, T.ARRAY, element=element), _names, inner),
    )


def _value(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    code = field.type_code
    simple: dict[int, st.SearchStrategy[Any]] = {
        T.BOOLEAN: st.booleans(),
        T.CHAR: st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]),
        T.SBYTE: st.integers(-128, 127),
        T.BYTE: st.integers(0, 255),
        T.INT16: st.integers(-(2**15), 2**15 - 1),
        T.UINT16: st.integers(0, 2**16 - 1),
        T.INT32: st.integers(-(2**31), 2**31 - 1),
        T.UINT32: st.integers(0, 2**32 - 1),
        T.INT64: st.integers(-(2**63), 2**63 - 1),
        T.UINT64: st.integers(0, 2**64 - 1),
        T.SINGLE: st.floats(width=32, allow_nan=False),
        T.DOUBLE: st.floats(allow_nan=False),
        T.DECIMAL: st.decimals(
            allow_nan=False, allow_infinity=False, places=5, min_value=-(10**20), max_value=10**20
        ),
        T.DATETIME: st.datetimes(min_value=datetime(1601, 1, 1), timezones=st.just(UTC)),
        T.GUID: st.uuids(),
        T.STRING: st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12),
    }
    if code in simple:
        return simple[code]
    if code == T.OBJECT:
        return st.fixed_dictionaries({f.name: _value(f) for f in field.fields})
    assert field.element is not None
    if field.element.type_code == T.BYTE:
        return st.binary(max_size=20)
    return st.lists(_value(field.element), max_size=4)


@st.composite
def _layout_and_values(draw: st.DrawFn) -> tuple[tuple[FieldDescriptor, ...], dict[str, Any]]:
    fields = tuple(draw(st.lists(_descriptor(0), max_size=6, unique_by=lambda f: f.name)))
    values = {f.name: draw(_value(f)) for f in fields}
    for f in fields:  # what the wire keeps: float32 precision, Decimal values
        values[f.name] = _normalise(f, values[f.name])
    return fields, values


def _normalise(field: FieldDescriptor, value: Any) -> Any:
    if field.type_code == T.OBJECT:
        return {f.name: _normalise(f, value[f.name]) for f in field.fields}
    if field.type_code == T.ARRAY and field.element is not None and field.element.type_code != T.BYTE:
        return [_normalise(field.element, v) for v in value]
    if field.type_code == T.SINGLE:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    if field.type_code == T.DECIMAL:
        return Decimal(value)
    return value


@settings(max_examples=200, deadline=None)
@given(_layout_and_values())
def test_random_layouts_round_trip(case: tuple[tuple[FieldDescriptor, ...], dict[str, Any]]) -> None:
    fields, values = case
    raw = b"".join(encode_value(f, values[f.name]) for f in fields)
    assert compile_fields(fields)(raw) == values
    # any cut of the payload is a NettraceError or a (shorter) success, nothing else
    for cut in range(0, len(raw), max(1, len(raw) // 7)):
        try:
            compile_fields(fields)(raw[:cut])
        except NettraceError as exc:
            assert 0 <= exc.offset <= cut
