"""The cost model's inputs, measured: every AWS request and every agent API call of one real agent,
idle and through one 60 s trace egressed to S3; and what each agent API invocation costs in Lambda.

    .venv/bin/python -m benchmarks.bench_cost [--idle-seconds 630] [--trace-seconds 60]

* moto in server mode (child process), the agent API behind the local AWS_IAM function URL, the API
  handler in-process (``benchmarks._stack``); one real ``Agent`` with production defaults (20 s long
  poll, 60 s lease renewed every 20 s, liveness every 600 s, a 1 s scan of the real machine);
* one real .NET 8 target (``tests/targets/Sleeper.cs 600``). It and the agent share a private
  ``TMPDIR`` and the agent discovers with ``DNMON_DISCOVERY=tmpdir`` (``--whole-machine`` scans every
  process instead): .NET processes that other work starts and stops on this machine would otherwise
  be changes the idle agent publishes;
* capture: ``POST /trace?pid=…&durationSeconds=60&egressProvider=s3`` and everything that follows
  until the operation has ended and its slot is free; the long polls that came back empty during it
  are the idle baseline, not the capture's;
* idle: a window of ``--idle-seconds`` (630 s holds exactly one 600 s liveness tick);
* every request is counted by ``benchmarks.counting.Meter``; DynamoDB write units are derived from
  the sizes of the items written (read back at the end) and the indexes each item is in.

Writes ``benchmarks/out/cost.json``; BENCHMARKS.md turns it into dollars with the fleet benchmark's
janitor counts.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from benchmarks._results import save
from benchmarks._stack import Stack, call_api, stack
from benchmarks.counting import AGENT, AwsCall, Invocation, Meter, route_of, tally

BODY = {"Providers": [{"Name": "Microsoft-Windows-DotNETRuntime", "Keywords": "0x1"}]}
MINUTES_PER_MONTH = 30 * 24 * 60
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}
READS = {"GetItem", "BatchGetItem", "Query"}


def item_size(value: Any) -> int:
    """DynamoDB's item size rule, approximately: names and values in bytes (numbers ~ digits/2 + 1)."""
    if isinstance(value, dict):
        return 3 + sum(len(str(k).encode()) + item_size(v) + 1 for k, v in value.items())
    if isinstance(value, list):
        return 3 + sum(item_size(v) + 1 for v in value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float | Decimal):
        return len(str(value).replace("-", "").replace(".", "")) // 2 + 2
    if isinstance(value, bytes):
        return len(value)
    return len(str(value).encode())


