"""Test-side nettrace *encoder*: builds V4/V5 streams construct by construct (protocols.md §2).

It writes what the runtime writes — FastSerialization objects, absolute 4-byte alignment,
compressed headers whose flags are chosen by diffing against the previous blob (state reset per
block), metadata blobs like 8.0.4's (flags 0xC6) — and lets a test break any of it on purpose
with ``raw``/``block`` and explicit arguments.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from dnmon_agent.diagnostics.errors import NettraceError
from dnmon_agent.diagnostics.events import EPOCH_FILETIME, Event, EventMetadata, FieldDescriptor, TypeCode
from dnmon_agent.diagnostics.nettrace import NettraceDecoder

MAGIC = b"Nettrace"
STREAM_HEADER = MAGIC + struct.pack("<i", 20) + b"!FastSerialization.1"
M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF


def varint(value: int) -> bytes:
    """Unsigned LEB128."""
    if value < 0:
        raise ValueError(value)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def utf16z(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le", "surrogatepass")


@dataclass(frozen=True)
class Blob:
    """One event (or metadata) blob's header values and payload."""

    metadata_id: int
    payload: bytes = b""
    sequence_number: int = 0
    capture_thread_id: int = 0
    processor_number: int = 0
    thread_id: int = 0
    stack_id: int = 0
    timestamp: int = 0
    activity_id: bytes = bytes(16)
    related_activity_id: bytes = bytes(16)
    sorted: bool = False


_ZERO = Blob(0)


def blob_from(event: Event) -> Blob:
    """The blob that encodes a decoded event."""
    return Blob(
        event.metadata.metadata_id,
        event.payload,
        event.sequence_number,
        event.capture_thread_id,
        event.processor_number,
        event.thread_id,
        event.stack_id,
        event.timestamp,
        event.activity_id,
        event.related_activity_id,
    )


def compressed_blob(blob: Blob, previous: Blob) -> bytes:
    """Header-compressed blob: only what changed since ``previous`` is written."""
    flags = 0
    parts: list[bytes] = []
    if blob.metadata_id != previous.metadata_id:
        flags |= 0x01
        parts.append(varint(blob.metadata_id))
    expected = (previous.sequence_number + (1 if blob.metadata_id else 0)) & M32
    if (
        blob.sequence_number != expected
        or blob.capture_thread_id != previous.capture_thread_id
        or blob.processor_number != previous.processor_number
    ):
        flags |= 0x02
        parts.append(varint((blob.sequence_number - previous.sequence_number - 1) & M32))
        parts.append(varint(blob.capture_thread_id))
        parts.append(varint(blob.processor_number))
    if blob.thread_id != previous.thread_id:
        flags |= 0x04
        parts.append(varint(blob.thread_id))
    if blob.stack_id != previous.stack_id:
        flags |= 0x08
        parts.append(varint(blob.stack_id))
    parts.append(varint((blob.timestamp - previous.timestamp) & M64))
    if blob.activity_id != previous.activity_id:
        flags |= 0x10
        parts.append(blob.activity_id)
    if blob.related_activity_id != previous.related_activity_id:
        flags |= 0x20
        parts.append(blob.related_activity_id)
    if blob.sorted:
        flags |= 0x40
    if len(blob.payload) != len(previous.payload):
        flags |= 0x80
        parts.append(varint(len(blob.payload)))
    return bytes([flags]) + b"".join(parts) + blob.payload


UNCOMPRESSED_HEADER = struct.Struct("<iIIQQIIQ16s16si")


def uncompressed_blob(blob: Blob, offset: int) -> bytes:
    """V4 uncompressed blob at ``offset`` (≡ absolute offset mod 4): 80-byte header, padding."""
    end = offset + UNCOMPRESSED_HEADER.size + len(blob.payload)
    padding = -end % 4
    metadata_id = blob.metadata_id | (0x8000_0000 if blob.sorted else 0)  # high bit: IsSorted (doc)
    header = UNCOMPRESSED_HEADER.pack(
        UNCOMPRESSED_HEADER.size - 4 + len(blob.payload) + padding,
        metadata_id,
        blob.sequence_number,
        blob.thread_id,
        blob.capture_thread_id,
        blob.processor_number,
        blob.stack_id,
        blob.timestamp,
        blob.activity_id,
        blob.related_activity_id,
        len(blob.payload),
    )
    return header + blob.payload + bytes(padding)


