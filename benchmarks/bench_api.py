"""API function cost: cold import, warm latency without AWS time, and AWS requests per POST /trace.

    .venv/bin/python -m benchmarks.bench_api [--requests 50]

* cold import: a fresh interpreter imports ``dnmon_api.app`` (what a Lambda cold start pays on
  top of the runtime), median of 7 runs;
* warm latency: the handler on API Gateway events against moto in server mode, minus the time
  spent inside botocore calls (measured by wrapping ``BaseClient._make_api_call``), so the figure
  is our own code: validation, routing, serialisation;
* AWS requests per ``POST /trace?egressProvider=…`` (the accepted path) and per ``GET /operations/{id}``.

Writes ``benchmarks/out/api.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.client import BaseClient
from moto.server import ThreadedMotoServer
from tests.apigw import FakeContext, handle, header, rest_event

from benchmarks._results import save

BODY = {"Providers": [{"Name": "Microsoft-Windows-DotNETRuntime", "Keywords": "0x1"}]}


def cold_import(runs: int = 7) -> float:
    code = "import time; t = time.perf_counter(); import dnmon_api.app; print(time.perf_counter() - t)"
    times = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(runs)]
    return statistics.median(times)


class AwsMeter:
    """Counts botocore API calls and the time spent in them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seconds = 0.0

    @contextmanager
    def installed(self) -> Iterator[AwsMeter]:
        original = BaseClient._make_api_call
        meter = self

        def timed(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            start = time.perf_counter()
            try:
                return original(client, operation, params)
            finally:
                meter.seconds += time.perf_counter() - start
                meter.calls.append(operation)

        BaseClient._make_api_call = timed  # type: ignore[method-assign]
        try:
            yield self
        finally:
            BaseClient._make_api_call = original  # type: ignore[method-assign]

    def reset(self) -> None:
        self.calls.clear()
        self.seconds = 0.0


def _environment(endpoint: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "DNMON_TABLE": f"bench-{suffix}",
            "DNMON_BUCKET": f"bench-{suffix}",
            "DNMON_TRACE_LIMIT": "3",
            "DNMON_EGRESS_PROVIDERS": json.dumps({"s3": {"type": "s3", "bucketName": f"bench-{suffix}"}}),
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    from dnmon_agent.local.resources import create_signing_key
    from dnmon_core.models import ProcessInfo
    from dnmon_core.store import AgentRegistry, table_schema

    os.environ["DNMON_SIGNING_KEY"] = create_signing_key(boto3.client("kms"))

    dynamodb = boto3.resource("dynamodb")
    table = dynamodb.create_table(TableName=os.environ["DNMON_TABLE"], **table_schema())
    boto3.client("s3").create_bucket(Bucket=os.environ["DNMON_BUCKET"])
    queue = boto3.client("sqs").create_queue(QueueName=f"bench-{suffix}")["QueueUrl"]
    process = {"pid": 42, "uid": str(uuid.uuid4()), "name": "dotnet", "commandLine": "dotnet App.dll",
               "operatingSystem": "Linux", "processArchitecture": "x64"}  # fmt: skip
    registry = AgentRegistry(table)
    registry.register("bench-agent", "bench-host", queue, "0.1.0")
    registry.publish_processes("bench-agent", "bench-host", [ProcessInfo.model_validate(process)])


def _spread(calls: list[list[str]]) -> dict[str, float]:
    counts = [len(c) for c in calls]
    return {
        "median": statistics.median(counts),
        "max": max(counts),
        "mean": round(statistics.mean(counts), 2),
    }


def finish(app: Any, path: str) -> None:
    """Succeed the operation and give its slot back, as the agent would (not measured)."""
    from dnmon_api.services import services
    from dnmon_core.operations import OperationState
    from dnmon_core.store import slots_of

    store = services().store
    record = store.get(uuid.UUID(path.rsplit("/", 1)[1]))
    store.transition(record.operation_id, OperationState.SUCCEEDED)
    services().slots.release(slots_of(record.slots), record.operation_id)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args(argv)
    cold = cold_import()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        _environment(f"http://{host}:{port}")
        from dnmon_api import app

        meter = AwsMeter()
        own: dict[str, list[float]] = {"POST /trace": [], "GET /operations/{id}": []}
        post_calls: list[list[str]] = []
        get_calls: list[list[str]] = []
        with meter.installed():
            app.handler(rest_event("GET", "/info"), FakeContext())  # type: ignore[arg-type]  # warm up
            for _ in range(args.requests):
                meter.reset()
                start = time.perf_counter()
                query = {"pid": "42", "durationSeconds": "60", "egressProvider": "s3"}
                event = rest_event("POST", "/trace", query=query, body=BODY)
                response = handle(event)  # the StreamFunction's route: 202 with an egress provider
                own["POST /trace"].append(time.perf_counter() - start - meter.seconds)
                assert response["statusCode"] == 202, response
                post_calls.append(list(meter.calls))
                path = "/operations/" + str(header(response, "Location")).rsplit("/", 1)[1]
                meter.reset()
                start = time.perf_counter()
                app.handler(rest_event("GET", path), FakeContext())  # type: ignore[arg-type]
                own["GET /operations/{id}"].append(time.perf_counter() - start - meter.seconds)
                get_calls.append(list(meter.calls))
                finish(app, path)  # what the agent does at the end: the slot comes back
    finally:
        server.stop()
    result = {
        "cold_import_seconds": round(cold, 4),
        "warm_own_ms_median": {k: round(statistics.median(v) * 1000, 3) for k, v in own.items()},
        "warm_own_ms_p95": {k: round(sorted(v)[int(len(v) * 0.95) - 1] * 1000, 3) for k, v in own.items()},
        "aws_requests_post_trace": _spread(post_calls),
        "aws_requests_get_operation": _spread(get_calls),
        "aws_operations_post_trace_example": post_calls[-1],
        "goal_aws_requests_post_trace": 4,
    }
    return save("api", result)


if __name__ == "__main__":
    main()
