"""The nettrace decoder on hand-built streams (one construct at a time) and on real captures.

Every stream is fed whole, byte by byte and in random chunks, and must give the same items
(``assert_chunking_invariant``). Real captures come from tests/data (tests/record_fixtures.py).
"""

from __future__ import annotations

import ast
import struct
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dnmon_agent.diagnostics import nettrace
from dnmon_agent.diagnostics.errors import NettraceError, NettraceTruncatedError
from dnmon_agent.diagnostics.events import (
    EndOfStream,
    Event,
    EventMetadata,
    FieldDescriptor,
    SequencePoint,
    StackBlock,
    TraceInfo,
    TypeCode,
)
from dnmon_agent.diagnostics.nettrace import MAX_BLOCK_SIZE, NettraceDecoder
from tests.unit.nettrace_builder import (
    M32,
    M64,
    STREAM_HEADER,
    Blob,
    StreamBuilder,
    assert_chunking_invariant,
    blob_block,
    blob_from,
    compressed_blob,
    events_in_sequence,
    metadata_record,
    record_for,
    run_decoder,
    snapshot,
    tag,
    type_header,
    utf16z,
    varint,
)

DATA = Path(__file__).resolve().parent.parent / "data"
CPU = DATA / "cpu_rundown.nettrace"
COUNTERS = DATA / "counters.nettrace"

F = FieldDescriptor
INT32 = TypeCode.INT32
PROVIDER = "Dnmon-Test"


def base() -> StreamBuilder:
    return StreamBuilder().trace()


def one_metadata(**kwargs: Any) -> StreamBuilder:
    """A stream with metadata id 1: a single Int32 field ``n``."""
    return base().metadata([metadata_record(1, PROVIDER, 7, "Tick", fields=(F("n", INT32),), **kwargs)])


def n(value: int) -> bytes:
    return struct.pack("<i", value)


def decode(data: bytes, wants=None) -> list[Any]:
    """Decode (checking chunking invariance) and return the real items."""
    outcome = assert_chunking_invariant(data, wants)
    assert outcome.error is None, outcome.error
    decoder = NettraceDecoder(wants)
    items = decoder.feed(data)
    decoder.close()
    assert [snapshot(i) for i in items] == outcome.items
    return items


def events_of(items: list[Any]) -> list[Event]:
    return [i for i in items if isinstance(i, Event)]


def error_of(data: bytes, wants=None) -> tuple[type, str, int]:
    outcome = assert_chunking_invariant(data, wants)
    assert outcome.error is not None, "expected a NettraceError"
    return outcome.error


# -- container ----------------------------------------------------------------------------------


def test_minimal_stream() -> None:
    data = base().end().build()
    items = decode(data)
    assert [type(i) for i in items] == [TraceInfo, EndOfStream]
    info = items[0]
    assert info.sync_time_utc == datetime(2024, 5, 17, 13, 45, 30, 250_000, tzinfo=UTC)
    assert (info.sync_time_qpc, info.qpc_frequency, info.pointer_size) == (1_000_000_000, 1_000_000_000, 8)
    assert (info.process_id, info.number_of_processors, info.expected_cpu_sampling_rate) == (
        4242,
        2,
        1_000_000,
    )
    assert items[1] == EndOfStream(len(data) - 1)


def test_decoder_properties_follow_the_stream() -> None:
    data = one_metadata().end().build()
    decoder = NettraceDecoder()

    def state() -> tuple[int, bool, bool, set[int]]:
        return decoder.offset, decoder.trace_info is not None, decoder.ended, set(decoder.metadata)

    assert state() == (0, False, False, set())
    decoder.feed(data[:40])
    assert state() == (32, False, False, set())
    decoder.feed(data[40:-1])
    assert state() == (len(data) - 1, True, False, {1})
    decoder.feed(data[-1:])
    assert state() == (len(data), True, True, {1})
    decoder.close()
    decoder.close()  # idempotent
    assert decoder.feed(b"") == []


def test_event_time_uses_the_trace_clock() -> None:
    data = one_metadata().events([Blob(1, n(1), 1, 9, 0, 9, 0, 1_000_000_000 + 1_500_000)]).end().build()
    (event,) = events_of(decode(data))
    assert event.time == datetime(2024, 5, 17, 13, 45, 30, 251_500, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b"Netperf!" + bytes(30), "not a nettrace stream", 0),
        (b"\x00" * 40, "not a nettrace stream", 0),
        (STREAM_HEADER[:4] + b"?", "not a nettrace stream", 0),
        (struct.pack("<i", 20) + b"!FastSerialization.1" + b"\x05", "NetPerf", 0),
        (b"Nettrace" + struct.pack("<iii", 0, 6, 0), "V6", 12),
        (b"Nettrace" + struct.pack("<iii", 0, 7, 0), "V7", 12),
        (b"Nettrace" + struct.pack("<iii", 0, 5, 0), "versioning header", 12),
        (b"Nettrace" + struct.pack("<i", 21) + b"!FastSerialization.1x", "container", 8),
        (b"Nettrace" + struct.pack("<i", 20) + b"!FastSerialization.2", "serializer", 12),
    ],
)
def test_unsupported_or_foreign_streams_are_typed_errors(data: bytes, reason: str, offset: int) -> None:
    kind, message, at = error_of(data)
    assert kind is NettraceError and reason in message and at == offset


