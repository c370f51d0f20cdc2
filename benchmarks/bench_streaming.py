"""Streamed captures (issue 8): a 60 s live-metrics stream and a 60 s CPU trace stream, without
``egressProvider``, through the S3 chunk path; what the client sees and what a streamed minute costs.

    .venv/bin/python -m benchmarks.bench_streaming [--mode inprocess|up] [--seconds 60] [--interval 5]

* ``--mode inprocess`` (default): moto in server mode and the agent API (``benchmarks._stack``), one
  real ``Agent`` with production defaults (as ``bench_cost``: private ``TMPDIR``,
  ``DNMON_DISCOVERY=tmpdir``), real .NET 8 targets (``examples/DemoApp.cs metrics`` and ``cpu``), and
  the StreamFunction's handler (``dnmon_api.streaming.handler``) called in-process with a recording
  response stream (``tests.apigw.stream_call``) that timestamps the status+headers and every write;
* ``--mode up``: the whole local stack (``LocalStack``, the ``dnmon up`` code) on a free port, asked
  over HTTP with httpx streaming and the stack's Bearer key, timing every received chunk.

Measured, for each of the three goals of the issue:

1. live metrics at the default 5 s counter interval: first json-seq record after the response
   started (headers) and after the request, each ÷ the interval (goal ≤ 1.3); when each interval's
   records arrived (a *batch*: chunks less than half an interval apart), the gaps between batches,
   and how old each batch's newest record was when it arrived (none may wait for the end);
2. trace: bytes relayed ÷ bytes of the kept artifact (what the runtime sent: the agent passes the
   IPC stream through unchanged; goal ≥ 0.95), and the longest wait between chunks (goal: ≤ 2 s);
3. every AWS request during each stream, counted by ``benchmarks.counting.Meter`` by actor
   (``stream-fn``: the handler; ``agent``; ``agent-api``), and the dollars per streamed minute with
   ``benchmarks.cost_model``'s prices plus those of docs/streaming.md (``inprocess`` only).

Writes ``benchmarks/out/streaming.json`` (``streaming_up.json`` for ``--mode up``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.integration.test_flow import CPU_BODY

from benchmarks._results import save
from benchmarks._stack import _free_port, call_api, stack
from benchmarks.bench_cost import capacity, item_size, table_items
from benchmarks.cost_model import LAMBDA_GB, LAMBDA_GB_SECOND_ARM64, PER_MILLION, lambda_cost
from benchmarks.counting import AwsCall, Meter, route_of, tally

RS = b"\x1e"
LIVEMETRICS_BODY: dict[str, Any] = {  # the default providers plus the demo app's EventCounters
    "includeDefaultProviders": True,
    "providers": [{"providerName": "CustomProvider", "counterNames": ["counter1", "counter2"]}],
}
TRACE_BODY: dict[str, Any] = CPU_BODY  # the CPU profile, as tests/integration/test_flow.py asks for it
MB = 10**6
GB = 10**9
# docs/streaming.md "Cost per streamed minute": the unit prices and what the docs read settle.
PRICES: dict[str, dict[str, Any]] = {
    "P_api": {"dollars": PER_MILLION["api_gateway_rest"] / 1e6, "per": "REST request (each 10 MB streamed)"},
    "P_req": {"dollars": PER_MILLION["lambda_request"] / 1e6, "per": "Lambda request"},
    "P_gbs_arm": {"dollars": LAMBDA_GB_SECOND_ARM64, "per": "Lambda arm64 GB-second"},
    "P_stream": {"dollars": 0.008, "per": "GB streamed beyond the first 6 MB of a response"},
    "P_put": {"dollars": PER_MILLION["s3_put"] / 1e6, "per": "S3 PUT"},
    "P_get": {"dollars": 0.40 / 1e6, "per": "S3 GET"},
    "P_rru": {"dollars": PER_MILLION["dynamodb_read_unit"] / 1e6, "per": "DynamoDB read unit"},
}
UNVERIFIED = {  # docs/streaming.md's status column: none of these figures was read on an AWS page
    "P_api": "rule confirmed; $3.50/M to confirm (pricing page not rendered)",
    "P_req": "$0.20/M to confirm",
    "P_gbs_arm": "$0.0000133334 to confirm",
    "P_stream": "cost stated by the Lambda guide; $0.008/GB not found on an AWS page read",
    "P_put": "$0.005/1000 to confirm",
    "P_get": "$0.0004/1000 to confirm",
    "P_rru": "$0.125/M (after the Nov 2024 cut) to confirm",
}


@dataclass
class Received:
    """One streamed response as the client got it: monotonic times, bytes in arrival order."""

    requested: float
    started: float | None  # status + headers
    ended: float
    status: int | None
    headers: dict[str, str]
    chunks: list[tuple[float, bytes]]
    cut: str | None  # the stream ended without completing

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.chunks)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def operation_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.header("Location")).rsplit("/", 1)[1])


# --- what the client saw ---------------------------------------------------------------------------


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def livemetrics_figures(got: Received, interval: float, wall_offset: float) -> dict[str, Any]:
    """Records → batches (chunks less than half an interval apart) and when each arrived.
    ``wall_offset`` turns a monotonic time into epoch seconds (to compare with record timestamps)."""
    from dnmon_core.models import iter_json_seq

    assert got.started is not None
    records = list(iter_json_seq(got.body))
    stamps = [_parse_time(r["timestamp"]) for r in records]
    batches: list[dict[str, Any]] = []
    taken = 0
    for at, data in got.chunks:
        count = data.count(RS)  # a record starts with RS; HTTP may split one, never reorder
        if not count:
            continue
        if batches and at - batches[-1]["last_at"] < interval / 2:
            batches[-1]["last_at"] = at
            batches[-1]["records"] += count
        else:
            batches.append({"first_at": at, "last_at": at, "records": count, "from": taken})
        taken += count
    for batch in batches:
        newest = max(stamps[batch["from"] : batch["from"] + batch["records"]], default=math.nan)
        batch["age_s"] = batch["last_at"] + wall_offset - newest  # newest record's age on arrival
    arrivals = [b["last_at"] for b in batches]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    first = batches[0]["first_at"] if batches else math.nan
    ages = [b["age_s"] for b in batches]
    return {
        "records": len(records),
        "bytes": len(got.body),
        "chunks": len(got.chunks),
        "headers_after_request_s": round(got.started - got.requested, 3),
        "first_record_after_headers_s": round(first - got.started, 3),
        "first_record_after_headers_per_interval": round((first - got.started) / interval, 3),
        "first_record_after_request_s": round(first - got.requested, 3),
        "first_record_after_request_per_interval": round((first - got.requested) / interval, 3),
        "goal_first_record_per_interval": 1.3,
        "batches": len(batches),
        "batches_expected": round((got.ended - got.started) / interval),
        "batch_arrivals_after_headers_s": [round(a - got.started, 2) for a in arrivals],
        "records_per_batch": [b["records"] for b in batches],
        "gap_between_batches_s": {
            "median": round(statistics.median(gaps), 3) if gaps else None,
            "min": round(min(gaps), 3) if gaps else None,
            "max": round(max(gaps), 3) if gaps else None,
        },
        "newest_record_age_on_arrival_s": {
            "median": round(statistics.median(ages), 3) if ages else None,
            "max": round(max(ages), 3) if ages else None,
        },
        "batches_in_last_second_before_end": sum(1 for a in arrivals if got.ended - a < 1.0),
        "response_end_after_last_batch_s": round(got.ended - arrivals[-1], 3) if arrivals else None,
    }


def trace_figures(got: Received, kept: bytes) -> dict[str, Any]:
    assert got.started is not None
    body = got.body
    times = [at for at, _ in got.chunks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    sizes = [len(data) for _, data in got.chunks]
    return {
        "relayed_bytes": len(body),
        "kept_artifact_bytes": len(kept),
        "relayed_per_kept": round(len(body) / len(kept), 6) if kept else None,
        "goal_relayed_per_kept": 0.95,
        "relayed_equals_kept": body == kept,
        "chunks": len(got.chunks),
        "headers_after_request_s": round(got.started - got.requested, 3),
        "first_bytes_after_headers_s": round(times[0] - got.started, 3) if times else None,
        "max_gap_between_chunks_s": round(max(gaps), 3) if gaps else None,
        "median_gap_between_chunks_s": round(statistics.median(gaps), 3) if gaps else None,
        "goal_max_gap_s": 2.0,
        "chunk_bytes": {"median": statistics.median(sizes) if sizes else 0, "max": max(sizes, default=0)},
        "response_end_after_last_chunk_s": round(got.ended - times[-1], 3) if times else None,
    }


# --- what it cost ------------------------------------------------------------------------------


def cost_per_minute(
    calls: list[AwsCall],
    invocations: list[Any],
    got: Received,
    artifact: dict[str, Any],
    items: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """docs/streaming.md's formula for the streamed path, plus the capture's own requests (those of
    the same capture egressed to S3, as in the Cost model section), per streamed minute."""
    fn = [c for c in calls if c.actor == "stream-fn"]
    agent = [c for c in calls if c.actor == "agent"]
    gets = sum(1 for c in fn if c.operation == "GetObject")
    hits = len(got.chunks)  # each write of the handler is one chunk object it read
    relay_reads = [c for c in fn if c.operation == "GetItem"]
    op_item = max((v for k, v in items.items() if k.startswith("OP#")), key=item_size, default={})
    rru_each = max(1, math.ceil(item_size(op_item) / 4096))  # strongly consistent: 1 unit per 4 KB
    chunks_put = int(artifact.get("chunks") or 0)
    s3_put_class = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
    agent_puts = sum(1 for c in agent if c.service == "s3" and c.operation in s3_put_class)
    wall = (got.ended - got.requested) if got.ended else seconds
    billed_gbs = LAMBDA_GB * math.ceil(wall * 1000) / 1000
    streamed = len(got.body)
    p = {k: v["dollars"] for k, v in PRICES.items()}
    stream_path = {
        "API Gateway REST: 1 request per 10 MB streamed": p["P_api"]
        * max(1, math.ceil(streamed / (10 * MB))),
        "Lambda: StreamFunction request": p["P_req"],
        f"Lambda: StreamFunction {LAMBDA_GB * 1024:.0f} MB x {wall:.1f} s": p["P_gbs_arm"] * billed_gbs,
        "Lambda: streamed bytes beyond 6 MB": p["P_stream"] * max(0, streamed - 6 * MB) / GB,
        f"S3 PUT: {chunks_put} chunk objects (agent)": p["P_put"] * chunks_put,
        f"S3 GET: {gets} ({hits} hits, {gets - hits} misses) (handler)": p["P_get"] * gets,
        f"DynamoDB reads: {len(relay_reads)} GetItem x {rru_each} RRU (handler)": p["P_rru"]
        * len(relay_reads)
        * rru_each,
    }
    others = [c for c in calls if not (c.actor == "stream-fn" and c.operation in ("GetObject", "GetItem"))]
    units = capacity(others, items)
    capture = {
        "KMS Sign (ECC)": sum(1 for c in calls if c.operation == "Sign") * PER_MILLION["kms_sign_ecc"] / 1e6,
        "SQS send, receive, delete": sum(1 for c in calls if c.service == "sqs") * PER_MILLION["sqs"] / 1e6,
        f"DynamoDB writes ({units['write_units']} units)": units["write_units"]
        * PER_MILLION["dynamodb_write_unit"]
        / 1e6,
        f"DynamoDB other reads ({units['read_units']} units)": units["read_units"]
        * PER_MILLION["dynamodb_read_unit"]
        / 1e6,
        f"Lambda: agent API ({len(invocations)} invocations, local durations)": sum(
            lambda_cost(1, inv.seconds) for inv in invocations
        ),
        f"S3 PUT-class: the kept artifact ({agent_puts - chunks_put})": max(0, agent_puts - chunks_put)
        * PER_MILLION["s3_put"]
        / 1e6,
    }
    scale = 60.0 / seconds
    path_total = sum(stream_path.values())
    capture_total = sum(capture.values())
    return {
        "formula": "per_min = (api + lambda + stream + s3 + ddb) * 60 / T  (docs/streaming.md)",
        "T_seconds": seconds,
        "W_session_wait_s": round((got.started or got.requested) - got.requested, 3),
        "handler_wall_s": round(wall, 3),
        "B_streamed_bytes": streamed,
        "n_chunk_puts": chunks_put,
        "g_s3_gets": {"total": gets, "hits": hits, "misses": gets - hits},
        "r_read_units": len(relay_reads) * rru_each,
        "operation_item_bytes": item_size(op_item),
        "streamed_path_dollars": {k: round(v * scale, 9) for k, v in stream_path.items()},
        "streamed_path_per_minute_dollars": round(path_total * scale, 8),
        "capture_dollars (as egressed: the API part, agent, agent API)": {
            k: round(v * scale, 9) for k, v in capture.items()
        },
        "capture_per_minute_dollars": round(capture_total * scale, 8),
        "total_per_streamed_minute_dollars": round((path_total + capture_total) * scale, 8),
        "per_million_streamed_minutes_dollars": round((path_total + capture_total) * scale * 1e6, 2),
    }


def describe_calls(calls: list[AwsCall], invocations: list[Any], agent_api: list[Any]) -> dict[str, Any]:
    return {
        "aws_requests": len(calls),
        "aws_by_actor": {
            actor: tally(f"{c.service}:{c.operation}" for c in calls if c.actor == actor)
            for actor in sorted({c.actor for c in calls})
        },
        "agent_api_calls": tally(route_of(c.path) for c in agent_api),
        "agent_api_invocations_aws": tally(op for inv in invocations for op in inv.aws),
    }


# --- in-process: the handler with a recording stream ---------------------------------------------


@contextmanager
def private_tmpdir() -> Iterator[str]:
    """Targets and agent share a TMPDIR the agent alone scans (other .NET processes stay out)."""
    private = tempfile.mkdtemp(prefix="dnmon-bench-stream-")
    os.environ.update({"TMPDIR": private, "DNMON_DISCOVERY": "tmpdir"})
    tempfile.tempdir = None
    yield private


def run_inprocess(seconds: int, interval: float) -> dict[str, Any]:
    from tests.apigw import RecordedStream, rest_event, stream_call
    from tests.dotnet import DotnetTarget

    from dnmon_agent.worker import Agent, AgentSettings
    from dnmon_core.store import OperationStore

    meter = Meter()
    results: dict[str, Any] = {}
    targets: list[Any] = []
    stop = threading.Event()
    with private_tmpdir() as private:
        try:
            extra = {"DNMON_COUNTER_INTERVAL_SECONDS": f"{interval:g}"}
            with meter.installed(), stack(meter, **extra) as st:
                import boto3

                env = {**st.env, "DNMON_AGENT_ID": "stream-agent", "DNMON_HOST_NAME": "stream-host"}
                agent = Agent(AgentSettings.from_env(env))  # production defaults
                thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
                thread.start()
                store = OperationStore(st.table)
                s3 = boto3.client("s3")

                def listed(pid: int) -> None:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        response, _, _ = call_api(meter, "GET", "/processes", {"host": "stream-host"})
                        if f'"pid": {pid},' in str(response.get("body")):
                            return
                        time.sleep(0.5)
                    raise RuntimeError(f"pid {pid} was never listed")

                for path, mode, body in (
                    ("/livemetrics", "metrics", LIVEMETRICS_BODY),
                    ("/trace", "cpu", TRACE_BODY),
                ):
                    target = DotnetTarget.start("DemoApp.cs", mode, env={"TMPDIR": private})
                    targets.append(target)
                    listed(target.pid)
                    time.sleep(2)
                    query = {"pid": str(target.pid), "durationSeconds": str(seconds)}
                    event = rest_event("POST", path, query=query, body=body)
                    print(f"streaming {path} for {seconds} s …", flush=True)
                    mark = meter.mark()
                    recorded = RecordedStream()
                    wall_offset = time.time() - time.monotonic()
                    with meter.acting("stream-fn"):
                        requested = time.monotonic()
                        stream_call(event, recorded)
                        ended = time.monotonic()
                    got = Received(
                        requested,
                        recorded.started_at,
                        ended,
                        recorded.status,
                        recorded.headers,
                        recorded.chunks,
                        None if recorded.failure is None else ": ".join(recorded.failure),
                    )
                    time.sleep(3)  # the agent's last calls (slot release) after the terminal state
                    aws, agent_api, invocations = meter.since(mark)
                    calls = [
                        c
                        for c in aws
                        if c.actor != "check" and not (c.operation == "ReceiveMessage" and not c.returned)
                    ]
                    with meter.acting("check"):
                        record = store.get(got.operation_id)
                        artifact = record.artifact or {}
                        figures = stream_figures(s3, path, got, artifact, interval, wall_offset)
                        items = table_items(st)
                    results[path.strip("/")] = {
                        "status": got.status,
                        "content_type": got.header("Content-Type"),
                        "cut": got.cut,
                        "final_state": str(record.status),
                        "artifact": artifact,
                        **figures,
                        "requests": {
                            **describe_calls(calls, invocations, agent_api),
                            "empty_long_polls_excluded_(idle_baseline)": sum(
                                1 for c in aws if c.operation == "ReceiveMessage" and not c.returned
                            ),
                        },
                        "cost": cost_per_minute(calls, invocations, got, artifact, items, seconds),
                    }
        finally:
            stop.set()
            for target in targets:
                target.stop()
    return results


# --- up: the local stack over HTTP ---------------------------------------------------------------


def http_stream(
    url: str, token: str | None, path: str, query: dict[str, str], body: dict[str, Any], timeout: float
) -> Received:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    chunks: list[tuple[float, bytes]] = []
    cut: str | None = None
    started: float | None = None
    status: int | None = None
    got_headers: dict[str, str] = {}
    requested = time.monotonic()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as client,
            client.stream("POST", f"{url}{path}", params=query, json=body, headers=headers) as response,
        ):
            started, status, got_headers = time.monotonic(), response.status_code, dict(response.headers)
            for data in response.iter_raw():
                chunks.append((time.monotonic(), data))
    except httpx.HTTPError as exc:  # a cut: the chunked body ended without its last chunk
        cut = f"{type(exc).__name__}: {exc}"
    return Received(requested, started, time.monotonic(), status, got_headers, chunks, cut)


def run_up(seconds: int, interval: float) -> dict[str, Any]:
    import boto3
    import httpx
    from tests.dotnet import DotnetTarget

    from dnmon_agent.local.stack import LocalStack, StackOptions
    from dnmon_core.store import OperationStore

    results: dict[str, Any] = {}
    with private_tmpdir() as private:
        options = StackOptions(
            port=_free_port(), interval_seconds=interval, artifacts=Path(private) / "artifacts"
        )
        local = LocalStack(options)
        local.start()
        targets: list[Any] = []
        try:
            auth = {"Authorization": f"Bearer {local.token}"} if local.token else {}
            store = OperationStore(boto3.resource("dynamodb").Table(local.env["DNMON_TABLE"]))
            s3 = boto3.client("s3")
            for path, mode, body in (
                ("/livemetrics", "metrics", LIVEMETRICS_BODY),
                ("/trace", "cpu", TRACE_BODY),
            ):
                target = DotnetTarget.start("DemoApp.cs", mode, env={"TMPDIR": private})
                targets.append(target)
                deadline = time.monotonic() + 60
                while target.pid not in {
                    p.get("pid") for p in httpx.get(f"{local.url}/processes", headers=auth).json()
                }:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"pid {target.pid} was never listed")
                    time.sleep(0.5)
                time.sleep(2)
                query = {"pid": str(target.pid), "durationSeconds": str(seconds)}
                print(f"streaming {path} for {seconds} s over HTTP …", flush=True)
                wall_offset = time.time() - time.monotonic()
                got = http_stream(local.url, local.token, path, query, body, timeout=seconds + 120)
                entry: dict[str, Any] = {
                    "status": got.status,
                    "content_type": got.header("Content-Type"),
                    "cut": got.cut,
                }
                if got.status != 200 or got.started is None:
                    entry["body"] = got.body[:2000].decode(errors="replace")
                    results[path.strip("/")] = entry
                    continue
                record = _wait_terminal(store, got.operation_id)
                artifact = record.artifact or {}
                figures = stream_figures(s3, path, got, artifact, interval, wall_offset)
                results[path.strip("/")] = {
                    **entry,
                    "final_state": str(record.status),
                    "artifact": artifact,
                    **figures,
                }
        finally:
            for target in targets:
                target.stop()
            local.stop()
    return results


def stream_figures(
    s3: Any, path: str, got: Received, artifact: dict[str, Any], interval: float, wall_offset: float
) -> dict[str, Any]:
    """The goal's figures of one stream, against the artifact the agent kept (what the runtime sent)."""
    kept: bytes = s3.get_object(Bucket=artifact["bucket"], Key=artifact["key"])["Body"].read()
    if path != "/livemetrics":
        return trace_figures(got, kept)
    return {**livemetrics_figures(got, interval, wall_offset), "relayed_equals_kept": got.body == kept}


def _wait_terminal(store: Any, operation_id: uuid.UUID, timeout: float = 60.0) -> Any:
    from dnmon_core.operations import is_terminal

    deadline = time.monotonic() + timeout
    record = store.get(operation_id)
    while not is_terminal(record.status) and time.monotonic() < deadline:
        time.sleep(0.5)
        record = store.get(operation_id)
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("inprocess", "up"), default="inprocess")
    parser.add_argument("--seconds", type=int, default=60, help="durationSeconds of each stream")
    parser.add_argument("--interval", type=float, default=5.0, help="DNMON_COUNTER_INTERVAL_SECONDS")
    args = parser.parse_args(argv)
    run = run_inprocess if args.mode == "inprocess" else run_up
    results = run(args.seconds, args.interval)
    return save(
        "streaming" if args.mode == "inprocess" else "streaming_up",
        {
            "mode": args.mode,
            "seconds": args.seconds,
            "counter_interval_seconds": args.interval,
            "stream_poll_seconds": float(os.environ.get("DNMON_STREAM_POLL_SECONDS", "0.25")),
            **results,
            "prices": {k: {**v, "status": UNVERIFIED[k]} for k, v in PRICES.items()},
        },
    )


if __name__ == "__main__":
    main()
