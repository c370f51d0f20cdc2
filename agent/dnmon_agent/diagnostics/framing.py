"""Object-level nettrace framing, sans-IO: did the stream end with its end-of-stream tag?

A trace is passed through untouched, but the capture must still know whether the runtime
finished it (end tag) or it was cut (target killed). Walking only object headers and skipping
block bodies by their size costs a few operations per block, not per event, so pass-through
stays at raw-drain speed.
"""

from __future__ import annotations

import struct

from .errors import NettraceError

MAGIC = b"Nettrace"
_SERIALIZATION = b"!FastSerialization.1"
_STREAM_HEADER = len(MAGIC) + 4 + len(_SERIALIZATION)  # 32
_BEGIN_OBJECT, _END_OBJECT, _NULL_REFERENCE = 0x05, 0x06, 0x01
_TRACE_BODY = 48
MAX_BLOCK = 64 << 20


class NettraceFraming:
    """Feed stream bytes; ``ended`` turns true at the end tag. Holds at most one object header."""

    def __init__(self) -> None:
        self.offset = 0  # absolute bytes consumed
        self.ended = False
        self._pending = bytearray()  # header bytes of the object being parsed
        self._skip = 0  # body bytes still to skip
        self._expect_end_object = False
        self._started = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, n = 0, len(view)
        while pos < n:
            if self.ended:
                raise NettraceError("data after the end-of-stream tag", self.offset)
            if self._skip:  # inside a block body: count it, never copy it
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                self.offset += step
                continue
            self._pending += view[pos:]
            pos = n
            consumed = self._parse()
            del self._pending[:consumed]
            self.offset += consumed

    def _parse(self) -> int:
        """Consume complete headers from ``_pending``; return how many bytes were consumed."""
        buf = self._pending
        pos = 0
        while True:
            if not self._started:
                if len(buf) - pos < _STREAM_HEADER:
                    return pos
                if buf[0:8] != MAGIC:
                    raise NettraceError("not a nettrace stream (magic 'Nettrace' missing)", self.offset)
                if buf[8:12] != struct.pack("<I", len(_SERIALIZATION)) or buf[12:32] != _SERIALIZATION:
                    raise NettraceError(
                        "unsupported nettrace container (not FastSerialization V4/V5)", self.offset
                    )
                pos = _STREAM_HEADER
                self._started = True
                continue
            if self._expect_end_object:
                if len(buf) - pos < 1:
                    return pos
                if buf[pos] != _END_OBJECT:
                    raise NettraceError(f"expected EndObject, got 0x{buf[pos]:02X}", self.offset + pos)
                pos += 1
                self._expect_end_object = False
                continue
            if self._skip:
                return pos
            if len(buf) - pos < 1:
                return pos
            tag = buf[pos]
            if tag == _NULL_REFERENCE:
                if len(buf) > pos + 1:
                    raise NettraceError("data after the end-of-stream tag", self.offset + pos + 1)
                self.ended = True
                return pos + 1
            if tag != _BEGIN_OBJECT:
                raise NettraceError(f"expected an object or the end tag, got 0x{tag:02X}", self.offset + pos)
            # 05 | 05 01 version:i32 minVersion:i32 nameLen:i32 name 06 | body
            if len(buf) - pos < 15:
                return pos
            if buf[pos + 1] != _BEGIN_OBJECT or buf[pos + 2] != _NULL_REFERENCE:
                raise NettraceError("malformed type object header", self.offset + pos + 1)
            (name_len,) = struct.unpack_from("<i", buf, pos + 11)
            if not 0 < name_len <= 64:
                raise NettraceError(f"type name length {name_len} out of range", self.offset + pos + 11)
            head = pos + 15 + name_len + 1
            if len(buf) < head:
                return pos
            name = bytes(buf[pos + 15 : head - 1])
            if buf[head - 1] != _END_OBJECT:
                raise NettraceError("type object not closed", self.offset + head - 1)
            if name == b"Trace":
                body = _TRACE_BODY
                start = head
            else:
                if len(buf) < head + 4:
                    return pos
                (size,) = struct.unpack_from("<i", buf, head)
                if not 0 <= size <= MAX_BLOCK:
                    raise NettraceError(f"block size {size} out of range", self.offset + head)
                start = head + 4
                padding = -(self.offset + start) % 4  # content is 4-byte aligned in the stream
                body = padding + size
            available = len(buf) - start
            if available >= body:
                pos = start + body
                self._expect_end_object = True
                continue
            self._skip = body - available
            self._expect_end_object = True
            return len(buf)
