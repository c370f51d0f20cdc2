"""Sans-IO decoder for the EventPipe "nettrace" stream, format V4/V5 (.NET Core 3.0 … .NET 9).

``NettraceDecoder.feed(chunk)`` returns the items that chunk completed — ``TraceInfo``,
``EventMetadata``, ``Event``, ``StackBlock``, ``SequencePoint``, ``EndOfStream`` — in stream
order; "need more data" is the normal state. It reads in two layers (protocols.md §2):

* framing: magic, FastSerialization object headers, the 4-byte alignment padding (counted from
  absolute stream offset 0) and the size of each block; only the incomplete tail is buffered, so a
  stream of any length costs O(bytes) and at most one block (≤ 64 MiB) of memory;
* block decoders over one complete block held as ``bytes``, with local-variable hot loops.

Event blocks with compressed headers (what every runtime writes) are read in two passes: a scan
that only walks blob headers until it meets an event the caller wants, and, only for blocks that
hold one, a full decode. Skipped events therefore cost a header walk and create no object.
Metadata records with no field list — or an empty one, which is how native runtime events look —
get ``fields=None``. Every malformed byte sequence raises ``NettraceError`` carrying the absolute
stream offset; the decoder then stays failed. NetPerf (format 0) and V6 (.NET 10+) are rejected
with a ``NettraceError`` that names the version; unknown object types are skipped by size.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime

from .errors import NettraceError, NettraceTruncatedError
from .events import (
    EndOfStream,
    Event,
    EventMetadata,
    FieldDescriptor,
    NettraceItem,
    SequencePoint,
    StackBlock,
    TraceInfo,
    TypeCode,
)

__all__ = ["MAX_BLOCK_SIZE", "NettraceDecoder"]

Wants = Callable[[EventMetadata], bool]
ReadableBuffer = bytes | bytearray | memoryview

MAGIC = b"Nettrace"
_SERIALIZATION = b"!FastSerialization.1"
_STREAM_HEADER = MAGIC + struct.pack("<i", len(_SERIALIZATION)) + _SERIALIZATION  # 32 bytes
_NETPERF_HEADER = _STREAM_HEADER[len(MAGIC) :]  # format 0 starts right with the serializer tag
_NULL_REFERENCE, _BEGIN_PRIVATE_OBJECT, _END_OBJECT = 0x01, 0x05, 0x06
_TYPE_HEADER = 15  # 05 05 01 version:i32 minReaderVersion:i32 nameLength:i32
_MAX_TYPE_NAME = 64
_TRACE_BODY = 48
MAX_BLOCK_SIZE = 64 << 20
"""A larger block is refused: a hostile stream must not make the decoder buffer without bound."""

_MAX_NESTING = 32  # Object/Array nesting in field descriptors
_M32 = 0xFFFF_FFFF
_M64 = 0xFFFF_FFFF_FFFF_FFFF
_ZERO_GUID = bytes(16)
_MISSING = EventMetadata(0, "", 0, "", 0, 0, 0)  # sentinel: metadata id not defined (yet)
_CONTINUATION_RUN = re.compile(rb"[\x80-\xff]*")

_I32 = struct.Struct("<i")
_TYPE_FIELDS = struct.Struct("<iii")
_TRACE = struct.Struct("<8hqqiiii")
_BLOCK_HEADER = struct.Struct("<hh")
_UNCOMPRESSED = struct.Struct("<iIIQQIIQ16s16si")  # 80 bytes, EventSize first
_STACK_HEADER = struct.Struct("<II")
_SP_HEADER = struct.Struct("<QI")
_SP_THREAD = struct.Struct("<QI")

_HEADER, _OBJECTS, _ENDED = 0, 1, 2

_V1_TYPES = frozenset(range(TypeCode.BOOLEAN, TypeCode.STRING + 1)) | {TypeCode.OBJECT}
_V2_TYPES = _V1_TYPES | {TypeCode.ARRAY}

# Object types this reader understands, with the newest layout it reads (its "reader version").
_TRACE_VERSION = 4
_BLOCK_VERSION = 2
_KNOWN_BLOCKS = frozenset((b"EventBlock", b"MetadataBlock", b"StackBlock", b"SPBlock"))


class _BadVarint(Exception):
    """A varint longer than its type allows; ``pos`` is its first byte within the block."""

    def __init__(self, pos: int, limit: int) -> None:
        self.pos = pos
        self.limit = limit


class _WantsFailed(Exception):
    """The caller's ``wants`` raised: re-raised unchanged, not reported as a stream error."""

    def __init__(self, original: Exception) -> None:
        self.original = original


