"""Nettrace decoder throughput on a real, large CPU trace from a .NET 8 process.

    .venv/bin/python -m benchmarks.bench_decoder [--mb 50] [--repeat 3] [--rerecord]

Records (or reuses from ``.dnmon-cache/bench/``) a verbose trace of at least ``--mb`` MiB —
SampleProfiler plus Microsoft-Windows-DotNETRuntime with every keyword at Verbose, against an
allocating, CPU-busy target — then measures on that file:

* ``skip``: ``NettraceDecoder(wants=lambda m: False)``: every event header walked, none kept;
* ``full``: ``NettraceDecoder()`` and ``event.fields`` touched on every event;
* ``plain``: the obvious pure-Python walker below (``struct.unpack_from`` per field, a varint
  function call per varint, a dict per event), as the yardstick.

Bytes are fed in 64 KiB chunks, as the agent reads them from the socket. Prints a markdown table
and writes ``benchmarks/out/decoder.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnmon_agent.diagnostics.events import Event
from dnmon_agent.diagnostics.ipc import EventPipeProvider, SessionConfiguration
from dnmon_agent.diagnostics.nettrace import NettraceDecoder

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".dnmon-cache" / "bench"
OUT = Path(__file__).resolve().parent / "out"
CHUNK = 1 << 16

VERBOSE_CPU = SessionConfiguration(
    providers=(
        EventPipeProvider("Microsoft-DotNETCore-SampleProfiler", 0, 5),
        EventPipeProvider("Microsoft-Windows-DotNETRuntime", 0xFFFF_FFFF_FFFF_FFFF, 5),
    ),
    circular_buffer_mb=256,
    request_rundown=True,
)


# -- the trace ----------------------------------------------------------------------------------


def _complete(path: Path) -> bool:
    decoder = NettraceDecoder(wants=lambda m: False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            decoder.feed(chunk)
    return decoder.ended


def trace_file(mb: int, rerecord: bool) -> Path:
    """A complete verbose trace of at least ``mb`` MiB, recorded once and cached."""
    from tests.dotnet import DotnetTarget  # test helpers: only needed to record
    from tests.record_fixtures import record

    path = CACHE / f"cpu_verbose_{mb}mb.nettrace"
    if path.exists() and not rerecord and _complete(path):
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    target = DotnetTarget.start("Busy.cs", "900", "alloc")
    try:
        with partial.open("wb") as out:
            recording = record(
                target.socket_path, VERBOSE_CPU, seconds=600.0, max_bytes=mb << 20, sink=out.write
            )
    finally:
        target.stop()
    if partial.stat().st_size < mb << 20:
        raise RuntimeError(f"only {partial.stat().st_size} bytes in {recording.stopped_after:.0f}s")
    if not _complete(partial):
        raise RuntimeError(f"{partial} has no end-of-stream tag")
    partial.replace(path)
    return path


# -- the yardstick: a plain walker --------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def plain_walk(data: bytes) -> int:
    """Decode every event header into a dict, the straightforward way; return the event count."""
    events: list[dict[str, Any]] = []
    pos = 32
    while data[pos] == 5:
        (name_len,) = struct.unpack_from("<i", data, pos + 11)
        name = data[pos + 15 : pos + 15 + name_len]
        pos += 16 + name_len
        if name == b"Trace":
            pos += 49
            continue
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        pos += -pos % 4
        end = pos + size
        if name == b"EventBlock":
            (header_size,) = struct.unpack_from("<h", data, pos)
            p = pos + header_size
            state = dict.fromkeys(
                ("metadata_id", "seq", "capture", "proc", "thread", "stack", "ts", "size"), 0
            )
            activity = related = bytes(16)
            while p < end:
                flags = data[p]
                p += 1
                if flags & 1:
                    state["metadata_id"], p = _varint(data, p)
                if flags & 2:
                    delta, p = _varint(data, p)
                    state["seq"] = (state["seq"] + delta + 1) & 0xFFFFFFFF
                    state["capture"], p = _varint(data, p)
                    state["proc"], p = _varint(data, p)
                elif state["metadata_id"]:
                    state["seq"] = (state["seq"] + 1) & 0xFFFFFFFF
                if flags & 4:
                    state["thread"], p = _varint(data, p)
                if flags & 8:
                    state["stack"], p = _varint(data, p)
                delta, p = _varint(data, p)
                state["ts"] = (state["ts"] + delta) & 0xFFFFFFFFFFFFFFFF
                if flags & 16:
                    activity = data[p : p + 16]
                    p += 16
                if flags & 32:
                    related = data[p : p + 16]
                    p += 16
                if flags & 128:
                    state["size"], p = _varint(data, p)
                payload = data[p : p + state["size"]]
                p += state["size"]
                events.append({**state, "activity": activity, "related": related, "payload": payload})
        pos = end + 1
    return len(events)


# -- measurement --------------------------------------------------------------------------------


def _chunks(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[start : start + CHUNK] for start in range(0, len(data), CHUNK)]


def run_skip(data: bytes) -> int:
    decoder = NettraceDecoder(wants=lambda m: False)
    for chunk in _chunks(data):
        decoder.feed(chunk)
    decoder.close()
    return 0


def run_full(data: bytes) -> int:
    decoder = NettraceDecoder()
    count = 0
    for chunk in _chunks(data):
        for item in decoder.feed(chunk):
            if type(item) is Event:
                item.fields  # noqa: B018 - decoding the payload is the point
                count += 1
    decoder.close()
    return count


def best_of(repeat: int, work: Callable[[], int]) -> tuple[float, int]:
    best = float("inf")
    result = 0
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="minimum trace size in MiB (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    parser.add_argument("--rerecord", action="store_true", help="record a fresh trace")
    parser.add_argument("--file", type=Path, help="measure this nettrace instead of recording one")
    args = parser.parse_args(argv)

    path = args.file or trace_file(args.mb, args.rerecord)
    data = path.read_bytes()
    megabytes = len(data) / 1e6

    full_seconds, events = best_of(args.repeat, lambda: run_full(data))
    skip_seconds, _ = best_of(args.repeat, lambda: run_skip(data))
    plain_seconds, plain_events = best_of(args.repeat, lambda: plain_walk(data))
    if plain_events != events:
        raise AssertionError(f"plain walker saw {plain_events} events, the decoder {events}")

    rows = {  # JSON key: (table label, seconds)
        "skip": ("skip (wants → False)", skip_seconds),
        "full": ("full (wants=None, .fields)", full_seconds),
        "plain": ("plain walker", plain_seconds),
    }
    results = {
        "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "bytes": len(data),
        "events": events,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "runs": {
            key: {
                "label": label,
                "seconds": round(seconds, 4),
                "events_per_second": round(events / seconds),
                "mb_per_second": round(megabytes / seconds, 2),
            }
            for key, (label, seconds) in rows.items()
        },
        "ratios": {
            "skip_vs_plain": round(plain_seconds / skip_seconds, 2),
            "full_vs_plain": round(plain_seconds / full_seconds, 2),
        },
        "goals_events_per_second": {"skip": 1_000_000, "full": 300_000},
    }
    print(f"{results['file']}: {len(data):,} bytes, {events:,} events, Python {results['python']}\n")
    print("| run | seconds | events/s | MB/s | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds in rows.values():
        print(
            f"| {label} | {seconds:.3f} | {events / seconds:,.0f} | {megabytes / seconds:.1f} "
            f"| {plain_seconds / seconds:.2f}x |"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decoder.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
