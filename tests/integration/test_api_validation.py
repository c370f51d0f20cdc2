"""Every invalid field → 400 problem+json naming it; unknown process / no default → 400 saying
what was seen. The API runs against moto server; agents are registry entries as the API sees them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest

from dnmon_core.models import ProcessInfo
from dnmon_core.store import AgentRegistry
from tests.apigw import header, invoke
from tests.conftest import AwsStack

TRACE_BODY = {"Providers": [{"Name": "Microsoft-Windows-DotNETRuntime"}]}
UID = "cd4da319-fa9e-4987-ac4e-e57b2aac248b"


def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    return invoke(method, path, **kwargs)


def problem(response: dict[str, Any], status: int = 400) -> dict[str, Any]:
    assert response["statusCode"] == status, response
    assert header(response, "Content-Type") == "application/problem+json"
    body: dict[str, Any] = json.loads(response["body"])
    assert body["status"] == status
    return body


@pytest.fixture
def registry(aws_stack: AwsStack) -> AgentRegistry:
    table = boto3.resource("dynamodb", endpoint_url=aws_stack.endpoint, region_name="us-east-1").Table(
        aws_stack.table
    )
    return AgentRegistry(table)


def _agent(registry: AgentRegistry, host: str, processes: list[dict[str, Any]]) -> None:
    registry.register(f"agent-{host}", host, f"https://sqs/{host}", "0.1.0")
    registry.publish_processes(f"agent-{host}", host, [ProcessInfo.model_validate(p) for p in processes])


def _process(pid: int, name: str = "dotnet", uid: str | None = None) -> dict[str, Any]:
    return {
        "pid": pid,
        "uid": uid or str(uuid.uuid4()),
        "name": name,
        "commandLine": "dotnet App.dll",
        "operatingSystem": "Linux",
        "processArchitecture": "x64",
        "managedEntryPointAssemblyName": "App",
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"pid": "4_2"}, "pid"),
        ({"pid": "\u0661\u0662\u0663"}, "pid"),
        ({"PID": "1", "pid": "2"}, "pid"),
        ({"durationSeconds": "-2"}, "durationSeconds"),
        ({"durationSeconds": "1.5"}, "durationSeconds"),
        ({"durationSeconds": "2147483648"}, "durationSeconds"),
        ({"pid": "abc"}, "pid"),
        ({"uid": "not-a-guid"}, "uid"),
        ({"egressProvider": "nowhere"}, "egressProvider"),
    ],
)
def test_bad_query_fields(aws_stack: AwsStack, query: dict[str, str], field: str) -> None:
    for route, body in (("/trace", TRACE_BODY), ("/livemetrics", {})):
        body_json = problem(call("POST", route, query=query, body=body))
        assert field in body_json["errors"], body_json


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Providers": [{"Name": "P"}], "BufferSizeInMB": 0}, "bufferSizeInMB"),
        ({"Providers": [{"Name": "P"}], "BufferSizeInMB": 1025}, "bufferSizeInMB"),
        ({"Providers": []}, "providers"),
        ({"Providers": [{"Name": "P", "Keywords": "0xZZ"}]}, "providers[0].keywords"),
        ({"Providers": [{"Name": "P", "EventLevel": "Loud"}]}, "providers[0].eventLevel"),
        ({"Providers": [{"Name": "P", "Arguments": {"a": 'say "hi"'}}]}, "providers[0].arguments"),
        ({"Providers": [{"Name": "\u0000"}]}, "providers[0].name"),
        ({"Providers": [{"Name": ""}]}, "providers[0].name"),
    ],
)
def test_bad_trace_bodies(aws_stack: AwsStack, body: dict[str, Any], field: str) -> None:
    errors = problem(call("POST", "/trace", body=body))["errors"]
    assert any(key.startswith(field) for key in errors), errors


def test_missing_and_malformed_bodies(aws_stack: AwsStack) -> None:
    assert "" in problem(call("POST", "/trace"))["errors"]
    assert problem(call("POST", "/trace", body="{not json"))["errors"]
    assert problem(call("POST", "/livemetrics", body={"providers": [{"providerName": ""}]}))["errors"]


def test_process_resolution_messages(aws_stack: AwsStack, registry: AgentRegistry) -> None:
    detail = problem(call("POST", "/trace", body=TRACE_BODY))["detail"]
    assert detail.startswith("Unable to discover a target process.") and "no dnmon agent" in detail
    _agent(registry, "web-1", [_process(10), _process(11)])
    detail = problem(call("POST", "/trace", body=TRACE_BODY))["detail"]
    assert "default process" in detail and "10 dotnet" in detail and "11 dotnet" in detail
    detail = problem(call("POST", "/trace", query={"pid": "12"}, body=TRACE_BODY))["detail"]
    assert detail.startswith("Unable to discover a target process.") and "pid=12" in detail
    detail = problem(call("POST", "/trace", query={"name": "DOTNET"}, body=TRACE_BODY))["detail"]
    assert "2 processes match" in detail and "on host web-1" in detail
    _agent(registry, "web-2", [_process(20, uid=UID), _process(10)])
    # pid 20 is on one host only: no host parameter needed (the 429/202 path needs a queue, so a
    # 503 from the fake queue URL proves the request got past resolution)
    assert call("POST", "/trace", query={"pid": "20"}, body=TRACE_BODY)["statusCode"] == 503
    detail = problem(call("POST", "/trace", query={"pid": "10"}, body=TRACE_BODY))["detail"]
    assert "2 processes match" in detail and "web-1" in detail and "web-2" in detail
    assert "host" in problem(call("POST", "/trace", query={"host": "web-9"}, body=TRACE_BODY))["errors"]
    listed = json.loads(call("GET", "/processes")["body"])
    assert sorted(p["pid"] for p in listed) == [10, 10, 11, 20]
    assert not any(p["isDefault"] for p in listed)
    only = json.loads(call("GET", "/processes", query={"host": "web-1"})["body"])
    assert sorted(p["pid"] for p in only) == [10, 11]
    info = json.loads(call("GET", "/process", query={"uid": UID})["body"])
    assert info["pid"] == 20 and info["managedEntryPointAssemblyName"] == "App"


def test_operations_routes_validate(aws_stack: AwsStack) -> None:
    assert "operationId" in problem(call("GET", "/operations/nope"))["errors"]
    assert problem(call("GET", f"/operations/{uuid.uuid4()}"))["detail"].startswith("Operation not found.")
    assert "pid" in problem(call("GET", "/operations", query={"pid": "x"}))["errors"]
    assert json.loads(call("GET", "/operations")["body"]) == []
    assert problem(call("GET", "/nowhere"), 404)
    assert "profile" in problem(call("GET", "/trace", query={"profile": "Cpu,Bogus"}))["errors"]