def _too_long(data: bytes, start: int, limit: int) -> _BadVarint:
    """A run of ``limit`` continuation bytes: too long if it ends in the block, else an overrun.

    The scan pass finds a varint's end first and checks its length after; deciding the same way
    here keeps both passes reporting the same error at the same offset.
    """
    run = _CONTINUATION_RUN.match(data, start)  # ``*``: always matches
    if run is None or run.end() >= len(data):
        raise IndexError(start)  # reported as an overrun, like the scan pass does
    return _BadVarint(start, limit)


def _uvarint32(data: bytes, p: int) -> tuple[int, int]:
    """LEB128 of at most 5 bytes at ``p`` → (value mod 2^32, position after it)."""
    value = 0
    shift = 0
    start = p
    while shift < 35:
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & _M32, p
        shift += 7
    raise _too_long(data, start, 5)


def _uvarint64(data: bytes, p: int) -> tuple[int, int]:
    """LEB128 of at most 10 bytes at ``p`` → (value mod 2^64, position after it)."""
    value = 0
    shift = 0
    start = p
    while shift < 70:
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & _M64, p
        shift += 7
    raise _too_long(data, start, 10)


def _skip_varint(data: bytes, p: int, limit: int) -> int:
    """Position after the varint at ``p`` without decoding it (same errors as decoding)."""
    q = p
    while data[p] > 0x7F:
        p += 1
    if p - q >= limit:
        raise _BadVarint(q, limit)
    return p + 1


def _first_wanted(blk: bytes, p: int, n: int, table: dict[int, EventMetadata | None], base: int) -> int:
    """Scan compressed blobs from ``p``: index of the first one the caller wants (or whose
    metadata is undefined), or -1 when the block holds none. Walks headers only; the state
    (sequence, thread, timestamp, …) is not computed because a skipped block needs none of it.
    """
    get = table.get
    missing = _MISSING
    meta: EventMetadata | None = missing
    psize = 0
    s = p
    try:
        while p < n:
            s = p
            f = blk[p]
            p += 1
            if f & 1:
                b = blk[p]
                if b < 0x80:
                    p += 1
                    meta = get(b, missing)
                else:
                    mid, p = _uvarint32(blk, p)
                    meta = get(mid, missing)
            if meta is not None:
                return s
            if f & 2:
                p = _skip_varint(blk, p, 5)
                p = _skip_varint(blk, p, 10)
                p = _skip_varint(blk, p, 5)
            if f & 4:  # thread ids and stack ids: mostly 1-2 bytes
                if blk[p] < 0x80:
                    p += 1
                elif blk[p + 1] < 0x80:
                    p += 2
                else:
                    p = _skip_varint(blk, p, 10)
            if f & 8:
                if blk[p] < 0x80:
                    p += 1
                elif blk[p + 1] < 0x80:
                    p += 2
                else:
                    p = _skip_varint(blk, p, 5)
            if blk[p] > 0x7F:  # timestamp delta: nearly always several bytes
                q = p
                p += 1
                while blk[p] > 0x7F:
                    p += 1
                if p - q >= 10:
                    raise _BadVarint(q, 10)
            p += 1
            if f & 0x30:
                if f & 16:
                    p += 16
                if f & 32:
                    p += 16
            if f & 128:
                b = blk[p]
                if b < 0x80:
                    p += 1
                    psize = b
                else:
                    psize, p = _uvarint32(blk, p)
            p += psize
    except IndexError:
        raise NettraceError("event blob runs past the end of its block", base + s) from None
    except _BadVarint as bad:
        raise NettraceError(f"varint longer than {bad.limit} bytes", base + bad.pos) from None
    if p > n:
        raise NettraceError("event blob runs past the end of its block", base + s)
    return -1


def _utf16z(data: bytes, p: int, end: int) -> tuple[str, int] | None:
    """NUL-terminated UTF-16LE string in ``data[p:end]`` → (text, position after), or None."""
    q = data.find(b"\x00\x00", p, end)
    while q != -1 and (q - p) & 1:
        q = data.find(b"\x00\x00", q + 1, end)
    if q == -1:
        return None
    return data[p:q].decode("utf-16-le", "replace"), q + 2


