"""Record the real nettrace fixtures under tests/data from a real .NET 8 process.

    .venv/bin/python -m tests.record_fixtures [--only cpu_rundown|counters]

Speaks the diagnostics IPC protocol over a plain AF_UNIX socket with the sans-IO codec (the
real client lives elsewhere): CollectTracing2 on one connection, which then carries the
stream; StopTracing on a second connection while the first keeps draining (the runtime writes
rundown into the stream before it ends it, so a reader that stops reading stalls the stop).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dnmon_agent.diagnostics import ipc
from dnmon_agent.diagnostics.ipc import Command, EventPipeProvider, SessionConfiguration
from tests.dotnet import DotnetTarget

DATA = Path(__file__).resolve().parent / "data"

CPU_SAMPLING = SessionConfiguration(
    providers=(
        EventPipeProvider("Microsoft-DotNETCore-SampleProfiler", 0, 5),
        EventPipeProvider("Microsoft-Windows-DotNETRuntime", 0x14C14FCCBD, 4),
    ),
    circular_buffer_mb=256,
    request_rundown=True,
)
COUNTERS = SessionConfiguration(
    providers=(EventPipeProvider("System.Runtime", 0, 4, {"EventCounterIntervalSec": "1"}),),
    circular_buffer_mb=64,
    request_rundown=False,
)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def _command(path: Path, request: bytes, command: Command) -> tuple[socket.socket, bytes]:
    """Send one request; return the still-open socket and the OK reply's payload."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    sock.connect(str(path))
    sock.sendall(request)
    header = ipc.parse_reply_header(_recv_exactly(sock, ipc.HEADER_SIZE), command)
    payload = _recv_exactly(sock, header.payload_size)
    if not header.ok:
        sock.close()
        ipc.raise_error_reply(payload, command)
    return sock, payload


@dataclass
class Recording:
    data: bytes
    stopped_after: float
    total_seconds: float


def record(
    socket_path: Path,
    config: SessionConfiguration,
    *,
    seconds: float,
    max_bytes: int | None = None,
    sink: Callable[[bytes], object] | None = None,
    drain_timeout: float = 120.0,
) -> Recording:
    """Run one session for ``seconds`` (or until ``max_bytes`` arrived), stop it, drain to EOF.

    With ``sink`` the bytes go there instead of being kept (large benchmark traces).
    """
    session, payload = _command(socket_path, ipc.encode_collect_tracing2(config), Command.COLLECT_TRACING2)
    session_id = ipc.parse_session_id(payload, Command.COLLECT_TRACING2)
    chunks: list[bytes] = []
    received = 0
    eof = threading.Event()
    failure: list[BaseException] = []

    def drain() -> None:
        nonlocal received
        session.settimeout(drain_timeout)
        try:
            while True:
                chunk = session.recv(1 << 16)
                if not chunk:
                    break
                received += len(chunk)
                if sink is not None:
                    sink(chunk)
                else:
                    chunks.append(chunk)
        except BaseException as exc:  # reported by the caller
            failure.append(exc)
        finally:
            eof.set()

    started = time.monotonic()
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while time.monotonic() - started < seconds and not eof.is_set():
        if max_bytes is not None and received >= max_bytes:
            break
        time.sleep(0.05)
    stopped_after = time.monotonic() - started
    stop, _ = _command(socket_path, ipc.encode_stop_tracing(session_id), Command.STOP_TRACING)
    stop.close()
    if not eof.wait(drain_timeout):
        session.close()
        raise TimeoutError(f"the runtime did not end the session within {drain_timeout}s of StopTracing")
    reader.join()
    session.close()
    if failure:
        raise failure[0]
    return Recording(b"".join(chunks), stopped_after, time.monotonic() - started)


def record_cpu_rundown(out: Path) -> int:
    target = DotnetTarget.start("Busy.cs", "120")
    try:
        time.sleep(0.5)  # let the Fibonacci thread get going
        recording = record(target.socket_path, CPU_SAMPLING, seconds=2.0)
    finally:
        target.stop()
    out.write_bytes(recording.data)
    return len(recording.data)


def record_counters(out: Path) -> int:
    target = DotnetTarget.start("Busy.cs", "120")
    try:
        recording = record(target.socket_path, COUNTERS, seconds=3.2)
    finally:
        target.stop()
    out.write_bytes(recording.data)
    return len(recording.data)


FIXTURES: dict[str, Callable[[Path], int]] = {
    "cpu_rundown": record_cpu_rundown,
    "counters": record_counters,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(FIXTURES), action="append")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(FIXTURES):
        path = args.out / f"{name}.nettrace"
        size = FIXTURES[name](path)
        print(f"{path}: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