def test_errors_come_as_soon_as_the_bytes_prove_them() -> None:
    decoder = NettraceDecoder()
    with pytest.raises(NettraceError, match="not a nettrace"):
        decoder.feed(b"X")
    decoder = NettraceDecoder()
    assert decoder.feed(b"Nettrace" + struct.pack("<i", 0)) == []
    with pytest.raises(NettraceError, match="V6"):
        decoder.feed(struct.pack("<i", 6))


def test_trace_object_versions_and_order() -> None:
    assert (
        "Trace object version 5" in error_of(StreamBuilder().trace(version=5, min_version=5).end().build())[1]
    )
    assert error_of(StreamBuilder().trace(version=3, min_version=3).end().build())[1].startswith(
        "Trace object"
    )
    # A newer Trace version that old readers may still read is accepted.
    assert isinstance(decode(StreamBuilder().trace(version=5, min_version=4).end().build())[0], TraceInfo)
    no_trace = StreamBuilder().stacks(1, [[1]]).end().build()
    assert error_of(no_trace)[1].startswith("the first object must be Trace")
    twice = base().trace().end().build()
    assert error_of(twice)[1] == "a second Trace object"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sync": (2024, 13, 0, 1, 0, 0, 0, 0)}, "SyncTimeUTC"),
        ({"frequency": 0}, "QPCFrequency"),
        ({"pointer_size": 2}, "pointer size"),
    ],
)
def test_trace_body_is_validated(change: dict[str, Any], reason: str) -> None:
    assert reason in error_of(StreamBuilder().trace(**change).end().build())[1]


def test_pointer_size_4_stacks() -> None:
    data = StreamBuilder().trace(pointer_size=4).stacks(5, [[0x1000, 0x2000], [0xFFFFFFFF]]).end().build()
    (stacks,) = [i for i in decode(data) if isinstance(i, StackBlock)]
    assert stacks == StackBlock(5, ((0x1000, 0x2000), (0xFFFFFFFF,)))


def test_blocks_are_aligned_on_absolute_offsets() -> None:
    # Unknown objects with names of 1..4 bytes shift the following block to every alignment.
    builder = base()
    for length in range(1, 5):
        builder.block(b"X" * length, b"\xaa" * length)
        builder.stacks(length, [[length]])
    data = builder.end().build()
    stacks = [i for i in decode(data) if isinstance(i, StackBlock)]
    assert stacks == [StackBlock(k, ((k,),)) for k in range(1, 5)]
    # and the padding really varied (otherwise the test proves nothing)
    pads = set()
    pos = data.index(b"StackBlock")
    while pos != -1:
        size_at = pos + len(b"StackBlock") + 1
        pads.add(-(size_at + 4) % 4)
        pos = data.find(b"StackBlock", pos + 1)
    assert pads == {0, 1, 2, 3}


def test_unknown_objects_are_skipped_by_size() -> None:
    builder = one_metadata().block(b"FutureBlock", b"\x05\x01\x06" * 10, version=9, min_version=9)
    data = builder.events(events_in_sequence(1, [n(5)])).end().build()
    assert [e.fields for e in events_of(decode(data))] == [{"n": 5}]


@pytest.mark.parametrize("name", [b"EventBlock", b"MetadataBlock", b"StackBlock", b"SPBlock"])
def test_known_blocks_with_a_newer_minimum_reader_version_are_refused(name: bytes) -> None:
    data = base().block(name, b"", version=3, min_version=3).end().build()
    _, reason, offset = error_of(data)
    assert "minimum reader version 3" in reason
    assert offset == len(STREAM_HEADER) + 1 + len(type_header(b"Trace", 4, 4)) + 48 + 1 + 3


def test_framing_errors_carry_the_absolute_offset() -> None:
    start = len(base().build())
    bad_tag = base().raw(b"\x07").build()
    assert error_of(bad_tag)[1:] == (
        "expected an object (0x05) or the end-of-stream tag (0x01), found 0x07",
        start,
    )
    bad_type = base().raw(b"\x05\x06" + bytes(20)).build()
    assert error_of(bad_type)[2] == start + 1
    bad_null = base().raw(b"\x05\x05\x02" + bytes(20)).build()
    assert error_of(bad_null)[2] == start + 2
    long_name = base().raw(b"\x05\x05\x01" + struct.pack("<iii", 2, 2, 65) + b"x" * 80).build()
    assert error_of(long_name)[1:] == ("type name length 65 out of range", start + 11)
    unclosed_type = base().raw(b"\x05\x05\x01" + struct.pack("<iii", 2, 2, 3) + b"abc\x07" + bytes(8)).build()
    assert error_of(unclosed_type)[1:] == ("type object not closed by 0x06", start + 18)
    data = bytearray(base().stacks(1, [[1]]).end().build())
    data[-2] = 0x07  # the StackBlock's EndObject
    assert error_of(bytes(data))[1:] == ("StackBlock object not closed by 0x06", len(data) - 2)