class _Reader:
    """Bounds-checked little-endian reader over ``data[pos:end]``; errors carry absolute offsets."""

    __slots__ = ("base", "data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int, base: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.base = base  # absolute stream offset of data[0]

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def fail(self, message: str, pos: int | None = None) -> NettraceError:
        return NettraceError(message, self.base + (self.pos if pos is None else pos))

    def _take(self, size: int, what: str) -> int:
        p = self.pos
        if size > self.end - p:
            raise self.fail(f"{what} runs past the end of its record ({self.end - p} bytes left)")
        self.pos = p + size
        return p

    def u8(self, what: str) -> int:
        return self.data[self._take(1, what)]

    def i32(self, what: str) -> int:
        return int.from_bytes(self.data[self._take(4, what) : self.pos], "little", signed=True)

    def u32(self, what: str) -> int:
        return int.from_bytes(self.data[self._take(4, what) : self.pos], "little")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.data[self._take(8, what) : self.pos], "little")

    def utf16z(self, what: str) -> str:
        found = _utf16z(self.data, self.pos, self.end)
        if found is None:
            raise self.fail(f"{what}: UTF-16 string without a terminator")
        text, self.pos = found
        return text

    def sub(self, size: int, what: str) -> _Reader:
        if size < 0:
            raise self.fail(f"{what}: negative size {size}")
        start = self._take(size, what)
        return _Reader(self.data, start, self.pos, self.base)


def _fields_v1(r: _Reader, depth: int) -> tuple[FieldDescriptor, ...]:
    """V1 field list: count, then {type code, [nested list if Object], name} per field."""
    if depth > _MAX_NESTING:
        raise r.fail(f"field descriptors nested deeper than {_MAX_NESTING}")
    at = r.pos
    count = r.i32("field count")
    if count < 0 or count > r.remaining // 6:  # a field takes at least 6 bytes
        raise r.fail(f"field count {count} does not fit in the metadata record", at)
    fields = []
    for _ in range(count):
        at = r.pos
        type_code = r.i32("field type code")
        if type_code not in _V1_TYPES:
            raise r.fail(f"unsupported field type code {type_code}", at)
        nested = _fields_v1(r, depth + 1) if type_code == TypeCode.OBJECT else ()
        fields.append(FieldDescriptor(r.utf16z("field name"), type_code, nested))
    return tuple(fields)


def _fields_v2(r: _Reader, depth: int) -> tuple[FieldDescriptor, ...]:
    """V2Params field list: count, then {size incl. itself, name, type, …, padding} per field."""
    if depth > _MAX_NESTING:
        raise r.fail(f"field descriptors nested deeper than {_MAX_NESTING}")
    at = r.pos
    count = r.i32("V2 field count")
    if count < 0 or count > r.remaining // 10:  # a V2 field takes at least 10 bytes
        raise r.fail(f"V2 field count {count} does not fit in its tag", at)
    fields = []
    for _ in range(count):
        at = r.pos
        size = r.i32("V2 field size")
        if size < 4:
            raise r.fail(f"V2 field size {size} is smaller than its own size field", at)
        field = r.sub(size - 4, "V2 field")
        name = field.utf16z("V2 field name")
        fields.append(_type_v2(field, name, depth))  # bytes left in ``field`` are padding
    return tuple(fields)


def _type_v2(r: _Reader, name: str, depth: int) -> FieldDescriptor:
    if depth > _MAX_NESTING:
        raise r.fail(f"field descriptors nested deeper than {_MAX_NESTING}")
    at = r.pos
    type_code = r.i32("V2 field type code")
    if type_code not in _V2_TYPES:
        raise r.fail(f"unsupported field type code {type_code}", at)
    if type_code == TypeCode.OBJECT:
        return FieldDescriptor(name, type_code, _fields_v2(r, depth + 1))
    if type_code == TypeCode.ARRAY:
        return FieldDescriptor(name, type_code, element=_type_v2(r, "", depth + 1))
    return FieldDescriptor(name, type_code)


def _metadata_record(r: _Reader) -> EventMetadata:
    """One metadata record (protocols.md §2.5): header, optional V1 field list, V5 tags."""
    at = r.pos
    metadata_id = r.u32("metadata id")
    if metadata_id == 0:
        raise r.fail("metadata record defines id 0, which is reserved", at)
    provider = r.utf16z("provider name")
    event_id = r.i32("event id")
    event_name = r.utf16z("event name")
    keywords = r.u64("keywords")
    version = r.i32("event version")
    level = r.i32("event level")
    fields: tuple[FieldDescriptor, ...] | None = None
    opcode: int | None = None
    if r.remaining:
        fields = _fields_v1(r, 0) or None
    while r.remaining:
        at = r.pos
        size = r.i32("metadata tag size")
        kind = r.u8("metadata tag kind")
        if size < 0 or size > r.remaining:
            raise r.fail(f"metadata tag size {size} does not fit in the record", at)
        tag = r.sub(size, "metadata tag")
        if kind == 1:  # OpCode
            opcode = tag.u8("opcode")
        elif kind == 2:  # V2Params: replaces the (then empty) V1 list
            fields = _fields_v2(tag, 0) or None
        # other kinds: newer information this reader does not need; the size lets us skip it
    return EventMetadata(
        metadata_id, provider, event_id, event_name, keywords, version, level, opcode, fields
    )