def blob_block(
    blobs: Iterable[Blob], *, compressed: bool = True, header_size: int = 20, min_ts: int = 0, max_ts: int = 0
) -> bytes:
    """EventBlock/MetadataBlock content (the caller places it at an aligned offset)."""
    out = bytearray(struct.pack("<hhqq", header_size, 1 if compressed else 0, min_ts, max_ts))
    out += bytes(header_size - 20)
    previous = _ZERO
    for blob in blobs:
        if compressed:
            out += compressed_blob(blob, previous)
            previous = blob
        else:
            out += uncompressed_blob(blob, len(out))
    return bytes(out)


# -- metadata records ---------------------------------------------------------------------------


def _v1_field(f: FieldDescriptor) -> bytes:
    nested = _v1_list(f.fields) if f.type_code == TypeCode.OBJECT else b""
    return struct.pack("<i", f.type_code) + nested + utf16z(f.name)


def _v1_list(fields: Sequence[FieldDescriptor]) -> bytes:
    return struct.pack("<i", len(fields)) + b"".join(_v1_field(f) for f in fields)


def _v2_type(f: FieldDescriptor) -> bytes:
    out = struct.pack("<i", f.type_code)
    if f.type_code == TypeCode.OBJECT:
        out += _v2_list(f.fields)
    elif f.type_code == TypeCode.ARRAY:
        assert f.element is not None
        out += _v2_type(f.element)
    return out


def _v2_field(f: FieldDescriptor, padding: int = 0) -> bytes:
    body = utf16z(f.name) + _v2_type(f) + bytes(padding)
    return struct.pack("<i", 4 + len(body)) + body


def _v2_list(fields: Sequence[FieldDescriptor], padding: int = 0) -> bytes:
    return struct.pack("<i", len(fields)) + b"".join(_v2_field(f, padding) for f in fields)


def tag(kind: int, payload: bytes) -> bytes:
    return struct.pack("<iB", len(payload), kind) + payload


def metadata_record(
    metadata_id: int,
    provider: str,
    event_id: int = 1,
    event_name: str = "",
    *,
    keywords: int = 0,
    version: int = 0,
    level: int = 4,
    fields: Sequence[FieldDescriptor] | None = None,
    v2_fields: Sequence[FieldDescriptor] | None = None,
    v2_padding: int = 0,
    opcode: int | None = None,
    extra_tags: Sequence[bytes] = (),
) -> bytes:
    """A metadata record; with no fields/tags at all it ends right after Level (no field info)."""
    out = struct.pack("<I", metadata_id) + utf16z(provider) + struct.pack("<i", event_id) + utf16z(event_name)
    out += struct.pack("<Qii", keywords, version, level)
    tags = list(extra_tags)
    if opcode is not None:
        tags.insert(0, tag(1, bytes([opcode])))
    if v2_fields is not None:
        tags.append(tag(2, _v2_list(v2_fields, v2_padding)))
    if fields is None and not tags:
        return out
    return out + _v1_list(fields or ()) + b"".join(tags)


def record_for(meta: EventMetadata) -> bytes:
    """Re-encode a decoded EventMetadata (V1 list unless it needs V2 for arrays)."""
    fields = meta.fields or ()
    needs_v2 = any(_has_array(f) for f in fields)
    return metadata_record(
        meta.metadata_id,
        meta.provider_name,
        meta.event_id,
        meta.event_name,
        keywords=meta.keywords,
        version=meta.version,
        level=meta.level,
        fields=None if needs_v2 else (fields if meta.fields is not None else None),
        v2_fields=fields if needs_v2 else None,
        opcode=meta.opcode,
    )


def _has_array(f: FieldDescriptor) -> bool:
    return f.type_code == TypeCode.ARRAY or any(_has_array(n) for n in f.fields)