def test_block_sizes_are_bounded_before_anything_is_buffered() -> None:
    for size in (MAX_BLOCK_SIZE + 1, -4, 0x7FFFFFFF):
        header = base().raw(b"\x05" + type_header(b"EventBlock", 2, 2) + struct.pack("<i", size)).build()
        decoder = NettraceDecoder()
        with pytest.raises(NettraceError, match=r"size .* out of range") as caught:
            decoder.feed(header)
        assert caught.value.offset == len(header) - 4


def test_end_tag_and_data_after_it() -> None:
    data = base().end().build()
    kind, reason, offset = error_of(data + b"\x05")
    assert (kind, reason, offset) == (NettraceError, "data after the end-of-stream tag", len(data))
    decoder = NettraceDecoder()
    decoder.feed(data)
    with pytest.raises(NettraceError, match="after the end") as caught:
        decoder.feed(b"\x00")
    assert caught.value.offset == len(data)


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 40, 100, -2, -1])
def test_truncation_waits_then_close_reports_it(cut: int) -> None:
    data = one_metadata().events(events_in_sequence(1, [n(1), n(2)])).end().build()
    prefix = data[:cut] if cut >= 0 else data[: len(data) + cut]
    outcome = assert_chunking_invariant(prefix)
    assert outcome.error is not None and outcome.error[0] is NettraceTruncatedError
    decoder = NettraceDecoder()
    decoder.feed(prefix)
    with pytest.raises(NettraceTruncatedError) as caught:
        decoder.close()
    assert caught.value.offset == decoder.offset <= len(prefix)
    with pytest.raises(NettraceTruncatedError):
        decoder.close()  # stays failed


def test_a_failed_decoder_stays_failed() -> None:
    decoder = NettraceDecoder()
    with pytest.raises(NettraceError) as first:
        decoder.feed(b"garbage!")
    with pytest.raises(NettraceError) as again:
        decoder.feed(STREAM_HEADER)
    assert again.value is first.value
    with pytest.raises(NettraceError):
        decoder.close()


def test_caller_buffers_are_copied_not_kept() -> None:
    data = one_metadata().events(events_in_sequence(1, [n(1), n(2)])).end().build()
    decoder = NettraceDecoder()
    scratch = bytearray(len(data))
    items = []
    for pos in range(0, len(data), 7):  # like a socket reader reusing one buffer
        piece = data[pos : pos + 7]
        scratch[: len(piece)] = piece
        items += decoder.feed(memoryview(scratch)[: len(piece)])
        scratch[:] = bytes(len(scratch))
    assert [e.fields["n"] for e in events_of(items)] == [1, 2]


def test_only_the_incomplete_tail_is_buffered() -> None:
    builder = one_metadata()
    for block in range(200):
        builder.events(events_in_sequence(1, [n(block)] * 50))
    data = builder.end().build()
    decoder = NettraceDecoder(wants=lambda m: False)
    largest = 0
    for pos in range(0, len(data), 4096):
        decoder.feed(data[pos : pos + 4096])
        largest = max(largest, len(decoder._buf) - decoder._pos)
    assert decoder.ended and largest < 4096 + 600  # one block is ~550 bytes


# -- metadata -----------------------------------------------------------------------------------


def test_metadata_record_with_nested_v1_fields() -> None:
    fields = (
        F("", TypeCode.OBJECT, (F("Payload", TypeCode.OBJECT, (F("Name", TypeCode.STRING), F("Mean", 14))),)),
        F("Count", INT32),
    )
    record = metadata_record(3, "System.Runtime", 19, "EventCounters", keywords=0xF00000000002, fields=fields)
    (_, meta, _) = decode(base().metadata([record]).end().build())
    assert meta == EventMetadata(3, "System.Runtime", 19, "EventCounters", 0xF00000000002, 0, 4, None, fields)


def test_metadata_without_field_info_or_with_zero_fields_has_fields_none() -> None:
    records = [
        metadata_record(1, "Microsoft-Windows-DotNETRuntime", 80, version=1, level=2),  # ends after Level
        metadata_record(2, "Microsoft-Windows-DotNETRuntime", 81, fields=()),  # FieldCount 0
    ]
    metas = [i for i in decode(base().metadata(records).end().build()) if isinstance(i, EventMetadata)]
    assert [(m.metadata_id, m.event_id, m.version, m.level, m.fields) for m in metas] == [
        (1, 80, 1, 2, None),
        (2, 81, 0, 4, None),
    ]


