"""Freshness: a .NET app starts → ``GET /processes`` lists it, with the production 1 s scan.

    .venv/bin/python -m benchmarks.bench_freshness [--starts 5]

One real agent (production defaults, discovery of the whole machine) against moto in server mode;
the agent API behind the local AWS_IAM function URL; the API handler in-process. For each start,
``tests/targets/Sleeper.cs 600`` is launched and ``GET /processes?host=…`` is asked every 50 ms
until the new pid is listed. The clock starts just before the process is spawned (``Popen``), so
the figure includes the runtime's own start-up until its diagnostics socket exists. The time
until ``DotnetTarget.start`` returns (socket accepting, ``ready`` printed) is reported beside it. Starts
are spaced 2 to 3 s apart at random, so they fall at random points of the 1 s scan period.

Writes ``benchmarks/out/freshness.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from typing import Any

from benchmarks._results import save
from benchmarks._stack import call_api, stack
from benchmarks.counting import Meter


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    from tests.dotnet import DotnetTarget, build_app

    from dnmon_agent.worker import Agent, AgentSettings

    build_app("Sleeper.cs")  # compiled once, outside the measurement
    meter = Meter()
    stop = threading.Event()
    rounds: list[dict[str, Any]] = []
    with meter.installed(), stack(meter) as st:
        env = {**st.env, "DNMON_AGENT_ID": "fresh-agent", "DNMON_HOST_NAME": "fresh-host"}
        agent = Agent(AgentSettings.from_env(env))
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        time.sleep(3)  # registered, first scan done
        try:
            for _ in range(args.starts):
                spawned = time.monotonic()
                target = DotnetTarget.start("Sleeper.cs", "600")
                ready = time.monotonic() - spawned
                listed: float | None = None
                try:
                    while time.monotonic() - spawned < args.timeout:
                        response, _, _ = call_api(meter, "GET", "/processes", {"host": "fresh-host"})
                        if any(p["pid"] == target.pid for p in json.loads(response["body"])):
                            listed = time.monotonic() - spawned
                            break
                        time.sleep(0.05)
                finally:
                    target.stop()
                rounds.append({"pid": target.pid, "ready_seconds": round(ready, 3), "listed_seconds": listed})
                print(rounds[-1], flush=True)
                # The exit is published before the next start; the random part keeps the starts from
                # locking onto the watcher's 1 s tick (a fixed pause did: every start just before it).
                time.sleep(2 + random.random())
        finally:
            stop.set()
            thread.join(timeout=30)
    listed_times = [r["listed_seconds"] for r in rounds if r["listed_seconds"] is not None]
    return save(
        "freshness",
        {
            "starts": len(rounds),
            "listed": len(listed_times),
            "listed_median_seconds": round(statistics.median(listed_times), 3) if listed_times else None,
            "listed_max_seconds": round(max(listed_times), 3) if listed_times else None,
            "ready_median_seconds": round(statistics.median(r["ready_seconds"] for r in rounds), 3),
            "goal_seconds": 2.0,
            "scan_seconds": 1.0,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
