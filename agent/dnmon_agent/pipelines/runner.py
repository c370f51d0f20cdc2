"""Capture pipelines: an EventPipe session (source) joined to a sink, with graceful stop.

One pump serves both artifact kinds. It keeps draining the session socket at all times — the
runtime answers StopTracing only after it has written rundown into this very stream, so a
reader that stops reading deadlocks the stop (api-contract.md, "Runtime behaviour").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..diagnostics.client import DiagnosticsClient, EventPipeSession
from ..diagnostics.errors import DiagnosticsError, IpcError, NettraceError
from ..diagnostics.events import Event
from ..diagnostics.framing import NettraceFraming
from ..diagnostics.ipc import SessionConfiguration
from ..diagnostics.nettrace import NettraceDecoder
from .counters import CounterSink, CountersPipeline

READ_SIZE = 1 << 16
POLL_SECONDS = 0.2


class CaptureError(DiagnosticsError):
    """The capture could not finish as asked; whatever was received has been kept by the sink."""

    def __init__(self, message: str, *, code: str = "CaptureFailed", bytes_received: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.bytes_received = bytes_received


class CaptureCancelled(CaptureError):
    """Cancelled by the caller: the session was dropped without a graceful stop."""


class ByteSink(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class CaptureResult:
    bytes_received: int
    complete: bool  # the runtime wrote the end-of-stream tag
    stopped: bool  # a graceful stop (duration over or asked for) was sent


def _nothing() -> None:
    pass


@dataclass
class StopControl:
    """How a running capture learns it must end: ``stop`` gracefully or ``cancel`` at once.

    ``on_started`` runs once the EventPipe session is open (the operation becomes Running then).
    """

    stop: threading.Event
    cancel: threading.Event
    on_started: Callable[[], None] = _nothing

    @classmethod
    def new(cls, on_started: Callable[[], None] = _nothing) -> StopControl:
        return cls(threading.Event(), threading.Event(), on_started)


def pump(
    session: EventPipeSession,
    on_bytes: Callable[[memoryview], None],
    *,
    duration: float | None,
    control: StopControl,
    drain_timeout: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, bool]:
    """Read the session until EOF; return (bytes received, whether StopTracing was sent).

    ``duration`` None runs until ``control.stop``. After the stop the runtime writes rundown and
    closes the stream; ``drain_timeout`` bounds how long it may stay silent meanwhile.
    """
    deadline = None if duration is None else clock() + duration
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    total = 0
    silent_since: float | None = None
    while True:
        if control.cancel.is_set():
            session.close()
            raise CaptureCancelled("the capture was cancelled", code="Cancelled", bytes_received=total)
        if not session.stop_requested and (
            control.stop.is_set() or (deadline is not None and clock() >= deadline)
        ):
            session.stop()  # returns at once; the reply comes after the rundown we keep reading
        n = session.read_into(view, POLL_SECONDS)
        if n is None:
            if session.stop_requested:
                silent_since = silent_since or clock()
                if clock() - silent_since > drain_timeout:
                    session.close()
                    raise CaptureError(
                        f"the runtime did not end the session within {drain_timeout:.0f}s of StopTracing",
                        code="StopTimeout",
                        bytes_received=total,
                    )
            continue
        if n == 0:
            session.close()
            return total, session.stop_requested
        silent_since = None
        total += n
        on_bytes(view[:n])


def _cut_short(total: int, kept: str) -> CaptureError:
    return CaptureError(
        f"the stream ended without its end-of-stream tag after {total} bytes: the target process "
        f"exited or was killed during the capture{kept}",
        code="TargetExited",
        bytes_received=total,
    )


def _start(client: DiagnosticsClient, config: SessionConfiguration, control: StopControl) -> EventPipeSession:
    try:
        session = client.start_session(config)
    except IpcError as exc:
        raise CaptureError(
            f"could not start the EventPipe session: {exc}", code="SessionStartFailed"
        ) from exc
    control.on_started()
    return session


def run_trace(
    client: DiagnosticsClient,
    config: SessionConfiguration,
    sink: ByteSink,
    *,
    duration: float | None,
    control: StopControl,
) -> CaptureResult:
    """Pass the raw nettrace through to ``sink`` untouched; fail if the stream was cut."""
    session = _start(client, config, control)
    framing = NettraceFraming()
    framing_error: list[NettraceError] = []

    def on_bytes(chunk: memoryview) -> None:
        sink.write(bytes(chunk))
        if not framing_error:
            try:
                framing.feed(chunk)
            except NettraceError as exc:  # keep passing bytes through; report at the end
                framing_error.append(exc)

    try:
        total, stopped = pump(session, on_bytes, duration=duration, control=control)
    finally:
        session.close()
    if framing_error:
        raise CaptureError(f"the runtime sent a malformed stream: {framing_error[0]}", bytes_received=total)
    if not framing.ended:
        raise _cut_short(total, "; the bytes received so far were kept")
    return CaptureResult(total, True, stopped)


def run_live_metrics(
    client: DiagnosticsClient,
    pipeline: CountersPipeline,
    sink: CounterSink,
    *,
    duration: float | None,
    control: StopControl,
    buffer_mb: int = 256,
) -> CaptureResult:
    """Decode only the events the pipeline wants and hand each Metric record to ``sink``."""
    config = SessionConfiguration(
        tuple(pipeline.providers()), circular_buffer_mb=buffer_mb, request_rundown=False
    )
    session = _start(client, config, control)
    decoder = NettraceDecoder(wants=pipeline.wants)

    def on_bytes(chunk: memoryview) -> None:
        for item in decoder.feed(chunk):
            if isinstance(item, Event):
                for metric in pipeline.handle(item):
                    sink.write(metric)

    try:
        total, stopped = pump(session, on_bytes, duration=duration, control=control)
    except NettraceError as exc:
        raise CaptureError(f"the runtime sent a malformed stream: {exc}") from exc
    finally:
        session.close()
    if not decoder.ended:
        raise _cut_short(total, "")
    return CaptureResult(total, True, stopped)
