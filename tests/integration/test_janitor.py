"""The janitor on moto server: silent agents leave the registry with their queues; the living and
the recently gone keep theirs."""

from __future__ import annotations

import time
from typing import Any

import boto3

from dnmon_api import janitor
from dnmon_api.services import services
from dnmon_core.models import ProcessInfo
from dnmon_core.store import AgentRegistry
from tests.conftest import AwsStack


def _queue(sqs: Any, name: str) -> str:
    return str(sqs.create_queue(QueueName=name)["QueueUrl"])


def test_silent_agents_and_orphan_queues_are_removed(aws_stack: AwsStack, monkeypatch: Any) -> None:
    monkeypatch.setenv("DNMON_AGENT_RETIRE_SECONDS", "3600")
    prefix = aws_stack.env["DNMON_AGENT_QUEUE_PREFIX"]
    sqs = boto3.client("sqs", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    table = boto3.resource("dynamodb", endpoint_url=aws_stack.endpoint, region_name="us-east-1").Table(
        aws_stack.table
    )
    now = time.time()
    registry = AgentRegistry(table, clock=lambda: now - 7200)  # registered and last seen 2 h ago
    urls = {name: _queue(sqs, f"{prefix}{name}") for name in ("silent", "alive", "gone")}
    registry.register("silent", "spot-1", urls["silent"], "1")
    process = ProcessInfo.model_validate(
        {"pid": 7, "uid": "00000000-0000-0000-0000-000000000007", "name": "dotnet",
         "commandLine": "dotnet a.dll", "operatingSystem": "Linux", "processArchitecture": "x64"}
    )  # fmt: skip
    registry.publish_processes("silent", "spot-1", [process])
    AgentRegistry(table).register("alive", "web-1", urls["alive"], "1")  # seen now
    # "gone" deregistered itself; its queue is young, so it may still come back
    result = janitor.sweep(services(), now=now)
    assert result.retired_agents == ["silent"] and result.errors == []
    assert result.deleted_queues == []
    assert registry.get("silent", alive_only=False) is None
    assert registry.candidates(pid=7) == []  # its process index went with it
    assert AgentRegistry(table).get("alive") is not None
    remaining = set(sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []))
    assert remaining == {urls["alive"], urls["gone"]}
    # a day later the orphan queue goes too, the living agent's stays
    AgentRegistry(table, clock=lambda: now + 86400).touch("alive")
    later = janitor.sweep(services(), now=now + 86400)
    assert later.deleted_queues == [urls["gone"]] and later.retired_agents == []
    assert set(sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])) == {urls["alive"]}
