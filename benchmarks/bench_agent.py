"""Agent footprint: idle long-polling, then a big trace plus three live-metrics captures at once.

    .venv/bin/python -m benchmarks.bench_agent [--idle-seconds 60] [--trace-mb 1024]

Runs ``dnmon agent`` as a subprocess against moto in server mode (in this process) and measures
it with psutil:

* idle: CPU share and RSS over ``--idle-seconds`` of long polling with nothing to do;
* load: a ``durationSeconds=-1`` trace of an allocating, CPU-busy .NET 8 target (verbose runtime
  events) egressed to S3 by multipart upload, plus three default-provider live-metrics captures
  of another target; RSS is sampled every 0.2 s until the trace has uploaded ``--trace-mb`` MiB,
  then the trace is stopped gracefully. Reports peak RSS and the upload rate.

Goals (issue 3): idle ≤ 64 MB and ≤ 0.2 % of a core; peak ≤ 96 MB. Writes ``benchmarks/out/agent.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import psutil
from moto.server import ThreadedMotoServer
from tests.apigw import handle, header, rest_event
from tests.dotnet import DotnetTarget

from benchmarks._results import save

VERBOSE = {
    "Providers": [
        {"Name": "Microsoft-DotNETCore-SampleProfiler"},
        {"Name": "Microsoft-Windows-DotNETRuntime", "Keywords": "0xFFFFFFFFFFFF", "EventLevel": "Verbose"},
    ],
    "BufferSizeInMB": 256,
}


def _environment(endpoint: str) -> dict[str, str]:
    from dnmon_agent.local.function_url import start_agent_api
    from dnmon_agent.local.resources import create_signing_key
    from dnmon_agent.local.sigv4 import Identity
    from dnmon_core.store import table_schema

    suffix = uuid.uuid4().hex[:8]
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "DNMON_TABLE": f"bench-{suffix}",
        "DNMON_BUCKET": f"bench-{suffix}",
        "DNMON_EGRESS_PROVIDERS": json.dumps({"s3": {"type": "s3", "bucketName": f"bench-{suffix}"}}),
        "DNMON_COUNTER_INTERVAL_SECONDS": "1",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    boto3.client("dynamodb").create_table(TableName=env["DNMON_TABLE"], **table_schema())
    boto3.client("s3").create_bucket(Bucket=env["DNMON_BUCKET"])
    env["DNMON_SIGNING_KEY"] = os.environ["DNMON_SIGNING_KEY"] = create_signing_key(boto3.client("kms"))
    # The agent writes through the agent API, served here as `dnmon up` serves it.
    identity = Identity("bench", "arn:aws:iam::123456789012:user/bench", "AIDABENCHAGENT")
    server = start_agent_api(
        Path(__file__).resolve().parents[1] / "infra" / "template.yaml", {"bench": identity}
    )
    env["DNMON_AGENT_API_URL"] = server.url
    return env


def _call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    return handle(rest_event(method, path, **kwargs))


def _uploaded_bytes(bucket: str) -> int:
    """Bytes in the bucket's in-progress multipart uploads and finished objects."""
    s3 = boto3.client("s3")
    total = sum(o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
        total += sum(p["Size"] for p in parts)
    return total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--trace-mb", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    busy = DotnetTarget.start("Busy.cs", "7200", "alloc")
    metrics = DotnetTarget.start("DemoApp.cs", "metrics")
    agent: subprocess.Popen[bytes] | None = None
    try:
        host, port = server.get_host_and_port()
        env = _environment(f"http://{host}:{port}")
        agent = subprocess.Popen(
            [sys.executable, "-m", "dnmon_agent.cli", "agent", "--log-level", "WARNING"],
            env={**os.environ, **env},
        )
        watched = psutil.Process(agent.pid)
        time.sleep(8)  # imports, registration, first heartbeat
        cpu0, t0 = sum(watched.cpu_times()[:2]), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu = sum(watched.cpu_times()[:2]) - cpu0
        idle = {
            "seconds": round(time.monotonic() - t0, 1),
            "cpu_percent_of_one_core": round(idle_cpu / (time.monotonic() - t0) * 100, 3),
            "rss_mb": round(watched.memory_info().rss / 2**20, 1),
        }
        print("idle:", idle, flush=True)

        trace = _call("POST", "/trace", query={"pid": str(busy.pid), "durationSeconds": "-1",
                                               "egressProvider": "s3"}, body=VERBOSE)  # fmt: skip
        assert trace["statusCode"] == 202, trace
        trace_path = "/operations/" + str(header(trace, "Location")).rsplit("/", 1)[1]
        for _ in range(3):
            started = _call("GET", "/livemetrics", query={"pid": str(metrics.pid), "durationSeconds": "-1",
                                                          "egressProvider": "s3"})  # fmt: skip
            assert started["statusCode"] == 202, started
        peak = 0
        start = time.monotonic()
        uploaded = 0
        last_check = 0.0
        while uploaded < args.trace_mb * 2**20:
            peak = max(peak, watched.memory_info().rss)
            time.sleep(0.2)
            if time.monotonic() - last_check > 5:
                last_check = time.monotonic()
                uploaded = _uploaded_bytes(env["DNMON_BUCKET"])
                print(f"  {uploaded / 2**20:.0f} MiB uploaded, peak RSS {peak / 2**20:.1f} MB", flush=True)
                status = json.loads(_call("GET", trace_path)["body"])
                if status["status"] not in ("Running", "Stopping"):
                    tail = "\n".join(busy.log[-20:])
                    code = busy.process.poll()
                    raise SystemExit(f"the trace ended early: {status}\ntarget exit {code}:\n{tail}")
        elapsed = time.monotonic() - start
        assert _call("DELETE", trace_path, query={"stop": "true"})["statusCode"] == 202
        while json.loads(_call("GET", trace_path)["body"])["status"] in ("Running", "Stopping"):
            peak = max(peak, watched.memory_info().rss)
            time.sleep(0.2)
        final = json.loads(_call("GET", trace_path)["body"])
        load = {
            "trace_mib": round(uploaded / 2**20, 1),
            "seconds": round(elapsed, 1),
            "mib_per_second": round(uploaded / 2**20 / elapsed, 2),
            "peak_rss_mb": round(peak / 2**20, 1),
            "trace_status": final["status"],
            "live_metrics_captures": 3,
        }
        print("load:", load, flush=True)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=150)
        busy.stop()
        metrics.stop()
        server.stop()
    result = {
        "idle": idle,
        "load": load,
        "goals": {"idle_rss_mb": 64, "idle_cpu_percent": 0.2, "peak_rss_mb": 96},
    }
    return save("agent", result)


if __name__ == "__main__":
    main()
