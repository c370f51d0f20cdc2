"""Hostile input: mutated and truncated real captures must give a NettraceError or a decode.

Nothing else may escape (no IndexError, struct.error, UnicodeDecodeError, RecursionError…), no
input may hang, and the outcome must not depend on how the bytes were chunked. Bounded so the
file runs well under a minute on two cores.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnmon_agent.diagnostics.errors import NettraceError, NettraceTruncatedError
from dnmon_agent.diagnostics.events import Event
from dnmon_agent.diagnostics.nettrace import NettraceDecoder
from tests.unit.nettrace_builder import STREAM_HEADER, StreamBuilder, assert_chunking_invariant, run_decoder

DATA = Path(__file__).resolve().parent.parent / "data"
FILES = {"counters": DATA / "counters.nettrace", "cpu": DATA / "cpu_rundown.nettrace"}
FUZZ = settings(
    max_examples=400,
    deadline=5000,  # ms per example: generous, but a hang fails
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)


@cache
def capture(name: str) -> bytes:
    return FILES[name].read_bytes()


@cache
def structure(name: str) -> tuple[int, ...]:
    """Offsets where framing lives: object headers, block headers, the first blobs of blocks."""
    data = capture(name)
    spots = list(range(0, 40))
    pos = len(STREAM_HEADER)
    while data[pos] == 0x05:
        (length,) = struct.unpack_from("<i", data, pos + 11)
        head = pos + 16 + length
        spots += range(pos, head + 8)
        if data[pos + 15 : head - 1] == b"Trace":
            pos = head + 49
            continue
        (size,) = struct.unpack_from("<i", data, head)
        start = head + 4 + (-(head + 4) % 4)
        spots += range(start, min(start + 48, start + size))
        spots += range(start + size - 4, start + size + 1)
        pos = start + size + 1
    spots.append(pos)
    return tuple(sorted(set(spots)))


def decode_everything(data: bytes, wants=None) -> None:
    """Feed, close, and decode every payload; only NettraceError may come out."""
    decoder = NettraceDecoder(wants)
    try:
        items = decoder.feed(data)
        decoder.close()
    except NettraceError as exc:
        assert "internal decoder error" not in exc.reason, exc
        assert 0 <= exc.offset <= len(data)
        return
    for item in items:
        if isinstance(item, Event):
            try:
                item.fields  # noqa: B018
            except NettraceError as exc:
                assert 0 <= exc.offset <= len(item.payload)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    data = bytearray(capture(name))
    spots = structure(name)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.sampled_from(spots)) if draw(st.booleans()) else draw(st.integers(0, len(data) - 1))
        pos = min(pos, len(data) - 1)
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(
                st.sampled_from([0x00, 0x01, 0x05, 0x06, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))])
            )
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(mutated("counters"))
def test_mutated_counters_capture(data: bytes) -> None:
    decode_everything(data)
    decode_everything(data, wants=lambda m: False)
    assert_chunking_invariant(data, bytewise=True, seeds=1)


@FUZZ
@given(mutated("cpu"))
def test_mutated_cpu_capture(data: bytes) -> None:
    decode_everything(data)
    decode_everything(data, wants=lambda m: m.provider_name.endswith("SampleProfiler"))
    assert_chunking_invariant(data, bytewise=False, seeds=1)
    # skipping and decoding walk the same headers, so they must fail (or not) identically
    assert run_decoder(data).error == run_decoder(data, wants=lambda m: False).error


@settings(max_examples=300, deadline=5000)
@given(st.binary(max_size=600))
def test_garbage_after_a_valid_trace_object(tail: bytes) -> None:
    data = StreamBuilder().trace().build() + tail
    decode_everything(data)
    assert_chunking_invariant(data, seeds=1)


@settings(max_examples=300, deadline=5000)
@given(st.binary(max_size=64))
def test_garbage_from_the_first_byte(data: bytes) -> None:
    decode_everything(data)
    assert_chunking_invariant(data, seeds=1)


def test_every_prefix_of_a_real_capture_is_only_truncated() -> None:
    """A cut stream is never 'malformed': any prefix waits for more and close() says truncated."""
    data = capture("counters")
    for cut in [*range(0, 200), *range(200, len(data), 97)]:
        outcome = run_decoder(data[:cut])
        assert outcome.error is not None and outcome.error[0] is NettraceTruncatedError, (cut, outcome.error)
