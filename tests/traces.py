"""Checks on whole nettrace artifacts, shared by the integration and end-to-end tests."""

from __future__ import annotations

from dnmon_agent.diagnostics.events import EndOfStream, Event, NettraceItem
from dnmon_agent.diagnostics.nettrace import NettraceDecoder


def decode(data: bytes) -> list[NettraceItem]:
    """Every item of a complete stream (``close`` raises if it was cut)."""
    decoder = NettraceDecoder()
    items = decoder.feed(data)
    decoder.close()
    return items


def assert_cpu_trace(data: bytes) -> None:
    """A CPU trace stopped gracefully: samples, the rundown that follows StopTracing, the end tag."""
    items = decode(data)
    assert isinstance(items[-1], EndOfStream)
    providers = {i.metadata.provider_name for i in items if isinstance(i, Event)}
    assert {"Microsoft-DotNETCore-SampleProfiler", "Microsoft-Windows-DotNETRuntimeRundown"} <= providers