def test_v5_tags_opcode_v2_params_and_unknown_kinds() -> None:
    v2 = (
        F("count", INT32),
        F("values", TypeCode.ARRAY, element=F("", TypeCode.DOUBLE)),
        F("pairs", TypeCode.ARRAY, element=F("", TypeCode.OBJECT, (F("Key", 18), F("Value", 18)))),
        F("nested", TypeCode.ARRAY, element=F("", TypeCode.ARRAY, element=F("", TypeCode.BYTE))),
        F("point", TypeCode.OBJECT, (F("x", INT32), F("y", INT32))),
    )
    record = metadata_record(
        4, PROVIDER, 2, "Start", opcode=1, v2_fields=v2, v2_padding=3, extra_tags=[tag(99, b"future")]
    )
    metas = [i for i in decode(base().metadata([record]).end().build()) if isinstance(i, EventMetadata)]
    assert metas == [EventMetadata(4, PROVIDER, 2, "Start", 0, 0, 4, 1, v2)]


def test_opcode_only_record() -> None:
    record = metadata_record(5, PROVIDER, 3, "Stop", opcode=2)
    (meta,) = [i for i in decode(base().metadata([record]).end().build()) if isinstance(i, EventMetadata)]
    assert (meta.opcode, meta.fields) == (2, None)


def test_uncompressed_metadata_block() -> None:
    records = [metadata_record(i, PROVIDER, i, f"E{i}", fields=(F("n", INT32),)) for i in (1, 2, 3)]
    metas = [
        i
        for i in decode(base().metadata(records, compressed=False).end().build())
        if isinstance(i, EventMetadata)
    ]
    assert [m.event_name for m in metas] == ["E1", "E2", "E3"]


def _record_error(record: bytes) -> tuple[str, int]:
    data = base().metadata([record]).end().build()
    kind, reason, offset = error_of(data)
    assert kind is NettraceError and data.count(record) == 1
    return reason, offset - data.index(record)  # offset within the record


@pytest.mark.parametrize(
    ("record", "reason", "at"),
    [
        (struct.pack("<I", 1) + "Prov".encode("utf-16-le"), "provider name: UTF-16 string without", 4),
        (struct.pack("<I", 0) + utf16z("P") + bytes(24), "reserved", 0),
        (struct.pack("<I", 1) + utf16z("P") + struct.pack("<i", 1), "event name", 12),
        # the header takes 30 bytes here: id 4, "P" 4, event id 4, "" 2, keywords 8, version 4, level 4
        (metadata_record(1, "P", fields=())[:30] + n(1000), "field count 1000", 30),
        (metadata_record(1, "P", fields=())[:30] + n(-1), "field count -1", 30),
        (metadata_record(1, "P", fields=(F("x", 2),)), "unsupported field type code 2", 34),
        (metadata_record(1, "P", fields=(F("x", 19),)), "unsupported field type code 19", 34),
        (metadata_record(1, "P", fields=(F("x", INT32),))[:-2], "field name: UTF-16 string without", 38),
        (metadata_record(1, "P", fields=()) + struct.pack("<iB", 5, 1) + b"\x01", "tag size 5", 34),
        (metadata_record(1, "P", fields=()) + struct.pack("<iB", 0, 1), "opcode runs past", 39),
        (metadata_record(1, "P", fields=()) + b"\x01\x00", "metadata tag size runs past", 34),
        (metadata_record(1, "P", v2_fields=(F("x", 20),)), "unsupported field type code 20", 51),
        (
            metadata_record(1, "P", fields=()) + tag(2, n(1) + n(2) + bytes(8)),
            "smaller than its own size",
            43,
        ),
    ],
)
def test_malformed_metadata_records(record: bytes, reason: str, at: int) -> None:
    got_reason, got_at = _record_error(record)
    assert reason in got_reason
    assert got_at == at


def test_field_nesting_is_bounded() -> None:
    deep = F("leaf", INT32)
    for _ in range(40):
        deep = F("o", TypeCode.OBJECT, (deep,))
    reason, _ = _record_error(metadata_record(1, "P", fields=(deep,)))
    assert "nested deeper" in reason


def test_a_redefined_metadata_id_replaces_the_old_one() -> None:
    first = metadata_record(1, PROVIDER, 1, "Old", fields=(F("n", INT32),))
    second = metadata_record(1, PROVIDER, 2, "New", fields=(F("m", INT32),))
    data = base().metadata([first]).metadata([second]).events(events_in_sequence(1, [n(3)])).end().build()
    (event,) = events_of(decode(data))
    assert (event.metadata.event_name, event.fields) == ("New", {"m": 3})


# -- wants --------------------------------------------------------------------------------------