class NettraceDecoder:
    """Incremental nettrace V4/V5 decoder: ``feed`` bytes as they arrive, ``close`` at EOF.

    ``wants`` is asked once per metadata record; events of unwanted metadata are walked (their
    headers carry state) but never materialised. Chunks of any size give identical items.
    Items completed earlier in the same ``feed`` call are discarded when that call raises.
    """

    def __init__(self, wants: Wants | None = None) -> None:
        self._wants = wants
        self._buf = bytearray()  # unconsumed tail; _buf[_pos:] is pending
        self._pos = 0
        self._offset = 0  # absolute offset of _buf[_pos]
        self._need = 1  # pending bytes required before parsing can progress
        self._state = _HEADER
        self._error: BaseException | None = None
        self._trace: TraceInfo | None = None
        self._metadata: dict[int, EventMetadata] = {}
        self._table: dict[int, EventMetadata | None] = {}  # None: defined but not wanted

    # -- public surface ----------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Absolute number of stream bytes consumed (parsed) so far."""
        return self._offset

    @property
    def trace_info(self) -> TraceInfo | None:
        return self._trace

    @property
    def ended(self) -> bool:
        """True once the end-of-stream tag was read: the runtime finished the stream."""
        return self._state == _ENDED

    @property
    def metadata(self) -> dict[int, EventMetadata]:
        """Every metadata record seen so far, wanted or not (a copy)."""
        return dict(self._metadata)

    def feed(self, data: ReadableBuffer) -> list[NettraceItem]:
        """Consume ``data``; return the items it completed, in stream order."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if not len(view):
            return []
        out: list[NettraceItem] = []
        try:
            if self._state == _ENDED:
                raise NettraceError("data after the end-of-stream tag", self._offset)
            if self._pos < len(self._buf):
                self._buf += view
                self._feed_buffer(out)
            else:
                self._feed_view(view, out)
        except NettraceError as exc:
            self._error = exc
            raise
        except _WantsFailed as failed:
            self._error = failed.original
            raise failed.original from None
        except Exception as exc:  # a decoder bug must still surface as a stream error
            error = NettraceError(f"internal decoder error: {exc!r}", self._offset)
            self._error = error
            raise error from exc
        return out

    def close(self) -> None:
        """Declare EOF: raise ``NettraceTruncatedError`` unless the end-of-stream tag was read."""
        if self._error is not None:
            raise self._error
        if self._state == _ENDED:
            return
        pending = len(self._buf) - self._pos
        error = NettraceTruncatedError(
            f"the stream ended before its end-of-stream tag ({self._offset + pending} bytes received, "
            f"{pending} of them an incomplete object)",
            self._offset,
        )
        self._error = error
        raise error

    # -- framing -----------------------------------------------------------------------------

    def _feed_view(self, view: memoryview, out: list[NettraceItem]) -> None:
        """Nothing pending: parse straight from the caller's bytes, keep only the tail."""
        pos = 0
        if len(view) >= self._need:
            pos = self._parse(view, 0, out)
        self._offset += pos
        self._buf = bytearray(view[pos:])
        self._pos = 0

    def _feed_buffer(self, out: list[NettraceItem]) -> None:
        buf = self._buf
        start = self._pos
        pos = start
        if len(buf) - pos >= self._need:
            pos = self._parse(buf, pos, out)
        self._offset += pos - start
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos > (1 << 16) and pos * 2 > len(buf):  # amortised O(1) per byte
            del buf[:pos]
            pos = 0
        self._pos = pos

    def _parse(self, src: ReadableBuffer, pos: int, out: list[NettraceItem]) -> int:
        """Consume complete units from ``src[pos:]``; set ``_need``; return the new position.

        Checks run in stream order and only on bytes that are present, and a unit is decoded
        only once it is complete, so the outcome never depends on how the stream was chunked.
        """
        base = self._offset - pos  # absolute offset of src[0]
        n = len(src)
        while True:
            avail = n - pos
            if self._state == _OBJECTS:
                if avail < 1:
                    self._need = 1
                    return pos
                tag = src[pos]
                if tag == _NULL_REFERENCE:
                    out.append(EndOfStream(base + pos))
                    self._state = _ENDED
                    pos += 1
                    if pos < n:
                        raise NettraceError("data after the end-of-stream tag", base + pos)
                    return pos
                if tag != _BEGIN_PRIVATE_OBJECT:
                    raise NettraceError(
                        f"expected an object (0x05) or the end-of-stream tag (0x01), found 0x{tag:02X}",
                        base + pos,
                    )
                used = self._object(src, pos, base, out)
                if not used:
                    return pos
                pos += used
            elif self._state == _HEADER:
                used = self._stream_header(src, pos, base)
                if not used:
                    return pos
                pos += used
                self._state = _OBJECTS
            else:
                return pos

    def _stream_header(self, src: ReadableBuffer, pos: int, base: int) -> int:
        """The 32-byte stream header; re-checked on every new byte until it is decided."""
        avail = len(src) - pos
        head = bytes(src[pos : pos + min(avail, len(_STREAM_HEADER))])
        self._need = avail + 1
        if head[:8] == MAGIC[: len(head[:8])]:
            if avail < 12:
                return 0
            (reserved,) = _I32.unpack_from(head, 8)
            if reserved == 0:  # V6+: "Nettrace", uint32 0, uint32 major, uint32 minor
                if avail < 16:
                    return 0
                (major,) = _I32.unpack_from(head, 12)
                if major >= 6:
                    raise NettraceError(
                        f"nettrace format V{major} (.NET 10 or later) is not supported; "
                        "this decoder reads V4/V5 (.NET Core 3.0 to .NET 9)",
                        base + pos + 12,
                    )
                raise NettraceError(f"invalid nettrace versioning header (major {major})", base + pos + 12)
            if reserved != len(_SERIALIZATION):
                raise NettraceError(
                    "unsupported nettrace container (no FastSerialization header)", base + pos + 8
                )
            if head[12:] != _SERIALIZATION[: len(head) - 12]:
                raise NettraceError("unsupported serializer (expected !FastSerialization.1)", base + pos + 12)
            if avail < len(_STREAM_HEADER):
                return 0
            self._need = 1
            return len(_STREAM_HEADER)
        if head[: len(_NETPERF_HEADER)] == _NETPERF_HEADER[: min(len(head), len(_NETPERF_HEADER))]:
            if avail < len(_NETPERF_HEADER):
                return 0
            raise NettraceError(
                "NetPerf streams (format 0, no 'Nettrace' magic) are not supported; request format 1",
                base + pos,
            )
        raise NettraceError("not a nettrace stream (the 'Nettrace' magic is missing)", base + pos)

    def _object(self, src: ReadableBuffer, pos: int, base: int, out: list[NettraceItem]) -> int:
        """One FastSerialization object at ``pos`` (its 0x05 checked): bytes used, 0 if incomplete."""
        n = len(src)
        if n - pos < _TYPE_HEADER:
            self._need = _TYPE_HEADER
            return 0
        if src[pos + 1] != _BEGIN_PRIVATE_OBJECT:
            raise NettraceError("malformed object: its type object does not begin with 0x05", base + pos + 1)
        if src[pos + 2] != _NULL_REFERENCE:
            raise NettraceError("malformed type object: its type must be the null reference", base + pos + 2)
        version, min_version, name_length = _TYPE_FIELDS.unpack_from(src, pos + 3)
        if not 0 < name_length <= _MAX_TYPE_NAME:
            raise NettraceError(f"type name length {name_length} out of range", base + pos + 11)
        head: int = pos + _TYPE_HEADER + name_length + 1  # just past the type object's 0x06
        if n < head:
            self._need = head - pos
            return 0
        name = bytes(src[pos + _TYPE_HEADER : head - 1])
        if src[head - 1] != _END_OBJECT:
            raise NettraceError("type object not closed by 0x06", base + head - 1)
        label = name.decode("ascii", "replace")
        if name == b"Trace":
            if self._trace is not None:
                raise NettraceError("a second Trace object", base + pos)
            if version < _TRACE_VERSION or min_version > _TRACE_VERSION:
                raise NettraceError(
                    f"Trace object version {version} (minimum reader version {min_version}) is not "
                    "supported; this decoder reads nettrace V4/V5",
                    base + pos + 3,
                )
            end = head + _TRACE_BODY
            if n < end + 1:
                self._need = end + 1 - pos
                return 0
            self._trace = self._trace_body(src, head, base)
            out.append(self._trace)
        else:
            if self._trace is None:
                raise NettraceError(f"the first object must be Trace, found {label!r}", base + pos)
            if name in _KNOWN_BLOCKS and (version < _BLOCK_VERSION or min_version > _BLOCK_VERSION):
                raise NettraceError(
                    f"{label} version {version} (minimum reader version {min_version}) is not supported",
                    base + pos + 3,
                )
            if n < head + 4:
                self._need = head + 4 - pos
                return 0
            size: int = _I32.unpack_from(src, head)[0]
            if not 0 <= size <= MAX_BLOCK_SIZE:
                raise NettraceError(f"{label} size {size} out of range (0..{MAX_BLOCK_SIZE})", base + head)
            start = head + 4
            start += -(base + start) % 4  # content is 4-byte aligned in the stream
            end = start + size
            if n < end + 1:
                self._need = end + 1 - pos
                return 0
            self._block(name, src, start, end, base + start, out)
        if src[end] != _END_OBJECT:
            raise NettraceError(f"{label} object not closed by 0x06", base + end)
        self._need = 1
        return end + 1 - pos

    def _trace_body(self, src: ReadableBuffer, start: int, base: int) -> TraceInfo:
        (year, month, _, day, hour, minute, second, ms, qpc, frequency, pointer_size, pid, cpus, rate) = (
            _TRACE.unpack_from(src, start)
        )
        try:
            sync = datetime(year, month, day, hour, minute, second, ms * 1000, tzinfo=UTC)
        except ValueError as exc:
            raise NettraceError(f"invalid SyncTimeUTC in the Trace object: {exc}", base + start) from None
        if frequency <= 0:
            raise NettraceError(f"QPCFrequency {frequency} is not positive", base + start + 24)
        if pointer_size not in (4, 8):
            raise NettraceError(f"pointer size {pointer_size} is neither 4 nor 8", base + start + 32)
        return TraceInfo(sync, qpc, frequency, pointer_size, pid, cpus, rate)

    # -- blocks ------------------------------------------------------------------------------

    def _block(
        self, name: bytes, src: ReadableBuffer, start: int, end: int, base: int, out: list[NettraceItem]
    ) -> None:
        if name == b"EventBlock":
            self._event_block(bytes(src[start:end]), base, out)
        elif name == b"StackBlock":
            out.append(self._stack_block(bytes(src[start:end]), base))
        elif name == b"MetadataBlock":
            self._metadata_block(bytes(src[start:end]), base, out)
        elif name == b"SPBlock":
            out.append(_sequence_point(bytes(src[start:end]), base))
        # anything else: a newer object this reader does not know; its size let us skip it

    def _blob_start(self, blk: bytes, base: int, label: str) -> tuple[int, bool]:
        """Check an Event/Metadata block header: (offset of the first blob, compressed?)."""
        if len(blk) < 20:
            raise NettraceError(f"{label} of {len(blk)} bytes is shorter than its 20-byte header", base)
        header_size, flags = _BLOCK_HEADER.unpack_from(blk)
        if not 20 <= header_size <= len(blk):
            raise NettraceError(f"{label} header size {header_size} out of range", base)
        return header_size, bool(flags & 1)

    def _event_block(self, blk: bytes, base: int, out: list[NettraceItem]) -> None:
        start, compressed = self._blob_start(blk, base, "EventBlock")
        if not compressed:
            self._uncompressed_events(blk, start, base, out)
        elif self._wants is None or _first_wanted(blk, start, len(blk), self._table, base) >= 0:
            self._compressed_events(blk, start, base, out)

    def _compressed_events(self, blk: bytes, p: int, base: int, out: list[NettraceItem]) -> None:
        """Full decode of one compressed event block; every field is delta state reset here."""
        table_get = self._table.get
        trace = self._trace
        assert trace is not None
        append = out.append
        event = Event
        missing = _MISSING
        uvarint32 = _uvarint32
        uvarint64 = _uvarint64
        n = len(blk)
        meta: EventMetadata | None = missing
        mid = seq = capture = proc = tid = stack = ts = psize = 0
        activity = related = _ZERO_GUID
        s = p
        try:
            while p < n:
                s = p
                f = blk[p]
                p += 1
                if f & 1:
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        mid = b
                    else:
                        mid, p = uvarint32(blk, p)
                    meta = table_get(mid, missing)
                if f & 2:
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        seq += b + 1
                    else:
                        b, p = uvarint32(blk, p)
                        seq += b + 1
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        capture = b
                    else:
                        capture, p = uvarint64(blk, p)
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        proc = b
                    else:
                        proc, p = uvarint32(blk, p)
                elif mid:
                    seq += 1
                if f & 4:  # thread ids and stack ids: mostly 1-2 bytes
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        tid = b
                    elif blk[p + 1] < 0x80:
                        tid = (b & 0x7F) | blk[p + 1] << 7
                        p += 2
                    else:
                        tid, p = uvarint64(blk, p)
                if f & 8:
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        stack = b
                    elif blk[p + 1] < 0x80:
                        stack = (b & 0x7F) | blk[p + 1] << 7
                        p += 2
                    else:
                        stack, p = uvarint32(blk, p)
                b = blk[p]  # timestamp delta: mostly 2-3 bytes, so those are unrolled
                if b < 0x80:
                    p += 1
                    ts += b
                else:
                    c = blk[p + 1]
                    if c < 0x80:
                        p += 2
                        ts += (b & 0x7F) | c << 7
                    else:
                        d = blk[p + 2]
                        if d < 0x80:
                            p += 3
                            ts += (b & 0x7F) | (c & 0x7F) << 7 | d << 14
                        else:
                            b, p = uvarint64(blk, p)
                            ts += b
                if f & 0x30:
                    if f & 16:
                        activity = blk[p : p + 16]
                        p += 16
                    if f & 32:
                        related = blk[p : p + 16]
                        p += 16
                if f & 128:
                    b = blk[p]
                    if b < 0x80:
                        p += 1
                        psize = b
                    else:
                        psize, p = uvarint32(blk, p)
                q = p + psize
                if meta is not None:
                    if meta is missing:
                        raise _undefined(mid, base + s)
                    if q > n:
                        raise NettraceError("event blob runs past the end of its block", base + s)
                    append(
                        event(
                            meta,
                            seq & _M32,
                            capture,
                            tid,
                            proc,
                            stack,
                            ts & _M64,
                            activity,
                            related,
                            blk[p:q],
                            trace,
                        )
                    )
                p = q
        except IndexError:
            raise NettraceError("event blob runs past the end of its block", base + s) from None
        except _BadVarint as bad:
            raise NettraceError(f"varint longer than {bad.limit} bytes", base + bad.pos) from None
        if p > n:
            raise NettraceError("event blob runs past the end of its block", base + s)

    def _uncompressed_events(self, blk: bytes, p: int, base: int, out: list[NettraceItem]) -> None:
        trace = self._trace
        assert trace is not None
        for s, mid, seq, capture, proc, tid, stack, ts, activity, related, q, end in _uncompressed_blobs(
            blk, p, base
        ):
            meta = self._table.get(mid, _MISSING)
            if meta is _MISSING:
                raise _undefined(mid, base + s)
            if meta is not None:
                out.append(
                    Event(meta, seq, capture, tid, proc, stack, ts, activity, related, blk[q:end], trace)
                )

    def _metadata_block(self, blk: bytes, base: int, out: list[NettraceItem]) -> None:
        start, compressed = self._blob_start(blk, base, "MetadataBlock")
        blobs = (
            _compressed_payloads(blk, start, base) if compressed else _uncompressed_payloads(blk, start, base)
        )
        for q, end in blobs:
            meta = _metadata_record(_Reader(blk, q, end, base))
            self._metadata[meta.metadata_id] = meta
            wanted = True
            if self._wants is not None:
                try:
                    wanted = bool(self._wants(meta))
                except Exception as exc:
                    raise _WantsFailed(exc) from exc
            self._table[meta.metadata_id] = meta if wanted else None
            out.append(meta)

    def _stack_block(self, blk: bytes, base: int) -> StackBlock:
        assert self._trace is not None
        pointer = self._trace.pointer_size
        code = "Q" if pointer == 8 else "I"
        n = len(blk)
        if n < 8:
            raise NettraceError(f"StackBlock of {n} bytes is shorter than its 8-byte header", base)
        first_id, count = _STACK_HEADER.unpack_from(blk)
        if count > (n - 8) // 4:
            raise NettraceError(f"StackBlock stack count {count} does not fit in the block", base + 4)
        stacks = []
        p = 8
        for _ in range(count):
            if p + 4 > n:
                raise NettraceError("stack runs past the end of its StackBlock", base + p)
            size = int.from_bytes(blk[p : p + 4], "little")
            if size > n - p - 4:
                raise NettraceError(f"stack of {size} bytes runs past the end of its StackBlock", base + p)
            if size % pointer:
                raise NettraceError(f"stack of {size} bytes is not a whole number of pointers", base + p)
            stacks.append(struct.unpack_from(f"<{size // pointer}{code}", blk, p + 4))
            p += 4 + size
        if p != n:
            raise NettraceError(f"{n - p} stray bytes after the last stack of a StackBlock", base + p)
        return StackBlock(first_id, tuple(stacks))