# -- payloads -----------------------------------------------------------------------------------

_FIXED: dict[int, str] = {
    TypeCode.SBYTE: "b",
    TypeCode.BYTE: "B",
    TypeCode.INT16: "h",
    TypeCode.UINT16: "H",
    TypeCode.INT32: "i",
    TypeCode.UINT32: "I",
    TypeCode.INT64: "q",
    TypeCode.UINT64: "Q",
    TypeCode.SINGLE: "f",
    TypeCode.DOUBLE: "d",
}


def encode_decimal(value: Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)) or "0")
    scale = -exponent
    if scale < 0:
        mantissa *= 10**-scale
        scale = 0
    flags = (scale << 16) | (sign << 31)
    return struct.pack("<IIQ", flags, mantissa >> 64, mantissa & M64)


def encode_value(f: FieldDescriptor, value: Any) -> bytes:
    code = f.type_code
    if code in _FIXED:
        return struct.pack("<" + _FIXED[code], value)
    if code == TypeCode.BOOLEAN:
        return struct.pack("<i", int(value))
    if code == TypeCode.CHAR:
        return struct.pack("<H", ord(value))
    if code == TypeCode.STRING:
        return utf16z(value)
    if code == TypeCode.GUID:
        return UUID(str(value)).bytes_le
    if code == TypeCode.DATETIME:
        assert isinstance(value, datetime)
        delta = value - EPOCH_FILETIME
        return struct.pack("<q", (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10)
    if code == TypeCode.DECIMAL:
        return encode_decimal(value)
    if code == TypeCode.OBJECT:
        return encode_payload(f.fields, value)
    if code == TypeCode.ARRAY:
        assert f.element is not None
        if f.element.type_code == TypeCode.BYTE:
            return struct.pack("<H", len(value)) + bytes(value)
        return struct.pack("<H", len(value)) + b"".join(encode_value(f.element, v) for v in value)
    raise ValueError(code)


def encode_payload(fields: Sequence[FieldDescriptor], values: Mapping[str, Any]) -> bytes:
    return b"".join(encode_value(f, values[f.name]) for f in fields)


# -- the stream ---------------------------------------------------------------------------------


def type_header(name: bytes, version: int, min_version: int) -> bytes:
    return b"\x05\x01" + struct.pack("<iii", version, min_version, len(name)) + name + b"\x06"


@dataclass
class StreamBuilder:
    """Appends objects to a stream; alignment is computed from the absolute length so far."""

    data: bytearray = field(default_factory=lambda: bytearray(STREAM_HEADER))
    pointer_size: int = 8
    metadata_thread: int = 1000

    def raw(self, data: bytes) -> StreamBuilder:
        self.data += data
        return self

    def trace(
        self,
        *,
        sync: tuple[int, ...] = (2024, 5, 3, 17, 13, 45, 30, 250),
        qpc: int = 1_000_000_000,
        frequency: int = 1_000_000_000,
        pointer_size: int = 8,
        pid: int = 4242,
        cpus: int = 2,
        sampling: int = 1_000_000,
        version: int = 4,
        min_version: int = 4,
    ) -> StreamBuilder:
        self.pointer_size = pointer_size
        body = struct.pack("<8hqqiiii", *sync, qpc, frequency, pointer_size, pid, cpus, sampling)
        self.data += b"\x05" + type_header(b"Trace", version, min_version) + body + b"\x06"
        return self

    def block(
        self, name: bytes, content: bytes, *, version: int = 2, min_version: int = 2, size: int | None = None
    ) -> StreamBuilder:
        self.data += b"\x05" + type_header(name, version, min_version)
        self.data += struct.pack("<i", len(content) if size is None else size)
        self.data += bytes(-len(self.data) % 4)
        self.data += content + b"\x06"
        return self

    def metadata(
        self, records: Iterable[bytes], *, compressed: bool = True, timestamp: int = 1_000_000_500
    ) -> StreamBuilder:
        blobs = [
            Blob(0, record, 0, 0, M32, self.metadata_thread, 0, timestamp + i, sorted=True)
            for i, record in enumerate(records)
        ]
        return self.block(b"MetadataBlock", blob_block(blobs, compressed=compressed))

    def events(
        self, blobs: Iterable[Blob], *, compressed: bool = True, header_size: int = 20
    ) -> StreamBuilder:
        return self.block(b"EventBlock", blob_block(blobs, compressed=compressed, header_size=header_size))

    def stacks(self, first_id: int, stacks: Sequence[Sequence[int]]) -> StreamBuilder:
        code = "Q" if self.pointer_size == 8 else "I"
        content = struct.pack("<II", first_id, len(stacks))
        for ips in stacks:
            content += struct.pack(f"<I{len(ips)}{code}", len(ips) * self.pointer_size, *ips)
        return self.block(b"StackBlock", content)

    def sequence_point(self, timestamp: int, threads: Mapping[int, int]) -> StreamBuilder:
        content = struct.pack("<QI", timestamp, len(threads))
        content += b"".join(struct.pack("<QI", t, s) for t, s in threads.items())
        return self.block(b"SPBlock", content)

    def end(self) -> StreamBuilder:
        self.data += b"\x01"
        return self

    def build(self) -> bytes:
        return bytes(self.data)


def events_in_sequence(metadata_id: int, payloads: Sequence[bytes], **common: Any) -> list[Blob]:
    """Blobs of one thread with consecutive sequence numbers starting at 1, 1000 ticks apart."""
    base = Blob(metadata_id, **common)
    return [
        replace(base, payload=p, sequence_number=i + 1, timestamp=base.timestamp + 1000 * i)
        for i, p in enumerate(payloads)
    ]


# -- decoding helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a decode produced: comparable item snapshots, the error (if any), ``ended``."""

    items: list[Any]
    error: tuple[type, str, int] | None
    ended: bool


def snapshot(item: Any) -> Any:
    """A comparable view of an item (``Event`` compares by identity)."""
    if isinstance(item, Event):
        return (
            "Event",
            item.metadata,
            item.sequence_number,
            item.capture_thread_id,
            item.thread_id,
            item.processor_number,
            item.stack_id,
            item.timestamp,
            item.activity_id,
            item.related_activity_id,
            item.payload,
        )
    return item


def pieces(data: bytes, sizes: Iterable[int] | None) -> Iterator[bytes]:
    if sizes is None:
        yield data
        return
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


def run_decoder(
    data: bytes, sizes: Iterable[int] | None = None, wants: Callable[[EventMetadata], bool] | None = None
) -> Outcome:
    decoder = NettraceDecoder(wants)
    items: list[Any] = []
    try:
        for piece in pieces(data, sizes):
            items += decoder.feed(piece)
        decoder.close()
    except NettraceError as exc:
        return Outcome([snapshot(i) for i in items], (type(exc), exc.reason, exc.offset), decoder.ended)
    return Outcome([snapshot(i) for i in items], None, decoder.ended)


def random_sizes(seed: int, limit: int = 4096) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.choice((1, 2, 3, 5, 7, 16, 100, rng.randint(1, limit)))


def assert_chunking_invariant(
    data: bytes,
    wants: Callable[[EventMetadata], bool] | None = None,
    *,
    bytewise: bool = True,
    seeds: int = 3,
) -> Outcome:
    """Whole, byte by byte and random chunks must agree; returns the whole-stream outcome.

    On an error, every run reports the same error; the items delivered before it may stop at
    different ``feed`` calls, so each run's items must be a prefix of the byte-by-byte run's.
    """
    whole = run_decoder(data, None, wants)
    runs = [run_decoder(data, random_sizes(seed), wants) for seed in range(seeds)]
    finest = run_decoder(data, itertools.repeat(1), wants) if bytewise else None
    if finest is not None:
        runs.append(finest)
    for other in runs:
        assert other.error == whole.error
        assert other.ended == whole.ended
        if whole.error is None:
            assert other.items == whole.items
    if whole.error is not None:
        reference = finest or max([whole, *runs], key=lambda o: len(o.items))
        for other in [whole, *runs]:
            assert other.items == reference.items[: len(other.items)]
    return whole