def _two_providers() -> StreamBuilder:
    records = [
        metadata_record(1, "Keep", 1, "A", fields=(F("n", INT32),)),
        metadata_record(2, "Drop", 2, "B", fields=(F("n", INT32),)),
    ]
    blobs = []
    for i in range(10):
        blobs.append(Blob(1 + i % 2, n(i), i + 1, 77, 0, 77, 0, 1_000_000_000 + i * 10))
    return base().metadata(records).events(blobs).events(blobs[::-1]).end()


def test_wants_is_asked_once_per_record_and_filters_events() -> None:
    asked: list[str] = []

    def wants(meta: EventMetadata) -> bool:
        asked.append(meta.provider_name)
        return meta.provider_name == "Keep"

    data = _two_providers().build()
    decoder = NettraceDecoder(wants)
    items = decoder.feed(data)
    decoder.close()
    assert asked == ["Keep", "Drop"]
    assert [m.provider_name for m in items if isinstance(m, EventMetadata)] == ["Keep", "Drop"]
    assert set(decoder.metadata) == {1, 2}
    kept = events_of(items)
    assert [e.fields["n"] for e in kept] == [0, 2, 4, 6, 8, 8, 6, 4, 2, 0]
    # the kept events carry the same header state as in a full decode
    everything = [snapshot(e) for e in events_of(decode(data))]
    assert [snapshot(e) for e in kept] == [s for s in everything if s[1].provider_name == "Keep"]
    assert_chunking_invariant(data, wants, bytewise=False)


def test_skipping_everything_yields_no_events() -> None:
    data = _two_providers().build()
    items = decode(data, wants=lambda m: False)
    assert not events_of(items) and sum(isinstance(i, EventMetadata) for i in items) == 2


def test_a_failing_wants_propagates_unchanged_and_fails_the_decoder() -> None:
    def wants(meta: EventMetadata) -> bool:
        raise KeyError("boom")

    decoder = NettraceDecoder(wants)
    with pytest.raises(KeyError, match="boom") as first:
        decoder.feed(_two_providers().build())
    with pytest.raises(KeyError) as again:
        decoder.feed(b"")
    assert again.value is first.value


# -- compressed event headers -------------------------------------------------------------------


def test_every_header_field_round_trips() -> None:
    act, rel = bytes(range(16)), bytes(range(16, 32))
    blobs = [
        Blob(1, n(1), 1, 100, 3, 200, 5, 1_000_000_000, act, rel, sorted=True),
        Blob(1, n(2), 2, 100, 3, 201, 5, 1_000_000_007, act, bytes(16)),
        Blob(1, n(3) + b"xx", 3, 100, 3, 201, 6, 1_000_000_009),
        Blob(1, n(4), 10, 300, 1, 300, 300, 1_000_000_003),  # dropped events: sequence jumps
        Blob(1, b"", 11, 300, 1, 2**40, 2**31, 2**63 + 5),
    ]
    events = events_of(decode(one_metadata().events(blobs).end().build()))
    assert [blob_from(e) for e in events] == [replace(b, sorted=False) for b in blobs]


def test_the_worked_example_of_the_spec() -> None:
    # protocols.md §2.3, first EventBlock event of a real capture, bytes as printed there.
    blob = bytes.fromhex("CF 01 00 987E FFFFFFFF0F 987E 01 ACD092FA8A77 8C01") + bytes(range(140))
    data = one_metadata().block(b"EventBlock", struct.pack("<hhqq", 20, 1, 0, 0) + blob).end().build()
    (event,) = events_of(decode(data))
    assert (event.metadata.metadata_id, event.sequence_number, event.capture_thread_id) == (1, 1, 16152)
    assert (event.processor_number, event.thread_id, event.stack_id) == (M32, 16152, 1)
    assert (event.timestamp, event.payload) == (4091749378092, bytes(range(140)))
    # and the test encoder writes exactly these bytes for these values
    values = Blob(1, bytes(range(140)), 1, 16152, M32, 16152, 1, 4091749378092, sorted=True)
    assert compressed_blob(values, Blob(0)) == blob


def test_state_resets_at_every_block() -> None:
    blobs = [Blob(1, n(1), 1, 16152, M32, 16152, 1, 4091723615017)]
    data = one_metadata().events(blobs).events(blobs).end().build()
    first, second = events_of(decode(data))
    assert snapshot(first) == snapshot(second)
    # A block whose first blob relies on the previous block's metadata id is malformed.
    carry = blob_block([Blob(1, n(1), 1, 5, 0, 5)])
    carry = carry[:20] + bytes([carry[20] & ~1]) + carry[22:]  # drop flag 0x01 and the id
    reason = error_of(one_metadata().block(b"EventBlock", carry).end().build())[1]
    assert reason == "event blob carries no metadata id"


