"""Trace pass-through vs a raw drain of the same kind of session, in the same run.

    .venv/bin/python -m benchmarks.bench_passthrough [--seconds 8] [--rounds 3]

Against one allocating, CPU-busy .NET 8 target, alternately:

* ``raw``: CollectTracing2, then ``recv`` into a buffer and count — the ceiling;
* ``dnmon``: ``run_trace`` (framing check + graceful stop) writing to a file, as ``dnmon capture
  trace`` does.

Each session runs ``--seconds`` then stops gracefully and drains to EOF. Throughput = bytes ÷ time
from session start to EOF; our own process CPU is reported too. Writes ``benchmarks/out/passthrough.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import psutil
from tests.dotnet import DotnetTarget

from benchmarks._results import save
from dnmon_agent.diagnostics.client import DiagnosticsClient
from dnmon_agent.diagnostics.ipc import EventPipeProvider, SessionConfiguration
from dnmon_agent.pipelines.runner import StopControl, run_trace

CONFIG = SessionConfiguration(
    providers=(
        EventPipeProvider("Microsoft-DotNETCore-SampleProfiler", 0, 5),
        EventPipeProvider("Microsoft-Windows-DotNETRuntime", 0xFFFF_FFFF_FFFF, 5),
    ),
    circular_buffer_mb=256,
    request_rundown=True,
)


def raw_drain(client: DiagnosticsClient, seconds: float) -> int:
    session = client.start_session(CONFIG)
    buffer = memoryview(bytearray(1 << 16))
    total = 0
    deadline = time.monotonic() + seconds
    while True:
        if not session.stop_requested and time.monotonic() >= deadline:
            session.stop()
        n = session.read_into(buffer, 0.2)
        if n is None:
            continue
        if n == 0:
            break
        total += n
    session.close()
    return total


def dnmon_trace(client: DiagnosticsClient, seconds: float) -> int:
    with tempfile.NamedTemporaryFile("wb", suffix=".nettrace") as out:
        result = run_trace(client, CONFIG, out, duration=seconds, control=StopControl.new())
    return result.bytes_received


def measure(kind: str, client: DiagnosticsClient, seconds: float) -> dict[str, float]:
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    start = time.monotonic()
    size = raw_drain(client, seconds) if kind == "raw" else dnmon_trace(client, seconds)
    elapsed = time.monotonic() - start
    cpu = sum(me.cpu_times()[:2]) - cpu0
    return {"bytes": size, "seconds": elapsed, "mb_per_second": size / elapsed / 1e6, "cpu_seconds": cpu}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    target = DotnetTarget.start("Busy.cs", "3600", "alloc")
    try:
        client = DiagnosticsClient(target.socket_path)
        runs: dict[str, list[dict[str, float]]] = {"raw": [], "dnmon": []}
        for _ in range(args.rounds):
            for kind in ("raw", "dnmon"):
                runs[kind].append(measure(kind, client, args.seconds))
    finally:
        target.stop()
    median = {k: statistics.median(r["mb_per_second"] for r in v) for k, v in runs.items()}
    result = {
        "seconds_per_session": args.seconds,
        "rounds": args.rounds,
        "runs": runs,
        "median_mb_per_second": median,
        "ratio_dnmon_vs_raw": round(median["dnmon"] / median["raw"], 3),
        "goal_ratio": 0.95,
    }
    save("passthrough", result, show=False)
    print("| session | median MB/s | MB per session | our CPU s per session |")
    print("|---|---|---|---|")
    for kind, values in runs.items():
        mb = statistics.median(r["bytes"] for r in values) / 1e6
        cpu = statistics.median(r["cpu_seconds"] for r in values)
        print(f"| {kind} | {median[kind]:.2f} | {mb:.1f} | {cpu:.2f} |")
    print(f"\nratio dnmon / raw = {result['ratio_dnmon_vs_raw']} (goal ≥ 0.95)")
    return result


if __name__ == "__main__":
    main()
