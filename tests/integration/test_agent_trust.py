"""The agent acts on nothing it cannot verify (issue 7, DESIGN.md "Trust boundaries").

Messages are put straight on a running agent's queue, as anyone with send rights could. A message
that is not signed by the control plane's key, names another agent or has expired is deleted and
logged, and nothing is claimed, run or written. A signed job still may not send the artifact off
the host: filesystem egress only into the agent's egress directories, stream egress only to
loopback. A replayed job whose operation is over starts nothing.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dnmon_core.models import EventProvidersConfiguration
from dnmon_core.operations import (
    ArtifactKind,
    CaptureJob,
    EgressTarget,
    EnvironmentRequest,
    OperationState,
    ProcessSelector,
)
from dnmon_core.signing import KmsSigner, MessageType, seal
from dnmon_core.store import OperationRecord, OperationStore, ReplyStore, utcnow
from tests.conftest import AwsStack, StartTarget
from tests.integration.test_flow import GC_BODY, call, operation_path, wait_status
from tests.traces import decode

pytestmark = pytest.mark.dotnet

AGENT_LOG = "dnmon.agent"
DROPPED = "dropping a queue message that is not a valid job for this agent"


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Queue:
    """The agent's queue as an outsider with send rights sees it."""

    def __init__(self, aws: AwsStack, url: str) -> None:
        self.sqs = boto3.client("sqs", endpoint_url=aws.endpoint, region_name="us-east-1")
        self.url = url

    def put(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.url, MessageBody=body)

    def empty(self) -> bool:
        """No message waiting and none in flight: whatever was put has been deleted."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return all(found[name] == "0" for name in names)


class ControlPlane:
    """Builds jobs as the API does, and seals them with any key for any agent."""

    def __init__(self, aws: AwsStack) -> None:
        self.aws = aws
        self.kms = boto3.client("kms", endpoint_url=aws.endpoint, region_name="us-east-1")
        table = boto3.resource("dynamodb", endpoint_url=aws.endpoint, region_name="us-east-1").Table(
            aws.table
        )
        self.table = table
        self.store = OperationStore(table)
        self.replies = ReplyStore(table)
        self.key = aws.env["DNMON_SIGNING_KEY"]

    def other_key(self) -> str:
        response = self.kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        return str(response["KeyMetadata"]["KeyId"])

    def operation(self, agent: Any, *, claim_seconds: float) -> uuid.UUID:
        """An operation Starting on ``agent``, waiting ``claim_seconds`` for its claim."""
        record = OperationRecord(
            operation_id=uuid.uuid4(),
            kind=ArtifactKind.TRACE,
            status=OperationState.STARTING,
            created=utcnow(),
            process=None,
            tags=[],
            egress_provider_name="s3",
            agent_id=agent.agent_id,
            host_name=agent.settings.host_name,
        )
        self.store.create(record, lease_seconds=claim_seconds)
        return record.operation_id

    def job(self, operation_id: uuid.UUID, pid: int, egress: EgressTarget | None = None) -> dict[str, Any]:
        """A one-second GC trace of ``pid``: the job the API would send (S3 egress by default)."""
        configuration = EventProvidersConfiguration.model_validate(GC_BODY)
        job = CaptureJob(
            operation_id=operation_id,
            kind=ArtifactKind.TRACE,
            process=ProcessSelector(pid=pid),
            duration_seconds=1,
            configuration=configuration.model_dump(mode="json", by_alias=True),
            egress=egress or EgressTarget(provider="s3", kind="s3", bucket=self.aws.bucket, key="egress/"),
            artifact_name="",
            created=utcnow(),
        )
        return job.model_dump(mode="json")

    def seal(
        self,
        body: dict[str, Any],
        agent_id: str,
        *,
        kind: MessageType = MessageType.JOB,
        key: str | None = None,
        ttl_seconds: float = 60.0,
    ) -> str:
        signer = KmsSigner(self.kms, key or self.key)
        return seal(signer, kind, agent_id, body, ttl_seconds=ttl_seconds)

    def artifacts(self) -> list[str]:
        s3 = boto3.client("s3", endpoint_url=self.aws.endpoint, region_name="us-east-1")
        return [o["Key"] for o in s3.list_objects_v2(Bucket=self.aws.bucket).get("Contents", [])]


@pytest.fixture
def plane(aws_stack: AwsStack) -> ControlPlane:
    return ControlPlane(aws_stack)


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    return caplog


def _count(caplog: pytest.LogCaptureFixture, level: int, *fragments: str) -> int:
    return sum(
        r.name == AGENT_LOG and r.levelno == level and all(f in r.getMessage() for f in fragments)
        for r in caplog.records
    )


def _logged(caplog: pytest.LogCaptureFixture, level: int, *fragments: str) -> bool:
    return _count(caplog, level, *fragments) > 0


# --- forged and stale jobs -------------------------------------------------------------------


def _unsigned(plane: ControlPlane, job: dict[str, Any], agent_id: str) -> str:
    return json.dumps(job)  # what the agent before signing accepted


def _other_key(plane: ControlPlane, job: dict[str, Any], agent_id: str) -> str:
    return plane.seal(job, agent_id, key=plane.other_key())


def _other_agent(plane: ControlPlane, job: dict[str, Any], agent_id: str) -> str:
    return plane.seal(job, f"{agent_id}-elsewhere")


def _expired(plane: ControlPlane, job: dict[str, Any], agent_id: str) -> str:
    return plane.seal(job, agent_id, ttl_seconds=-5)


FORGERIES = {
    "unsigned": (_unsigned, "not a signed dnmon envelope"),
    "other-key": (_other_key, "does not verify with the control plane's key"),
    "other-agent": (_other_agent, "-elsewhere', not this one"),
    "expired": (_expired, "has expired"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_untrusted_job_is_dropped(
    forgery: str,
    plane: ControlPlane,
    start_agent: Any,
    dotnet_target: StartTarget,
    agent_log: pytest.LogCaptureFixture,
) -> None:
    target = dotnet_target("Sleeper.cs", "600")
    agent = start_agent()
    queue = Queue(plane.aws, agent.queue_url)
    operation_id = plane.operation(agent, claim_seconds=5)
    make, reason = FORGERIES[forgery]
    queue.put(make(plane, plane.job(operation_id, target.pid), agent.agent_id))

    _wait_for(lambda: _logged(agent_log, logging.WARNING, DROPPED, reason), "the drop to be logged")
    _wait_for(queue.empty, "the message to be deleted", timeout=10)
    record = plane.store.get(operation_id)
    assert record.status == OperationState.STARTING and record.claimed_by is None
    path = f"/operations/{operation_id}"
    assert json.loads(call("GET", path)["body"])["status"] == "Starting"
    lost = wait_status(path, "Failed", "Succeeded", timeout=30)
    assert lost["status"] == "Failed" and lost["error"]["code"] == "AgentLost", lost
    assert plane.store.get(operation_id).claimed_by is None
    assert plane.artifacts() == []
    assert agent.free_capacity() == agent.settings.max_captures


def test_forged_environment_request_gets_no_reply(
    plane: ControlPlane, start_agent: Any, dotnet_target: StartTarget, agent_log: pytest.LogCaptureFixture
) -> None:
    target = dotnet_target("Sleeper.cs", "600", env={"DNMON_SECRET": "s3cr3t"})
    agent = start_agent()
    queue = Queue(plane.aws, agent.queue_url)

    def request() -> tuple[uuid.UUID, dict[str, Any]]:
        request_id = uuid.uuid4()
        body = EnvironmentRequest(request_id=request_id, process=ProcessSelector(pid=target.pid))
        return request_id, body.model_dump(mode="json")

    forged_id, forged = request()
    queue.put(plane.seal(forged, agent.agent_id, kind=MessageType.ENVIRONMENT, key=plane.other_key()))
    # A genuine request after it shows that the agent was answering all along.
    genuine_id, genuine = request()
    plane.replies.expect(genuine_id, agent.agent_id)  # as the API records the questions it puts
    queue.put(plane.seal(genuine, agent.agent_id, kind=MessageType.ENVIRONMENT, ttl_seconds=15))

    reply = _wait_for(lambda: plane.replies.take(genuine_id), "the genuine request's reply")
    assert reply["environment"]["DNMON_SECRET"] == "s3cr3t"
    _wait_for(lambda: _logged(agent_log, logging.WARNING, DROPPED, "does not verify"), "the drop")
    _wait_for(queue.empty, "the messages to be deleted", timeout=10)
    key = {"pk": f"REPLY#{forged_id}", "sk": "REPLY"}
    assert "Item" not in plane.table.get_item(Key=key, ConsistentRead=True)


def test_replayed_job_after_success_runs_nothing(
    aws_stack: AwsStack,
    plane: ControlPlane,
    start_agent: Any,
    dotnet_target: StartTarget,
    agent_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = dotnet_target("Sleeper.cs", "600")
    agent = start_agent()
    delivered: list[str] = []
    dispatch = agent.dispatch

    def recording(message: Any) -> None:
        delivered.append(str(message["Body"]))
        dispatch(message)

    monkeypatch.setattr(agent, "dispatch", recording)
    query = {"pid": str(target.pid), "durationSeconds": "1", "egressProvider": "s3"}
    response = call("POST", "/trace", query=query, body=GC_BODY)
    assert response["statusCode"] == 202, response["body"]
    path = operation_path(response)
    done = wait_status(path, "Succeeded", "Failed")
    assert done["status"] == "Succeeded", done
    assert len(delivered) == 1 and len(plane.artifacts()) == 1
    artifact = plane.artifacts()[0]

    queue = Queue(aws_stack, agent.queue_url)
    for _ in range(2):  # the job, signed and unexpired, replayed by someone who read it
        queue.put(delivered[0])
    _wait_for(lambda: len(delivered) == 3, "the replays to be delivered")
    operation_id = done["operationId"]
    refused = (operation_id, "already claimed or over: not starting it")
    _wait_for(lambda: _count(agent_log, logging.INFO, *refused) == 2, "both replays to be refused")
    _wait_for(queue.empty, "the replays to be deleted", timeout=10)
    assert agent.wait_idle(10)
    assert plane.artifacts() == [artifact]
    again = json.loads(call("GET", path)["body"])
    assert again["status"] == "Succeeded" and again["resourceLocation"] == done["resourceLocation"]


# --- egress that would leave the host ----------------------------------------------------------


def _host_address() -> str | None:
    """A non-loopback IPv4 address of this machine (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


class Listener:
    """An HTTP server on a non-loopback address that counts what reaches it."""

    def __init__(self, address: str) -> None:
        self.requests: list[str] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                listener.requests.append(self.path)
                self.send_response(204)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/ingest"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def off_host() -> Iterator[Listener | None]:
    address = _host_address()
    if address is None:
        yield None
        return
    listener = Listener(address)
    yield listener
    listener.close()


@pytest.fixture
def egress_dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    return allowed, outside


def _run_signed(plane: ControlPlane, agent: Any, pid: int, egress: EgressTarget) -> dict[str, Any]:
    operation_id = plane.operation(agent, claim_seconds=30)
    body = plane.job(operation_id, pid, egress)
    Queue(plane.aws, agent.queue_url).put(plane.seal(body, agent.agent_id))
    return wait_status(f"/operations/{operation_id}", "Succeeded", "Failed", "Cancelled", timeout=60)


def test_filesystem_egress_inside_egress_directories_is_written(
    plane: ControlPlane, start_agent: Any, dotnet_target: StartTarget, egress_dirs: tuple[Path, Path]
) -> None:
    """The control for the refusals below: the same signed job, into an allowed directory, runs."""
    allowed, _ = egress_dirs
    target = dotnet_target("Sleeper.cs", "600")
    agent = start_agent(egress_directories=(str(allowed),))
    egress = EgressTarget(provider="local", kind="filesystem", directory=str(allowed / "traces"))
    done = _run_signed(plane, agent, target.pid, egress)
    assert done["status"] == "Succeeded", done
    location = json.loads(call("GET", f"/operations/{done['operationId']}/artifact")["body"])["location"]
    written = list((allowed / "traces").iterdir())
    assert written == [Path(location)] and written[0].name.endswith(f"_{target.pid}.nettrace")
    assert decode(written[0].read_bytes())


@pytest.mark.parametrize("escape", ["outside", "traversal", "stream"])
def test_egress_off_the_host_is_refused(
    escape: str,
    plane: ControlPlane,
    start_agent: Any,
    dotnet_target: StartTarget,
    egress_dirs: tuple[Path, Path],
    off_host: Listener | None,
) -> None:
    allowed, outside = egress_dirs
    target = dotnet_target("Sleeper.cs", "600")
    agent = start_agent(egress_directories=(str(allowed),))
    if escape == "outside":
        egress = EgressTarget(provider="local", kind="filesystem", directory=str(outside))
    elif escape == "traversal":  # names the allowed directory, resolves outside it
        egress = EgressTarget(provider="local", kind="filesystem", directory=f"{allowed}/../outside")
    else:
        url = off_host.url if off_host is not None else "http://192.0.2.55:8080/ingest"
        egress = EgressTarget(provider=None, kind="stream", url=url)
    done = _run_signed(plane, agent, target.pid, egress)
    assert done["status"] == "Failed", done
    assert done["error"]["code"] == "EgressRefused", done
    assert done["process"]["pid"] == target.pid
    assert list(outside.iterdir()) == [] and list(allowed.iterdir()) == []
    if off_host is not None:
        assert off_host.requests == []
    assert plane.artifacts() == []