def test_sequence_numbers_wrap_modulo_2_32() -> None:
    blobs = [
        Blob(1, n(0), M32 - 1, 9, 0, 9, 0, 10),
        Blob(1, n(1), M32, 9, 0, 9, 0, 11),
        Blob(1, n(2), 0, 9, 0, 9, 0, 12),
        Blob(1, n(3), 1, 9, 0, 9, 0, 13),
    ]
    events = events_of(decode(one_metadata().events(blobs).end().build()))
    assert [e.sequence_number for e in events] == [M32 - 1, M32, 0, 1]


def test_metadata_blob_headers_match_the_runtime() -> None:
    # 8.0.4 metadata blobs: flags 0xC6, seq delta 0xFFFFFFFF (net 0), capture 0, proc 0xFFFFFFFF.
    content = blob_block([Blob(0, metadata_record(1, "P", fields=()), 0, 0, M32, 42, 0, 5, sorted=True)])
    real = COUNTERS.read_bytes()
    first_blob = real.index(b"MetadataBlock") + len(b"MetadataBlock") + 1 + 4 + 1 + 20  # size, 1 pad, header
    assert content[20:32] == real[first_blob : first_blob + 12] == bytes.fromhex("c6ffffffff0f00ffffffff0f")
    assert content[21:26] == varint(M32)


def test_timestamps_wrap_modulo_2_64() -> None:
    # Events of different threads are not time-sorted inside a block: deltas "go negative".
    times = [1_000_000_000, 999_999_000, 2_000_000_000, 5, M64, 0]
    blobs = [Blob(1, n(i), i + 1, 9, 0, 9, 0, t) for i, t in enumerate(times)]
    assert all(b.timestamp <= M64 for b in blobs)
    events = events_of(decode(one_metadata().events(blobs).end().build()))
    assert [e.timestamp for e in events] == times


def test_multibyte_varints_of_every_length() -> None:
    values = [0, 1, 127, 128, 16383, 16384, 2**21, 2**28, 2**32 - 1]
    blobs = [Blob(1, bytes(v % 300), i + 1, v, v, v, v, v * 7) for i, v in enumerate(values)]
    events = events_of(decode(one_metadata().events(blobs).end().build()))
    assert [(e.capture_thread_id, e.processor_number, e.thread_id, e.stack_id) for e in events] == [
        (v, v, v, v) for v in values
    ]
    assert [len(e.payload) for e in events] == [v % 300 for v in values]


def test_block_header_size_and_reserved_bytes() -> None:
    data = one_metadata().events(events_in_sequence(1, [n(1)]), header_size=27).end().build()
    assert [e.fields for e in events_of(decode(data))] == [{"n": 1}]
    for size in (19, 400):
        content = struct.pack("<hhqq", size, 1, 0, 0)
        reason = error_of(one_metadata().block(b"EventBlock", content).end().build())[1]
        assert reason == f"EventBlock header size {size} out of range"
    reason = error_of(one_metadata().block(b"EventBlock", bytes(8)).end().build())[1]
    assert reason == "EventBlock of 8 bytes is shorter than its 20-byte header"


def _event_block_error(content: bytes, wants=None) -> tuple[str, int]:
    data = one_metadata().block(b"EventBlock", content).end().build()
    _, reason, offset = error_of(data, wants)
    start = data.index(content)
    return reason, offset - start


@pytest.mark.parametrize("wants", [None, lambda m: False], ids=["decode", "skip"])
def test_malformed_compressed_blobs(wants) -> None:
    good = compressed_blob(Blob(1, n(1), 1, 5, 0, 5, 0, 99), Blob(0))  # 87 01 00 05 00 05 63 04 …
    header = struct.pack("<hhqq", 20, 1, 0, 0)
    # undefined metadata id
    other = compressed_blob(Blob(9, n(1), 1, 5, 0, 5, 0, 99), Blob(0))
    assert _event_block_error(header + good + other, wants) == (
        "event refers to metadata id 9, which was never defined",
        20 + len(good),
    )
    # a varint longer than 10 bytes (timestamp) / 5 bytes (metadata id)
    assert _event_block_error(header + b"\x00" + b"\xff" * 10 + b"\x01", wants) == (
        "varint longer than 10 bytes",
        21,
    )
    assert _event_block_error(header + b"\x01" + b"\x81" * 5 + b"\x00\x00", wants) == (
        "varint longer than 5 bytes",
        21,
    )
    # a varint cut by the block end, a payload beyond it, a header beyond it
    for content in (header + b"\x00\x81\x81", header + good[:-1], header + good + b"\x80"):
        assert _event_block_error(content, wants) == (
            "event blob runs past the end of its block",
            20 if content != header + good + b"\x80" else 20 + len(good),
        )
    assert _event_block_error(header + good + b"\x30\x05" + bytes(20), wants)[1] == 20 + len(good)


def test_skip_and_decode_report_identical_errors_on_corrupted_real_blocks() -> None:
    data = bytearray(CPU.read_bytes())
    for pos in range(2000, len(data), 19937):
        for value in (0xFF, 0x00, 0x80):
            mutated = bytes(data[:pos]) + bytes([value]) + bytes(data[pos + 1 :])
            full = run_decoder(mutated)
            skip = run_decoder(mutated, wants=lambda m: False)
            assert full.error == skip.error