def _undefined(mid: int, offset: int) -> NettraceError:
    if mid == 0:
        return NettraceError("event blob carries no metadata id", offset)
    return NettraceError(f"event refers to metadata id {mid}, which was never defined", offset)


def _sequence_point(blk: bytes, base: int) -> SequencePoint:
    n = len(blk)
    if n < _SP_HEADER.size:
        raise NettraceError(f"SPBlock of {n} bytes is shorter than its 12-byte header", base)
    timestamp, count = _SP_HEADER.unpack_from(blk)
    if n != _SP_HEADER.size + count * _SP_THREAD.size:
        raise NettraceError(f"SPBlock of {n} bytes does not hold its {count} threads", base + 8)
    threads = dict(_SP_THREAD.iter_unpack(blk[_SP_HEADER.size :]))
    return SequencePoint(timestamp, threads)


_Blob = tuple[int, int, int, int, int, int, int, int, bytes, bytes, int, int]
"""(blob start, metadata id, sequence, capture thread, processor, thread, stack, timestamp,
activity, related activity, payload start, payload end) — positions within the block."""


def _compressed_payloads(blk: bytes, p: int, base: int) -> list[tuple[int, int]]:
    """Payload spans of compressed blobs, for metadata blocks (rare, so plain code)."""
    spans = []
    n = len(blk)
    psize = 0
    s = p
    try:
        while p < n:
            s = p
            f = blk[p]
            p += 1
            if f & 1:
                _, p = _uvarint32(blk, p)
            if f & 2:
                _, p = _uvarint32(blk, p)
                _, p = _uvarint64(blk, p)
                _, p = _uvarint32(blk, p)
            if f & 4:
                _, p = _uvarint64(blk, p)
            if f & 8:
                _, p = _uvarint32(blk, p)
            _, p = _uvarint64(blk, p)
            p += 16 * bool(f & 16) + 16 * bool(f & 32)
            if f & 128:
                psize, p = _uvarint32(blk, p)
            if p + psize > n:
                raise NettraceError("event blob runs past the end of its block", base + s)
            spans.append((p, p + psize))
            p += psize
    except IndexError:
        raise NettraceError("event blob runs past the end of its block", base + s) from None
    except _BadVarint as bad:
        raise NettraceError(f"varint longer than {bad.limit} bytes", base + bad.pos) from None
    return spans


