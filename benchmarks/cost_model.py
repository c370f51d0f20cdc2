"""The cost model: measured request counts (``out/cost.json``, ``out/fleet.json``) times list prices.

    .venv/bin/python -m benchmarks.cost_model

Run ``bench_cost`` and ``bench_fleet`` first. Prices are us-east-1 list prices, free tiers ignored.
Writes ``benchmarks/out/cost_model.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from benchmarks._results import OUT, save

PER_MILLION = {
    "sqs": 0.40,  # requests
    "dynamodb_write_unit": 0.625,
    "dynamodb_read_unit": 0.125,
    "s3_put": 5.00,  # $0.005 per 1,000 PUT/COPY/POST/LIST (PutObject, multipart calls)
    "api_gateway_rest": 3.50,
    "lambda_request": 0.20,
    "kms_sign_ecc": 15.00,  # $0.15 per 10,000 asymmetric requests other than RSA 2048
    "kms_symmetric": 3.00,  # $0.03 per 10,000: the price the issue quotes, for comparison
}
LAMBDA_GB_SECOND_ARM64 = 0.0000133334
LAMBDA_GB = 0.5  # infra/template.yaml Globals: MemorySize 512
KMS_KEY_MONTH = 1.00
MINUTES_PER_MONTH = 30 * 24 * 60
RUNS_PER_MONTH = 30 * 24  # the janitor: rate(1 hour)


def lambda_cost(invocations: float, seconds_each: float) -> float:
    billed = math.ceil(seconds_each * 1000) / 1000  # billed per 1 ms
    return invocations * (PER_MILLION["lambda_request"] / 1e6 + billed * LAMBDA_GB * LAMBDA_GB_SECOND_ARM64)


def _count(tallies: dict[str, dict[str, int]], service: str, operations: set[str] | None = None) -> int:
    return sum(
        n
        for ops in tallies.values()
        for name, n in ops.items()
        if name.startswith(f"{service}:") and (operations is None or name.split(":", 1)[1] in operations)
    )


def capture_cost(cost: dict[str, Any]) -> dict[str, Any]:
    c = cost["capture"]
    tallies = c["aws_by_actor"]
    durations = cost["agent_api_duration_local"]
    invocations = {route: v["invocations"] for route, v in c["agent_api_aws_by_route"].items()}
    agent_api = sum(lambda_cost(n, durations[route]["median_ms"] / 1000) for route, n in invocations.items())
    lines = {
        "API Gateway REST (POST /trace)": PER_MILLION["api_gateway_rest"] / 1e6,
        "Lambda: API function (POST /trace)": lambda_cost(1, c["post_trace_seconds"]),
        "Lambda: agent API invocations": agent_api,
        "KMS Sign (ECC P-256)": _count(tallies, "kms", {"Sign"}) * PER_MILLION["kms_sign_ecc"] / 1e6,
        "SQS (send, receive, delete)": _count(tallies, "sqs") * PER_MILLION["sqs"] / 1e6,
        "DynamoDB writes": c["capacity"]["write_units"] * PER_MILLION["dynamodb_write_unit"] / 1e6,
        "DynamoDB reads": c["capacity"]["read_units"] * PER_MILLION["dynamodb_read_unit"] / 1e6,
        "S3 PUT-class requests": _count(tallies, "s3") * PER_MILLION["s3_put"] / 1e6,
    }
    return {
        "aws_requests": c["aws_requests_total"],
        "aws_requests_besides_s3_parts": c["aws_requests_besides_s3_parts"],
        "agent_api_invocations": sum(invocations.values()),
        "dollars": {k: round(v, 9) for k, v in lines.items()},
        "total_dollars": round(sum(lines.values()), 8),
        "per_million_captures_dollars": round(sum(lines.values()) * 1e6, 2),
    }


def idle_cost(cost: dict[str, Any]) -> dict[str, Any]:
    """SQS long polls and liveness, per minute as measured. A process change inside the window
    (the target exits after its 600 s) is not idle: it is priced separately."""
    i = cost["idle"]
    minutes = i["window_seconds"] / 60
    durations = cost["agent_api_duration_local"]
    alive_ms = durations.get("/alive", {"median_ms": 10.0})["median_ms"]
    alive = i["agent_api_aws_by_route"].get("/alive", {"invocations": 0})["invocations"] / minutes
    per_month = {
        "sqs_requests": i["sqs_requests_per_minute"] * MINUTES_PER_MONTH,
        "agent_api_invocations (/alive)": alive * MINUTES_PER_MONTH,
        "dynamodb_write_units (liveness PutItem, 1 unit)": alive * MINUTES_PER_MONTH,
    }
    lines = {
        "SQS long polls": per_month["sqs_requests"] * PER_MILLION["sqs"] / 1e6,
        "Lambda: agent API /alive": lambda_cost(alive * MINUTES_PER_MONTH, alive_ms / 1000),
        "DynamoDB writes (liveness)": alive * MINUTES_PER_MONTH * PER_MILLION["dynamodb_write_unit"] / 1e6,
    }
    change = i["agent_api_aws_by_route"].get("/processes")
    process_change = None
    if change:
        ms = durations["/processes"]["median_ms"]
        # UpdateItem of the agent item (in gsi1: 2 units), BatchWriteItem of index items (1 unit
        # each: 5 per process added or removed), BatchGetItem of META + LIVE (2 units).
        dollars = (
            lambda_cost(1, ms / 1000)
            + (2 + 5) * PER_MILLION["dynamodb_write_unit"] / 1e6
            + 2 * PER_MILLION["dynamodb_read_unit"] / 1e6
        )
        process_change = {"aws": change["aws"], "dollars": round(dollars, 9)}
    return {
        "per_month_requests": {k: round(v, 1) for k, v in per_month.items()},
        "alive_invocation_ms_assumed": alive_ms,
        "dollars": {k: round(v, 6) for k, v in lines.items()},
        "total_dollars": round(sum(lines.values()), 6),
        "one_process_change_publish": process_change,
    }


def janitor_cost(fleet: dict[str, Any], hosts: int) -> float:
    """One run per hour; its requests scale with the fleet (pages of 100 agents, 1,000 queues)."""
    levels = fleet["api_by_fleet_size"]
    largest = max((n for n in levels if "janitor sweep" in levels[n]), key=int)
    run = levels[largest]["janitor sweep"]
    scale = hosts / int(largest)
    ops = run["aws_operations"]
    queries = ops.get("dynamodb:Query", 0) * scale
    live_reads = hosts  # BatchGetItem of every agent's liveness item, 1 read unit each
    page_reads = queries * 0.5 * math.ceil(100 * 900 / 4096)  # eventually consistent, ~900 B items
    sqs = max(1, math.ceil(ops.get("sqs:ListQueues", 1) * scale))
    per_run = (
        (live_reads + page_reads) * PER_MILLION["dynamodb_read_unit"] / 1e6
        + sqs * PER_MILLION["sqs"] / 1e6
        + lambda_cost(1, run["seconds"] * scale)
    )
    return per_run * RUNS_PER_MONTH


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argparse.ArgumentParser().parse_args(argv)
    cost = json.loads((OUT / "cost.json").read_text())
    fleet = json.loads((OUT / "fleet.json").read_text())
    idle = idle_cost(cost)
    capture = capture_cost(cost)
    fleets = {}
    for hosts in (1, 100, 10_000):
        janitor = janitor_cost(fleet, hosts)
        total = idle["total_dollars"] * hosts + janitor + KMS_KEY_MONTH
        fleets[str(hosts)] = {
            "idle_hosts_dollars": round(idle["total_dollars"] * hosts, 4),
            "janitor_dollars": round(janitor, 4),
            "kms_key_dollars": KMS_KEY_MONTH,
            "total_idle_month_dollars": round(total, 4),
            "per_host_dollars": round(total / hosts, 4),
            "one_60s_capture_per_host_per_day_dollars": round(capture["total_dollars"] * hosts * 30, 4),
        }
    return save(
        "cost_model",
        {
            "prices_per_million": PER_MILLION,
            "lambda_gb_second_arm64": LAMBDA_GB_SECOND_ARM64,
            "lambda_memory_gb": LAMBDA_GB,
            "idle_per_host_month": idle,
            "goal_idle_per_host_month": 0.06,
            "capture_60s_trace_s3": capture,
            "goal_capture_aws_requests_besides_s3_parts": 30,
            "fleets_per_month": fleets,
        },
    )


if __name__ == "__main__":
    main()