# -- uncompressed (V4 without header compression) ------------------------------------------------


def test_uncompressed_event_blocks_with_padding() -> None:
    payloads = [b"", b"\x01", n(2) + b"\x03", n(4) + n(5)]
    blobs = [Blob(1, p, i + 1, 50, 1, 60, i, 10 + i, sorted=i == 0) for i, p in enumerate(payloads)]
    data = base().metadata([metadata_record(1, "P", fields=())]).events(blobs, compressed=False).end().build()
    events = events_of(decode(data))
    assert [(e.payload, e.sequence_number, e.thread_id, e.capture_thread_id, e.stack_id) for e in events] == [
        (p, i + 1, 60, 50, i) for i, p in enumerate(payloads)
    ]


def test_uncompressed_blob_errors() -> None:
    header = struct.pack("<hhqq", 20, 0, 0, 0)
    short = header + bytes(40)
    assert _event_block_error(short) == ("event blob runs past the end of its block", 20)
    blob = struct.pack("<iIIQQIIQ16s16si", 76 + 100, 1, 1, 0, 0, 0, 0, 0, bytes(16), bytes(16), 100)
    assert "runs past the end" in _event_block_error(header + blob)[0]
    blob = struct.pack("<iIIQQIIQ16s16si", 99, 1, 1, 0, 0, 0, 0, 0, bytes(16), bytes(16), 4)
    assert _event_block_error(header + blob + n(0)) == ("event size 99 does not match its 4-byte payload", 20)
    blob = struct.pack("<iIIQQIIQ16s16si", 79, 9, 1, 0, 0, 0, 0, 0, bytes(16), bytes(16), 3)
    assert (
        _event_block_error(header + blob + b"abc\x00")[0]
        == "event refers to metadata id 9, which was never defined"
    )


# -- stacks and sequence points -----------------------------------------------------------------


def test_stack_and_sequence_point_blocks() -> None:
    data = base().stacks(1, [[0x7F00, 0x7F10, 0x7F20], [], [2**64 - 1]]).sequence_point(123, {7: 3, 8: M32})
    items = decode(data.end().build())
    assert items[1] == StackBlock(1, ((0x7F00, 0x7F10, 0x7F20), (), (2**64 - 1,)))
    assert items[1].get(3) == (2**64 - 1,) and items[1].get(4) is None
    assert items[2] == SequencePoint(123, {7: 3, 8: M32})


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x01\x00\x00", "shorter than its 8-byte header"),
        (struct.pack("<II", 1, 1000), "stack count 1000"),
        (struct.pack("<III", 1, 1, 12) + bytes(12), "not a whole number of pointers"),
        (struct.pack("<III", 1, 1, 16) + bytes(8), "runs past the end"),
        (struct.pack("<III", 1, 1, 8) + bytes(8) + b"\x00", "stray bytes"),
        (struct.pack("<II", 1, 2) + struct.pack("<I", 0), "stack count 2"),
        (struct.pack("<III", 1, 2, 8) + bytes(8) + b"\x00\x00", "stack runs past the end"),
    ],
)
def test_malformed_stack_blocks(content: bytes, reason: str) -> None:
    assert reason in error_of(base().block(b"StackBlock", content).end().build())[1]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (bytes(8), "shorter than its 12-byte header"),
        (struct.pack("<QI", 1, 2) + bytes(12), "does not hold its 2 threads"),
        (struct.pack("<QI", 1, 0) + bytes(1), "does not hold its 0 threads"),
    ],
)
def test_malformed_sequence_points(content: bytes, reason: str) -> None:
    assert reason in error_of(base().block(b"SPBlock", content).end().build())[1]


# -- real captures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_items() -> list[Any]:
    return decode(CPU.read_bytes())


@pytest.fixture(scope="module")
def counter_items() -> list[Any]:
    return decode(COUNTERS.read_bytes())


def test_real_counters_capture(counter_items: list[Any]) -> None:
    info = counter_items[0]
    assert isinstance(info, TraceInfo) and info.qpc_frequency == 1_000_000_000 and info.pointer_size == 8
    assert isinstance(counter_items[-1], EndOfStream)
    everything = events_of(counter_items)
    events = [e for e in everything if e.metadata.event_name == "EventCounters"]
    assert {e.metadata.provider_name for e in events} == {"System.Runtime"}
    # and the session's ProcessInfo event (protocols.md §6 trap 18), nothing else
    assert [e.metadata.event_name for e in everything if e not in events] == ["ProcessInfo"]
    payloads = [e.fields[""]["Payload"] for e in events]
    names = Counter(p["Name"] for p in payloads)
    assert len(names) == 27 and len(set(names.values())) == 1  # every counter, every interval
    for p in payloads:
        assert p["CounterType"] in ("Mean", "Sum") and p["Series"] == "Interval=1000"
        assert 0.9 < p["IntervalSec"] < 1.1
    cpu = next(p for p in payloads if p["Name"] == "cpu-usage")
    assert list(cpu) == [
        "Name", "DisplayName", "Mean", "StandardDeviation", "Count", "Min", "Max",
        "IntervalSec", "Series", "CounterType", "Metadata", "DisplayUnits",
    ]  # fmt: skip
    assert cpu["DisplayName"] == "CPU Usage" and cpu["DisplayUnits"] == "%"


