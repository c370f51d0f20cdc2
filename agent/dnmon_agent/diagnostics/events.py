"""Typed items the nettrace decoder yields: small classes, no behaviour beyond derived views.

The decoder hands these out in stream order: one ``TraceInfo`` first, then ``EventMetadata`` as
metadata records arrive, ``Event`` for every event the caller wants, ``StackBlock`` and
``SequencePoint`` as those blocks arrive, and finally ``EndOfStream``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any


class TypeCode(IntEnum):
    """System.TypeCode values used by nettrace field descriptors (19 = array, V2 params only)."""

    OBJECT = 1
    BOOLEAN = 3  # 4 bytes on the wire
    CHAR = 4
    SBYTE = 5
    BYTE = 6
    INT16 = 7
    UINT16 = 8
    INT32 = 9
    UINT32 = 10
    INT64 = 11
    UINT64 = 12
    SINGLE = 13
    DOUBLE = 14
    DECIMAL = 15
    DATETIME = 16
    GUID = 17
    STRING = 18
    ARRAY = 19


@dataclass(frozen=True, slots=True)
class FieldDescriptor:
    """One payload field: its name, type, nested fields (Object) or element type (Array)."""

    name: str
    type_code: int
    fields: tuple[FieldDescriptor, ...] = ()
    element: FieldDescriptor | None = None


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """The Trace object: the clock that turns event timestamps into UTC, and the target's shape."""

    sync_time_utc: datetime
    sync_time_qpc: int
    qpc_frequency: int
    pointer_size: int
    process_id: int
    number_of_processors: int
    expected_cpu_sampling_rate: int

    def to_datetime(self, timestamp: int) -> datetime:
        """Wall clock of a raw event timestamp (QPC ticks)."""
        seconds = (timestamp - self.sync_time_qpc) / self.qpc_frequency
        return self.sync_time_utc + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class EventMetadata:
    """A metadata record: what events with ``metadata_id`` are and how their payload is laid out.

    ``fields`` is ``None`` when the record carries no field list (native runtime events: their
    layout lives in the CLR manifest, not in the stream).
    """

    metadata_id: int
    provider_name: str
    event_id: int
    event_name: str
    keywords: int
    version: int
    level: int
    opcode: int | None = None
    fields: tuple[FieldDescriptor, ...] | None = None


@dataclass(slots=True, eq=False)
class Event:
    """One event. ``payload`` is the raw bytes; ``fields`` decodes them by the metadata's layout.

    ``timestamp`` is in raw QPC ticks so the hot path creates no datetime; ``time`` converts.
    Treat instances as read-only.
    """

    metadata: EventMetadata
    sequence_number: int
    capture_thread_id: int
    thread_id: int
    processor_number: int
    stack_id: int
    timestamp: int
    activity_id: bytes
    related_activity_id: bytes
    payload: bytes
    trace: TraceInfo
    _fields: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def time(self) -> datetime:
        return self.trace.to_datetime(self.timestamp)

    @property
    def fields(self) -> dict[str, Any]:
        """Payload decoded by the metadata's field list (``{}`` when the event has none)."""
        if self._fields is None:
            self._fields = (_decode_payload or _bind_decoder())(self.metadata, self.payload)
        return self._fields


_decode_payload: Callable[[EventMetadata, bytes], dict[str, Any]] | None = None


def _bind_decoder() -> Callable[[EventMetadata, bytes], dict[str, Any]]:
    """Import the payload decoder once: a relative import per ``fields`` call costs microseconds."""
    global _decode_payload
    from .payload import decode_payload  # payload.py imports this module

    _decode_payload = decode_payload
    return decode_payload


@dataclass(frozen=True, slots=True)
class StackBlock:
    """Call stacks referenced by ``Event.stack_id``: id → instruction pointers, leaf first."""

    first_id: int
    stacks: tuple[tuple[int, ...], ...]

    def get(self, stack_id: int) -> tuple[int, ...] | None:
        index = stack_id - self.first_id
        return self.stacks[index] if 0 <= index < len(self.stacks) else None


@dataclass(frozen=True, slots=True)
class SequencePoint:
    """A sequence point: per capture thread, the last sequence number written (drop detection)."""

    timestamp: int
    threads: dict[int, int]


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The runtime's end-of-stream tag: the session ended and the stream is complete."""

    offset: int


NettraceItem = TraceInfo | EventMetadata | Event | StackBlock | SequencePoint | EndOfStream

EPOCH_FILETIME = datetime(1601, 1, 1, tzinfo=UTC)
