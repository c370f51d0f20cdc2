"""The local stack the fleet, cost and freshness benchmarks share.

moto runs in server mode in its own process (``moto_server``), so that its work does not share a
GIL with hundreds of agent threads; the agent API is served in this process by the local AWS_IAM
function URL (real SigV4 checks), its handler wrapped by a ``Meter``; the API handler is called
in-process on API Gateway events, as ``bench_api`` does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.counting import Frame, Meter

ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY = "bench"
SECRET_KEY = "bench-secret"
USER_ID = "AIDABENCHAGENTS"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """``moto_server`` in a child process on a free loopback port; yields its endpoint."""
    port = _free_port()
    binary = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Stack:
    endpoint: str
    table: Any  # boto3 Table resource
    bucket: str
    agent_api_url: str
    env: dict[str, str]


@contextmanager
def stack(meter: Meter, **extra_env: str) -> Iterator[Stack]:
    """moto, a table, a bucket, a signing key, the agent API; ``os.environ`` points at them all."""
    import boto3

    from dnmon_agent.local.function_url import start_agent_api
    from dnmon_agent.local.gateway import load_handler
    from dnmon_agent.local.resources import create_signing_key
    from dnmon_agent.local.sigv4 import Identity
    from dnmon_core.store import table_schema

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with moto_server() as endpoint:
        suffix = uuid.uuid4().hex[:8]
        table_name, bucket = f"bench-{suffix}", f"bench-artifacts-{suffix}"
        base = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        os.environ.update(base)
        session = boto3.Session()
        session.client("dynamodb").create_table(TableName=table_name, **table_schema())
        session.client("s3").create_bucket(Bucket=bucket)
        identity = Identity(SECRET_KEY, "arn:aws:iam::123456789012:user/bench", USER_ID)
        server = start_agent_api(ROOT / "infra" / "template.yaml", {ACCESS_KEY: identity})
        server._handler = meter.function("agent-api", load_handler(server.handler_name))
        env = {
            **base,
            "DNMON_TABLE": table_name,
            "DNMON_BUCKET": bucket,
            "DNMON_EGRESS_PROVIDERS": json.dumps(
                {"s3": {"type": "s3", "bucketName": bucket, "prefix": "egress/"}}
            ),
            "DNMON_AGENT_QUEUE_PREFIX": f"bench-{suffix}-",
            "DNMON_SIGNING_KEY": create_signing_key(session.client("kms")),
            "DNMON_AGENT_API_URL": server.url,
            "DNMON_ALLOW_AGENT_ID_OVERRIDE": "1",  # many agents under the benchmark's one identity
            **extra_env,
        }
        os.environ.update(env)
        try:
            yield Stack(endpoint, session.resource("dynamodb").Table(table_name), bucket, server.url, env)
        finally:
            server.shutdown()
            server.server_close()


def call_api(
    meter: Meter, method: str, path: str, query: dict[str, str] | None = None, body: Any = None
) -> tuple[dict[str, Any], float, Frame]:
    """The API handler on one API Gateway event, in-process: (response, wall seconds, its AWS calls)."""
    from tests.apigw import handle, rest_event

    event = rest_event(method, path, query=query, body=body)
    with meter.acting("api") as frame:
        start = time.perf_counter()
        response = handle(event)
        seconds = time.perf_counter() - start
    return response, seconds, frame


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]