def test_real_cpu_capture(cpu_items: list[Any]) -> None:
    info = cpu_items[0]
    events = events_of(cpu_items)
    by_name = Counter((e.metadata.provider_name, e.metadata.event_id) for e in events)
    samples = [e for e in events if e.metadata.provider_name == "Microsoft-DotNETCore-SampleProfiler"]
    assert len(samples) > 500
    assert {struct.unpack("<I", s.payload)[0] for s in samples} <= {1, 2}
    assert by_name[("Microsoft-Windows-DotNETRuntimeRundown", 144)] > 100  # MethodDCEndVerbose
    (process_info,) = [e for e in events if e.metadata.provider_name == "Microsoft-DotNETCore-EventPipe"]
    assert set(process_info.fields) == {"CommandLine", "OSInformation", "ArchInformation"}
    assert "Busy.dll" in process_info.fields["CommandLine"]
    # Stack ids resolve within the stack blocks since the last sequence point.
    stacks: dict[int, tuple[int, ...]] = {}
    for item in cpu_items:
        if isinstance(item, StackBlock):
            stacks.update({item.first_id + i: s for i, s in enumerate(item.stacks)})
        elif isinstance(item, Event) and item.stack_id:
            assert item.stack_id in stacks
    # Sequence numbers count up by one per capture thread (no drops in a small capture), and the
    # final sequence point agrees with the last one seen.
    last: dict[int, int] = {}
    for e in events:
        if e.capture_thread_id in last:
            assert e.sequence_number == (last[e.capture_thread_id] + 1) & M32
        last[e.capture_thread_id] = e.sequence_number
    (point,) = [i for i in cpu_items if isinstance(i, SequencePoint)]
    assert {t: s for t, s in point.threads.items() if t in last} == {
        t: last[t] for t in point.threads if t in last
    }
    # Timestamps (modulo 2^64) stay within the session.
    assert all(info.sync_time_qpc - 10**9 < e.timestamp <= point.timestamp for e in events)


def test_real_capture_round_trips_through_the_builder(cpu_items: list[Any]) -> None:
    """Re-encode every decoded item with the test encoder (compressed and not) and decode again."""
    metas = [i for i in cpu_items if isinstance(i, EventMetadata)]
    events = events_of(cpu_items)
    for compressed in (True, False):
        builder = base().metadata([record_for(m) for m in metas], compressed=compressed)
        for start in range(0, len(events), 500):
            builder.events([blob_from(e) for e in events[start : start + 500]], compressed=compressed)
        again = events_of(decode(builder.end().build()))
        assert [snapshot(e) for e in again] == [snapshot(e) for e in events]


def test_real_capture_with_a_selective_wants(cpu_items: list[Any]) -> None:
    def wants(meta: EventMetadata) -> bool:
        return meta.provider_name == "Microsoft-DotNETCore-SampleProfiler"

    chosen = events_of(decode(CPU.read_bytes(), wants))
    assert [snapshot(e) for e in chosen] == [snapshot(e) for e in events_of(cpu_items) if wants(e.metadata)]


def test_every_real_payload_with_fields_decodes(cpu_items: list[Any], counter_items: list[Any]) -> None:
    decoded: defaultdict[bool, int] = defaultdict(int)
    for e in events_of(cpu_items + counter_items):
        fields = e.fields
        decoded[e.metadata.fields is None] += 1
        if e.metadata.fields is None:
            assert fields == {}
    assert decoded[False] > 80 and decoded[True] > 1000


def test_truncated_real_captures_report_truncation() -> None:
    data = CPU.read_bytes()
    for cut in (len(data) // 3, len(data) - 1):
        outcome = run_decoder(data[:cut], iter([4096] * 10_000))
        assert outcome.error is not None and outcome.error[0] is NettraceTruncatedError
        assert outcome.items and not outcome.ended


# -- the module's own rules ---------------------------------------------------------------------


def test_decoder_modules_do_no_io() -> None:
    from dnmon_agent.diagnostics import payload

    for module in (nettrace, payload):
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"socket", "asyncio", "boto3", "os", "io", "selectors"}


def test_fields_are_decoded_once() -> None:
    data = one_metadata().events(events_in_sequence(1, [n(1)])).end().build()
    (event,) = events_of(decode(data))
    assert event.fields is event.fields  # decoded once
