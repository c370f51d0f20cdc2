"""A process is capturable as soon as the API lists it, and gone as soon as it is gone (issue 7).

The agent runs first; the target starts later. Once GET /processes lists the new pid, a capture of
it is accepted at once and succeeds: the agent never publishes a process it cannot yet capture.
When the target exits it leaves the listing, and a capture of it is then the API's 400.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import AwsStack, StartTarget
from tests.integration.test_flow import GC_BODY, call, operation_path, wait_status

pytestmark = pytest.mark.dotnet

LISTING_TIMEOUT = 30.0  # a bound, not a promise: the watcher scans every 0.5 s here


def _listed_pids() -> set[int]:
    response = call("GET", "/processes")
    assert response["statusCode"] == 200, response["body"]
    return {entry["pid"] for entry in json.loads(response["body"])}


def _wait_listing(pid: int, *, present: bool) -> None:
    deadline = time.monotonic() + LISTING_TIMEOUT
    while (pid in _listed_pids()) != present:
        assert time.monotonic() < deadline, f"pid {pid} {'never appeared' if present else 'stayed listed'}"
        time.sleep(0.1)


def test_new_process_is_capturable_once_listed_and_refused_once_gone(
    aws_stack: AwsStack, start_agent: Any, dotnet_target: StartTarget
) -> None:
    agent = start_agent()
    _listed_pids()  # the agent is up (other .NET processes on this machine may be listed)
    target = dotnet_target("Sleeper.cs", "600")

    _wait_listing(target.pid, present=True)
    query = {"pid": str(target.pid), "durationSeconds": "1", "egressProvider": "s3"}
    response = call("POST", "/trace", query=query, body=GC_BODY)
    assert response["statusCode"] == 202, response["body"]
    done = wait_status(operation_path(response), "Succeeded", "Failed")
    assert done["status"] == "Succeeded", done
    assert done["process"]["pid"] == target.pid
    entry = next(e for e in json.loads(call("GET", "/processes")["body"]) if e["pid"] == target.pid)
    assert entry["host"] == agent.settings.host_name

    target.stop()
    _wait_listing(target.pid, present=False)
    refused = call("POST", "/trace", query=query, body=GC_BODY)
    assert refused["statusCode"] == 400, refused["body"]
    problem = json.loads(refused["body"])
    assert problem["detail"].startswith("Unable to discover a target process."), problem
    assert call("GET", f"/processes/{target.pid}")["statusCode"] == 400