def table_items(st: Stack) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    while True:
        page = st.table.scan(**kwargs)
        for item in page["Items"]:
            items[f"{item['pk']}|{item['sk']}"] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def capacity(calls: list[AwsCall], items: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Write units: ceil(size / 1 KB) per item written, times (1 + the indexes it is in); an item
    gone by the end (deleted) counts 1. Read units: 1 per item read (strongly consistent, < 4 KB)."""
    write_units = 0
    read_units = 0.0
    for call in calls:
        if call.service != "dynamodb":
            continue
        if call.operation in WRITES:
            for key in call.keys:
                item = items.get(key)
                if item is None:
                    write_units += 1
                    continue
                indexes = sum(1 for g in ("gsi1pk", "gsi2pk") if g in item)
                write_units += math.ceil(item_size(item) / 1024) * (1 + indexes)
        elif call.operation in READS:
            read_units += max(1, len(call.keys)) if call.operation != "Query" else 0.5
    return {"write_units": write_units, "read_units": read_units}


def _describe(calls: list[AwsCall], invocations: list[Invocation], agent_api: list[Any]) -> dict[str, Any]:
    by_route: dict[str, list[Invocation]] = defaultdict(list)
    for inv in invocations:
        by_route[route_of(inv.route)].append(inv)
    return {
        "aws_by_actor": {
            actor: tally(f"{c.service}:{c.operation}" for c in calls if c.actor == actor)
            for actor in sorted({c.actor for c in calls})
        },
        "agent_api_calls": tally(route_of(c.path) for c in agent_api),
        "agent_api_aws_by_route": {
            route: {"invocations": len(invs), "aws": tally(op for i in invs for op in i.aws)}
            for route, invs in sorted(by_route.items())
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=630.0)
    parser.add_argument("--trace-seconds", type=int, default=60)
    parser.add_argument("--whole-machine", action="store_true", help="discover every process")
    args = parser.parse_args(argv)

    from tests.apigw import header
    from tests.dotnet import DotnetTarget

    from dnmon_agent.worker import Agent, AgentSettings
    from dnmon_core.operations import is_terminal
    from dnmon_core.store import OperationStore

    meter = Meter()
    target_env: dict[str, str] = {}
    if not args.whole_machine:
        private = tempfile.mkdtemp(prefix="dnmon-bench-cost-")
        os.environ.update({"TMPDIR": private, "DNMON_DISCOVERY": "tmpdir"})
        tempfile.tempdir = None
        target_env = {"TMPDIR": private}
    target = DotnetTarget.start("Sleeper.cs", "600", env=target_env)
    stop = threading.Event()
    try:
        with meter.installed(), stack(meter) as st:
            env = {**st.env, "DNMON_AGENT_ID": "cost-agent", "DNMON_HOST_NAME": "cost-host"}
            agent = Agent(AgentSettings.from_env(env))
            thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
            started = time.time()
            thread.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                response, _, _ = call_api(meter, "GET", "/processes", {"host": "cost-host"})
                if f'"pid": {target.pid},' in str(response.get("body")):
                    break
                time.sleep(0.5)
            time.sleep(2)

            # --- one capture ---------------------------------------------------------------------
            mark = meter.mark()
            query = {
                "pid": str(target.pid),
                "durationSeconds": str(args.trace_seconds),
                "egressProvider": "s3",
            }
            response, post_seconds, post_frame = call_api(meter, "POST", "/trace", query, BODY)
            if response["statusCode"] != 202:
                raise RuntimeError(f"POST /trace answered {response['statusCode']}: {response.get('body')}")
            operation_id = uuid.UUID(str(header(response, "Location")).rsplit("/", 1)[1])
            store = OperationStore(st.table)
            with meter.acting("check"):
                while True:
                    record = store.get(operation_id)
                    if is_terminal(record.status):
                        break
                    time.sleep(1.0)
            time.sleep(3)
            aws, agent_api, invocations = meter.since(mark)
            aws = [c for c in aws if c.actor != "check"]
            empty_polls = [c for c in aws if c.operation == "ReceiveMessage" and not c.returned]
            capture_calls = [c for c in aws if c not in empty_polls]
            capture = {
                "final_state": str(record.status),
                "error": record.error.model_dump() if record.error else None,
                "artifact": record.artifact,
                "aws_requests_total": len(capture_calls),
                "aws_requests_besides_s3_parts": sum(1 for c in capture_calls if c.operation != "UploadPart"),
                "s3_parts": sum(1 for c in capture_calls if c.operation == "UploadPart"),
                "empty_long_polls_during_capture_(idle_baseline)": len(empty_polls),
                "post_trace_aws": post_frame.calls,
                "post_trace_seconds": round(post_seconds, 4),
                **_describe(capture_calls, invocations, agent_api),
                "calls_in_order": [f"{c.actor} {c.service}:{c.operation}" for c in capture_calls],
            }

            # --- idle ----------------------------------------------------------------------------
            total = capture["aws_requests_total"]
            print(f"capture: {total} AWS requests; idle for {args.idle_seconds:.0f} s", flush=True)
            mark = meter.mark()
            idle_start = time.time()
            time.sleep(args.idle_seconds)
            idle_aws, idle_agent_api, idle_invocations = meter.since(mark)
            minutes = (time.time() - idle_start) / 60
            idle_aws = [c for c in idle_aws if c.actor in (AGENT, "agent-api")]
            items = table_items(st)
            all_invocations = list(meter.invocations)
            idle = {
                "window_seconds": round(minutes * 60, 1),
                "agent_started_seconds_before_window": round(idle_start - started, 1),
                "aws_requests_per_minute": round(len(idle_aws) / minutes, 4),
                "agent_api_calls_per_minute": round(len(idle_agent_api) / minutes, 4),
                "sqs_requests_per_minute": round(sum(1 for c in idle_aws if c.service == "sqs") / minutes, 4),
                "dynamodb_requests_per_minute": round(
                    sum(1 for c in idle_aws if c.service == "dynamodb") / minutes, 4
                ),
                "capacity_per_minute": {
                    k: round(v / minutes, 4) for k, v in capacity(idle_aws, items).items()
                },
                **_describe(idle_aws, idle_invocations, idle_agent_api),
            }
            capture["capacity"] = capacity(capture_calls, items)
            capture["item_sizes_bytes"] = {
                kind: max((item_size(v) for k, v in items.items() if k.startswith(prefix)), default=0)
                for kind, prefix in (("operation", "OP#"), ("agent META", "AGENT#"), ("slot", "SLOT#"))
            }
            durations: dict[str, list[float]] = defaultdict(list)
            for inv in all_invocations:
                durations[route_of(inv.route)].append(inv.seconds)
            lambda_ms = {
                route: {
                    "n": len(v),
                    "median_ms": round(statistics.median(v) * 1000, 2),
                    "max_ms": round(max(v) * 1000, 2),
                }
                for route, v in sorted(durations.items())
            }
    finally:
        stop.set()
        target.stop()
    return save(
        "cost",
        {
            "capture": capture,
            "idle": idle,
            "agent_api_duration_local": lambda_ms,
            "per_month_minutes": MINUTES_PER_MONTH,
            "discovery": "whole machine" if args.whole_machine else "DNMON_DISCOVERY=tmpdir, private TMPDIR",
        },
    )


if __name__ == "__main__":
    main()