def _uncompressed_blobs(blk: bytes, p: int, base: int) -> list[_Blob]:
    """Uncompressed (V4 without header compression) blobs: fixed 80-byte headers, 4-byte aligned."""
    blobs = []
    n = len(blk)
    while p < n:
        s = p
        if n - p < _UNCOMPRESSED.size:
            raise NettraceError("event blob runs past the end of its block", base + s)
        (size, mid, seq, tid, capture, proc, stack, ts, activity, related, psize) = _UNCOMPRESSED.unpack_from(
            blk, p
        )
        q = p + _UNCOMPRESSED.size
        end = q + psize
        if psize < 0 or end > n:
            raise NettraceError(f"event payload of {psize} bytes runs past the end of its block", base + s)
        aligned = end + (-(base + end) % 4)
        if size not in (end - s - 4, aligned - s - 4):
            raise NettraceError(f"event size {size} does not match its {psize}-byte payload", base + s)
        blobs.append((s, mid & 0x7FFF_FFFF, seq, capture, proc, tid, stack, ts, activity, related, q, end))
        if aligned <= n:
            p = aligned
        elif end == n:  # the block may end right after the last payload
            p = n
        else:
            raise NettraceError("event padding runs past the end of its block", base + end)
    return blobs


def _uncompressed_payloads(blk: bytes, p: int, base: int) -> list[tuple[int, int]]:
    return [(blob[10], blob[11]) for blob in _uncompressed_blobs(blk, p, base)]
