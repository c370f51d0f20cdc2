"""The agent API over HTTP, as two hosts with their own AWS credentials: each acts only as itself.

A local AWS_IAM function URL checks every SigV4 signature (as Lambda does) and passes the caller's
identity to the deployed handler; the store behind it is moto server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from dnmon_agent.local.function_url import start_agent_api
from dnmon_agent.local.sigv4 import Identity
from dnmon_agent.worker.control_plane import ControlPlane
from dnmon_core.models import ProcessInfo
from dnmon_core.operations import ArtifactKind, OperationError, OperationProcess, OperationState
from dnmon_core.store import (
    AgentRegistry,
    OperationRecord,
    OperationStore,
    ReplyStore,
    StoreError,
    TransitionRejected,
)
from tests.conftest import AwsStack

ROOT = Path(__file__).resolve().parents[2]
HOSTS = {
    "key-a": Identity("secret-a", "arn:aws:iam::123456789012:user/agent-a", "AIDAAGENTA"),
    "key-b": Identity("secret-b", "arn:aws:iam::123456789012:user/agent-b", "AIDAAGENTB"),
}


@pytest.fixture
def url(aws_stack: AwsStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DNMON_ALLOW_AGENT_ID_OVERRIDE", "0")  # as deployed: ids come from identities
    server = start_agent_api(ROOT / "infra" / "template.yaml", HOSTS)
    yield server.url
    server.shutdown()
    server.server_close()


def _client(url: str, key: str, **kwargs: Any) -> ControlPlane:
    session = boto3.Session(
        aws_access_key_id=key, aws_secret_access_key=HOSTS[key].secret_key, region_name="us-east-1"
    )
    return ControlPlane(url, session, **kwargs)


def _table(aws: AwsStack) -> Any:
    return boto3.resource("dynamodb", endpoint_url=aws.endpoint, region_name="us-east-1").Table(aws.table)


def _operation(store: OperationStore, agent_id: str) -> uuid.UUID:
    record = OperationRecord(
        operation_id=uuid.uuid4(),
        kind=ArtifactKind.TRACE,
        status=OperationState.STARTING,
        created=datetime.now(UTC),
        process=None,
        tags=[],
        egress_provider_name=None,
        agent_id=agent_id,
    )
    store.create(record, lease_seconds=60)
    return record.operation_id


def _process(pid: int) -> ProcessInfo:
    return ProcessInfo(
        pid=pid, uid=uuid.uuid4(), name="dotnet", command_line="dotnet App.dll",
        operating_system="Linux", process_architecture="x64",
    )  # fmt: skip


def test_identity_comes_from_the_signature(aws_stack: AwsStack, url: str) -> None:
    a, b = _client(url, "key-a"), _client(url, "key-b")
    first, second = a.register("web-1", "1.0"), b.register("web-1", "1.0")
    assert (first.agent_id, first.artifact_owner) == ("user-agent-a", "AIDAAGENTA")
    assert (second.agent_id, second.artifact_owner) == ("user-agent-b", "AIDAAGENTB")
    assert first.queue_url != second.queue_url
    # each queue's own policy lets only its agent receive
    sqs = boto3.client("sqs", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"StringNotEquals": {"aws:userid": "AIDAAGENTA"}}
    # asking for another id is refused where the deployment does not allow it
    with pytest.raises(StoreError, match="403"):
        _client(url, "key-a", agent_id="user-agent-b").register("web-1", "1.0")
    # publishing touches only the caller's registry items
    a.publish_processes([_process(10)])
    registry = AgentRegistry(_table(aws_stack))
    assert [c.agent_id for c in registry.candidates(pid=10)] == ["user-agent-a"]
    agent_b = registry.get("user-agent-b")
    assert agent_b is not None and agent_b.processes == []


def test_unsigned_and_tampered_requests_are_refused(url: str) -> None:
    request = urllib.request.Request(
        f"{url}/register", data=b'{"hostName": "x", "version": "1"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    unknown = boto3.Session(aws_access_key_id="key-x", aws_secret_access_key="nope", region_name="us-east-1")
    with pytest.raises(StoreError, match="403"):
        ControlPlane(url, unknown).register("x", "1")
    wrong_secret = boto3.Session(
        aws_access_key_id="key-a", aws_secret_access_key="guess", region_name="us-east-1"
    )
    with pytest.raises(StoreError, match="403"):
        ControlPlane(url, wrong_secret).register("x", "1")


def test_operations_only_of_the_caller(aws_stack: AwsStack, url: str) -> None:
    a, b = _client(url, "key-a"), _client(url, "key-b")
    a.register("web-1", "1.0")
    b.register("web-2", "1.0")
    store = OperationStore(_table(aws_stack))
    for_b = _operation(store, "user-agent-b")
    assert a.claim(for_b, 60) is False  # a job for another host
    assert a.renew(for_b, 60) is None
    with pytest.raises(TransitionRejected):
        a.report(for_b, OperationState.FAILED, error=OperationError(code="X", message="forged"))
    assert b.claim(for_b, 60) is True
    assert b.claim(for_b, 60) is False  # once
    b.report(for_b, OperationState.RUNNING)
    lease = b.renew(for_b, 60)
    assert lease is not None and lease.status == OperationState.RUNNING
    # an artifact must lie under the caller's own prefix
    theirs = {"kind": "s3", "bucket": aws_stack.bucket, "key": "artifacts/AIDAAGENTA/x.nettrace", "size": 1}
    with pytest.raises(StoreError, match="403"):
        b.report(for_b, OperationState.SUCCEEDED, artifact=theirs)
    nested = {**theirs, "key": "artifacts/AIDAAGENTB/../AIDAAGENTA/x.nettrace"}
    with pytest.raises(StoreError, match="403"):
        b.report(for_b, OperationState.SUCCEEDED, artifact=nested)
    own = {**theirs, "key": "artifacts/AIDAAGENTB/20261130_101010_123_42.nettrace"}
    process = OperationProcess(pid=42, uid=uuid.uuid4(), name="dotnet")
    b.report(for_b, OperationState.SUCCEEDED, artifact=own, process=process)
    done = store.get(for_b)
    assert done.status == OperationState.SUCCEEDED and done.artifact == own
    with pytest.raises(StoreError, match="400"):  # an agent never moves an operation to Stopping
        b.report(_operation(store, "user-agent-b"), OperationState.STOPPING)


def test_replies_only_to_questions_put_to_the_caller(aws_stack: AwsStack, url: str) -> None:
    a, b = _client(url, "key-a"), _client(url, "key-b")
    a.register("web-1", "1.0")
    b.register("web-2", "1.0")
    replies = ReplyStore(_table(aws_stack))
    question = uuid.uuid4()
    replies.expect(question, "user-agent-b")
    with pytest.raises(StoreError, match="403"):
        a.reply(question, {"environment": {"PASSWORD": "forged"}})
    with pytest.raises(StoreError, match="403"):
        a.reply(uuid.uuid4(), {"environment": {}})  # no such question
    assert replies.take(question) is None
    b.reply(question, {"environment": {"A": "1"}})
    with pytest.raises(StoreError, match="403"):
        b.reply(question, {"environment": {"A": "2"}})  # answered once
    assert replies.take(question) == {"environment": {"A": "1"}}
    assert replies.take(question) is None  # read once, then gone


def test_re_registering_updates_the_queue(
    aws_stack: AwsStack, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue made with other attributes (an older release, a new dead-letter queue) is updated,
    not a registration that fails with QueueAlreadyExists."""
    sqs = boto3.client("sqs", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    first = _client(url, "key-a").register("web-1", "1.0")
    dlq = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    monkeypatch.setenv("DNMON_DEAD_LETTER_ARN", dlq_arn)
    again = _client(url, "key-a").register("web-1", "1.1")
    assert again.queue_url == first.queue_url
    attributes = sqs.get_queue_attributes(QueueUrl=again.queue_url, AttributeNames=["All"])["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"] == dlq_arn
    assert "AIDAAGENTA" in attributes["Policy"]
