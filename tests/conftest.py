"""Shared fixtures: real .NET targets that are always reaped."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dnmon_agent.local.resources import create_signing_key
from tests.dotnet import DotnetTarget

StartTarget = Callable[..., DotnetTarget]


@pytest.fixture
def dotnet_target() -> Iterator[StartTarget]:
    """Factory: ``dotnet_target("Target.cs", "metrics", runtime="net8")`` → a ready DotnetTarget."""
    started: list[DotnetTarget] = []

    def start(source: str, *args: str, **kwargs: object) -> DotnetTarget:
        target = DotnetTarget.start(source, *args, **kwargs)  # type: ignore[arg-type]
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto in server mode over real HTTP on loopback, for the whole test session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns failures

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


TEST_USER_ID = "AIDATESTINGAGENTS"  # aws:userid of the tests' one identity ("testing")


@pytest.fixture(scope="session")
def agent_api_url(moto_endpoint: str) -> Iterator[str]:
    """The agent API behind a local AWS_IAM function URL, as `dnmon up` serves it: agents sign with
    the tests' credentials; the handler runs in this process and reads the test's environment."""
    from pathlib import Path

    from dnmon_agent.local.function_url import start_agent_api
    from dnmon_agent.local.sigv4 import Identity

    identity = Identity("testing", "arn:aws:iam::123456789012:user/testing", TEST_USER_ID)
    server = start_agent_api(
        Path(__file__).resolve().parents[1] / "infra" / "template.yaml", {"testing": identity}
    )
    yield server.url
    server.shutdown()
    server.server_close()


@pytest.fixture
def dynamo_table(moto_endpoint: str) -> Any:
    """A fresh dnmon table on the moto server."""
    import boto3

    from dnmon_core.store import table_schema

    resource = boto3.resource("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"dnmon-{uuid.uuid4().hex[:8]}"
    table = resource.create_table(TableName=name, **table_schema())
    yield table
    table.delete()


@dataclass
class AwsStack:
    endpoint: str
    table: str
    bucket: str
    env: dict[str, str]


@pytest.fixture
def aws_stack(moto_endpoint: str, agent_api_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsStack]:
    """A table and a bucket on the moto server, and the DNMON_* environment pointing at them."""
    import boto3

    from dnmon_core.store import table_schema

    suffix = uuid.uuid4().hex[:8]
    table, bucket = f"dnmon-{suffix}", f"dnmon-artifacts-{suffix}"
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    dynamodb.create_table(TableName=table, **table_schema())
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "DNMON_TABLE": table,
        "DNMON_BUCKET": bucket,
        "DNMON_EGRESS_PROVIDERS": json.dumps(
            {"s3": {"type": "s3", "bucketName": bucket, "prefix": "egress/"}}
        ),
        "DNMON_CLAIM_SECONDS": "20",
        "DNMON_COUNTER_INTERVAL_SECONDS": "1",
        "DNMON_AGENT_QUEUE_PREFIX": f"dnmon-{suffix}-",
        "DNMON_SIGNING_KEY": create_signing_key(kms),
        "DNMON_AGENT_API_URL": agent_api_url,
        "DNMON_ALLOW_AGENT_ID_OVERRIDE": "1",  # several agents under the tests' one identity
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield AwsStack(moto_endpoint, table, bucket, env)
    dynamodb.delete_table(TableName=table)


@pytest.fixture
def start_agent(aws_stack: AwsStack) -> Iterator[Callable[..., Any]]:
    """Factory for real agents polling the moto queues from threads; all are stopped at the end."""
    import threading

    from dnmon_agent.worker import Agent, AgentSettings

    started: list[tuple[Any, threading.Event, threading.Thread]] = []

    def start(**overrides: Any) -> Any:
        env = {"DNMON_AGENT_ID": f"agent-{len(started)}", "DNMON_HOST_NAME": f"host-{len(started)}"}
        settings = AgentSettings.from_env({**aws_stack.env, **env})
        settings.poll_seconds = 1
        settings.lease_seconds = 6
        settings.scan_seconds = 0.5
        for key, value in overrides.items():
            setattr(settings, key, value)
        agent = Agent(settings)
        agent.register()
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        started.append((agent, stop, thread))
        return agent

    yield start
    for _, stop, _ in started:
        stop.set()
    for agent, _, thread in started:
        agent.shutdown(timeout=30)
        thread.join(timeout=30)
