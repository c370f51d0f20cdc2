"""Agent CPU while decoding a live-metrics session: default providers, 1 s interval.

    .venv/bin/python -m benchmarks.bench_livemetrics_cpu [--seconds 60]

Runs ``dnmon capture metrics --interval 1`` (default providers: System.Runtime,
Microsoft.AspNetCore.Hosting, Grpc.AspNetCore.Server) as a subprocess against a .NET 8 target,
and reads that process's CPU time with psutil between 5 s after start (imports and session set-up
done) and the end. Goal: below 1 % of one core. Writes ``benchmarks/out/livemetrics_cpu.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from tests.dotnet import DotnetTarget

from benchmarks._results import save

WARMUP = 5.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    target = DotnetTarget.start("DemoApp.cs", "metrics")
    # A file, not a pipe: an unread pipe fills after 64 KiB and would stall the capture.
    with tempfile.TemporaryFile() as sink:
        try:
            duration = int(args.seconds + WARMUP + 2)
            command = [sys.executable, "-m", "dnmon_agent.cli", "capture", "metrics",
                       "--pid", str(target.pid), "--interval", "1", "--duration", str(duration)]  # fmt: skip
            proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE)
            watched = psutil.Process(proc.pid)
            time.sleep(WARMUP)
            cpu0, t0 = sum(watched.cpu_times()[:2]), time.monotonic()
            time.sleep(args.seconds)
            cpu1, t1 = sum(watched.cpu_times()[:2]), time.monotonic()
            rss = watched.memory_info().rss
            _, err = proc.communicate(timeout=duration + 60)
        finally:
            target.stop()
        sink.seek(0)
        records = sink.read().count(b"\x1e")
    percent = (cpu1 - cpu0) / (t1 - t0) * 100
    result = {
        "window_seconds": round(t1 - t0, 2),
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "cpu_percent_of_one_core": round(percent, 3),
        "rss_mb": round(rss / 2**20, 1),
        "records": records,
        "exit_code": proc.returncode,
        "goal_percent": 1.0,
    }
    if proc.returncode != 0:
        raise SystemExit(f"capture failed: {err.decode()}")
    return save("livemetrics_cpu", result)


if __name__ == "__main__":
    main()
