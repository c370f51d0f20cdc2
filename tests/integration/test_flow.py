"""The whole flow on moto server: API handler → SQS → agent → real .NET process → S3 → DynamoDB."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import boto3
import pytest

from dnmon_agent.diagnostics.events import EndOfStream
from dnmon_core.models import iter_json_seq
from tests.apigw import FakeContext, body_bytes, header, invoke
from tests.conftest import AwsStack, StartTarget
from tests.traces import assert_cpu_trace, decode

pytestmark = pytest.mark.dotnet

CPU_BODY = {
    "Providers": [
        {"Name": "Microsoft-DotNETCore-SampleProfiler", "EventLevel": "Informational"},
        {
            "Name": "Microsoft-Windows-DotNETRuntime",
            "EventLevel": "Informational",
            "Keywords": "0x14C14FCCBD",
        },
    ],
    "BufferSizeInMB": 64,
}
GC_BODY = {
    "providers": [
        {"name": "Microsoft-Windows-DotNETRuntime", "keywords": "0x1", "eventLevel": "Informational"}
    ]
}


def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    return invoke(method, path, **kwargs)


def operation_path(response: dict[str, Any]) -> str:
    location = header(response, "Location")
    assert location and location.startswith(
        "https://abc123.execute-api.us-east-1.amazonaws.com/v1/operations/"
    )
    return "/operations/" + location.rsplit("/", 1)[1]


def wait_status(path: str, *states: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = call("GET", path)
        status = json.loads(response["body"])
        if status["status"] in states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.3)


def download(aws: AwsStack, status: dict[str, Any]) -> bytes:
    assert status["resourceLocation"].endswith(f"/operations/{status['operationId']}/artifact")
    response = call("GET", f"/operations/{status['operationId']}/artifact")
    assert response["statusCode"] == 302
    link = json.loads(response["body"])
    assert header(response, "Location") == link["url"]
    s3 = boto3.client("s3", endpoint_url=aws.endpoint, region_name="us-east-1")
    data: bytes = s3.get_object(Bucket=link["bucket"], Key=link["key"])["Body"].read()
    assert len(data) == link["size"]
    return data


def test_trace_to_s3_egress(aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    start_agent()
    response = call(
        "POST", "/trace", query={"pid": str(target.pid), "durationSeconds": "2", "egressProvider": "s3",
                                 "tags": "incident-7,,cpu"}, body=CPU_BODY,
    )  # fmt: skip
    assert response["statusCode"] == 202, response
    path = operation_path(response)
    running = json.loads(call("GET", path)["body"])
    assert running["status"] in ("Starting", "Running") and running["isStoppable"]
    assert running["process"]["pid"] == target.pid and running["tags"] == ["incident-7", "cpu"]
    assert running["egressProviderName"] == "s3"
    done = wait_status(path, "Succeeded", "Failed")
    assert done["status"] == "Succeeded", done
    assert call("GET", path)["statusCode"] == 201
    assert_cpu_trace(download(aws_stack, done))
    listed = json.loads(call("GET", "/operations", query={"tags": "cpu"})["body"])
    assert [o["operationId"] for o in listed] == [done["operationId"]]
    assert json.loads(call("GET", "/operations", query={"tags": "cpu,other"})["body"]) == []


def test_livemetrics_inline_json_seq(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    start_agent()
    provider = {"providerName": "CustomProvider", "counterNames": ["counter1", "counter2"]}
    body = {"includeDefaultProviders": False, "providers": [provider]}
    response = call("POST", "/livemetrics", query={"pid": str(target.pid), "durationSeconds": "3"}, body=body)
    assert response["statusCode"] == 200, response
    assert header(response, "Content-Type") == "application/json-seq"
    disposition = header(response, "Content-Disposition") or ""
    assert re.fullmatch(
        rf'attachment; filename="\d{{8}}_\d{{6}}_\d{{3}}_{target.pid}\.metrics\.json"', disposition
    )
    raw = body_bytes(response)
    assert raw.startswith(b"\x1e")
    records = list(iter_json_seq(raw))
    assert {r["name"] for r in records} == {"counter1", "counter2"}
    assert all(r["value"] == 3 for r in records if r["name"] == "counter1")
    status = wait_status(operation_path(response), "Succeeded")
    assert status["egressProviderName"] is None


def test_twenty_parallel_traces_per_host_three_accepted_each(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    """dotnet-monitor's limit is per instance: three traces on one host never block another's."""
    target = dotnet_target("Sleeper.cs", "600")
    hosts = [start_agent().settings.host_name, start_agent().settings.host_name]
    body = {
        "providers": [
            {"name": "Microsoft-Windows-DotNETRuntime", "keywords": "0x1", "eventLevel": "Informational"}
        ]
    }
    results: dict[str, list[dict[str, Any]]] = {host: [] for host in hosts}
    lock = threading.Lock()

    def query(host: str) -> dict[str, str]:
        return {"pid": str(target.pid), "durationSeconds": "2", "egressProvider": "s3", "host": host}

    def post(host: str) -> None:
        response = call("POST", "/trace", query=query(host), body=body)
        with lock:
            results[host].append(response)

    threads = [threading.Thread(target=post, args=(host,)) for host in hosts for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for host in hosts:
        codes = sorted(r["statusCode"] for r in results[host])
        assert codes == [202] * 3 + [429] * 17, host
    limited = next(r for r in results[hosts[0]] if r["statusCode"] == 429)
    assert header(limited, "Content-Type") == "application/problem+json"
    assert json.loads(limited["body"])["detail"] == "Rate limit reached."
    for accepted in (r for host in hosts for r in results[host] if r["statusCode"] == 202):
        assert wait_status(operation_path(accepted), "Succeeded", "Failed")["status"] == "Succeeded"
    # the slots came back
    again = call("POST", "/trace", query=query(hosts[1]), body=body)
    assert again["statusCode"] == 202, again["body"]


def test_duplicate_delivery_runs_one_capture(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    from dnmon_agent.worker import Agent, AgentSettings

    target = dotnet_target("Sleeper.cs", "600")
    agent = Agent(AgentSettings.from_env({**aws_stack.env, "DNMON_AGENT_ID": "dup"}))
    queue = agent.register()  # registered but not polling yet
    query = {"pid": str(target.pid), "durationSeconds": "1", "egressProvider": "s3"}
    response = call("POST", "/trace", query=query, body=GC_BODY)
    assert response["statusCode"] == 202
    sqs = boto3.client("sqs", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    message = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"][0]
    for _ in range(2):  # the same job delivered twice more
        sqs.send_message(QueueUrl=queue, MessageBody=message["Body"])
    sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    for _ in range(5):
        agent.poll_once(1)
    assert agent.wait_idle(60)
    status = wait_status(operation_path(response), "Succeeded", "Failed")
    assert status["status"] == "Succeeded"
    s3 = boto3.client("s3", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=aws_stack.bucket).get("Contents", [])
    assert len(objects) == 1 and objects[0]["Key"].endswith(f"_{target.pid}.nettrace")
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages") is None


def test_stop_indefinite_trace_and_cancel(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    start_agent()
    query = {"pid": str(target.pid), "durationSeconds": "-1", "egressProvider": "s3"}
    response = call("POST", "/trace", query=query, body=CPU_BODY)
    path = operation_path(response)
    time.sleep(3)
    stop = call("DELETE", path, query={"stop": "true"})
    assert stop["statusCode"] == 202
    done = wait_status(path, "Succeeded", "Failed")
    assert done["status"] == "Succeeded", done
    assert_cpu_trace(download(aws_stack, done))

    cancelled = call("POST", "/trace", query=query, body=CPU_BODY)
    cancel_path = operation_path(cancelled)
    time.sleep(2)
    assert call("DELETE", cancel_path)["statusCode"] == 200
    status = wait_status(cancel_path, "Cancelled")
    assert not status["isStoppable"]
    assert call("DELETE", cancel_path)["statusCode"] == 400  # finished operations never change
    assert wait_status(cancel_path, "Cancelled", timeout=5)["status"] == "Cancelled"


def test_killed_agent_fails_once_its_lease_expires(aws_stack: AwsStack, dotnet_target: StartTarget) -> None:
    target = dotnet_target("Sleeper.cs", "600")
    env = {**os.environ, **aws_stack.env, "DNMON_AGENT_ID": f"doomed-{uuid.uuid4().hex[:6]}",
           "DNMON_LEASE_SECONDS": "4", "DNMON_POLL_SECONDS": "1", "DNMON_SCAN_SECONDS": "0.5"}  # fmt: skip
    agent = subprocess.Popen(
        [sys.executable, "-m", "dnmon_agent.cli", "agent"], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not json.loads(call("GET", "/info")["body"])["agents"]:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        query = {"pid": str(target.pid), "durationSeconds": "-1", "egressProvider": "s3"}
        response = call("POST", "/trace", query=query, body=GC_BODY)
        path = operation_path(response)
        table = boto3.resource("dynamodb", endpoint_url=aws_stack.endpoint, region_name="us-east-1").Table(
            aws_stack.table
        )
        op_key = {"pk": f"OP#{path.rsplit('/', 1)[1]}", "sk": "OP"}
        while "claimedBy" not in table.get_item(Key=op_key)["Item"]:
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        assert json.loads(call("GET", path)["body"])["status"] in ("Starting", "Running")
        failed = wait_status(path, "Failed", timeout=30)
        assert failed["error"]["code"] == "AgentLost"
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait()
        if agent.stderr:
            agent.stderr.close()


def test_s3_failing_during_upload_fails_and_aborts(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    from botocore.config import Config

    from tests.faults import FaultProxy

    target = dotnet_target("Busy.cs", "600", "alloc")
    verbose = {"Providers": [
        {"Name": "Microsoft-DotNETCore-SampleProfiler"},
        {"Name": "Microsoft-Windows-DotNETRuntime", "Keywords": "0xFFFFFFFFFFFF", "EventLevel": "Verbose"},
    ]}  # fmt: skip

    def upload_part(method: str, path: str) -> bool:
        return method == "PUT" and "partNumber=" in path

    with FaultProxy(aws_stack.endpoint, upload_part) as proxy:
        agent = start_agent(part_size=5 << 20)
        config = Config(retries={"mode": "standard", "max_attempts": 3}, signature_version="s3v4")
        agent.s3 = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1", config=config)
        query = {"pid": str(target.pid), "durationSeconds": "60", "egressProvider": "s3"}
        response = call("POST", "/trace", query=query, body=verbose)
        failed = wait_status(operation_path(response), "Failed", "Succeeded", timeout=120)
        assert failed["status"] == "Failed"
        assert failed["error"]["code"] == "EgressFailed"
        assert "UploadPart 1" in failed["error"]["message"]
        # botocore retried the same part before the agent gave up; no later part was tried
        assert len(proxy.failed) >= 3 and all(path.endswith("partNumber=1") for _, path in proxy.failed)
        assert any(method == "DELETE" and "uploadId=" in path for method, path in proxy.forwarded)
    s3 = boto3.client("s3", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    assert not s3.list_multipart_uploads(Bucket=aws_stack.bucket).get("Uploads")
    assert not s3.list_objects_v2(Bucket=aws_stack.bucket).get("Contents")


def test_process_environment_through_the_agent(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    target = dotnet_target("Sleeper.cs", "600", env={"DNMON_MARKER": "x=1;y"})
    start_agent()
    response = call("GET", "/processes/env", query={"pid": str(target.pid)})
    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["DNMON_MARKER"] == "x=1;y"
    info = json.loads(call("GET", f"/processes/{target.pid}")["body"])
    assert info["managedEntryPointAssemblyName"] == "Sleeper"


def test_netcore31_environment_is_refused_clearly(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    target = dotnet_target("Sleeper.cs", "600", runtime="netcore31")
    start_agent()
    response = call("GET", "/processes/env", query={"pid": str(target.pid)})
    assert response["statusCode"] == 400
    assert "UNKNOWN_COMMAND" in json.loads(response["body"])["detail"]


def test_schedule_input_starts_the_same_capture(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    from dnmon_api import schedule

    target = dotnet_target("Sleeper.cs", "600")
    start_agent()
    event = {"route": "/trace", "query": {"pid": str(target.pid), "durationSeconds": "1", "tags": "nightly"},
             "body": GC_BODY}  # fmt: skip
    result = schedule.handler(event, FakeContext())  # type: ignore[arg-type]
    assert result["status"] == 202
    status = wait_status(f"/operations/{result['operationId']}", "Succeeded", "Failed")
    assert status["status"] == "Succeeded" and status["tags"] == ["nightly"]
    items = decode(download(aws_stack, status))  # a schedule always egresses to S3
    assert isinstance(items[-1], EndOfStream)
    with pytest.raises(schedule.ScheduledCaptureFailed) as refused:  # tests/integration/test_schedule.py
        schedule.handler({"route": "/dump", "query": {}}, FakeContext())  # type: ignore[arg-type]
    assert refused.value.problem["status"] == 400 and "route must be one of" in str(refused.value)
