"""Streamed captures over HTTP on ``dnmon up``: the StreamFunction's handler, run by our runtime loop
in its own processes behind the local Lambda Runtime API, through the uvicorn gateway; the same
code API Gateway invokes on AWS. The failure cases a client must be able to tell apart."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import urllib.request
from collections.abc import Iterator

import pytest

from dnmon_agent.local.stack import SEED_LIVEMETRICS_BODY, SEED_TRACE_BODY
from dnmon_core.models import iter_json_seq
from tests.conftest import StartTarget
from tests.e2e.test_up import Up, start_up, stop_up
from tests.traces import assert_cpu_trace

pytestmark = pytest.mark.dotnet


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    stack = start_up()  # the default 5 s counter interval
    yield stack
    stop_up(stack)


def _connection(up: Up) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", up.port, timeout=120)


def _json(up: Up, body: object) -> dict[str, object]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {up.token}"}
    return {"body": json.dumps(body), "headers": headers}


def _artifact(up: Up, operation_id: str) -> tuple[dict[str, object], bytes]:
    link = up.request("GET", f"/operations/{operation_id}/artifact")
    assert link.status == 302
    body = json.loads(link.read())
    with urllib.request.urlopen(str(body["url"])) as download:  # presigned: no Authorization header
        return body, download.read()


def test_headers_come_when_the_session_opens_not_at_the_first_record(
    up: Up, dotnet_target: StartTarget
) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    conn = _connection(up)
    conn.request(
        "POST", f"/livemetrics?pid={target.pid}&durationSeconds=6", **_json(up, SEED_LIVEMETRICS_BODY)
    )
    response = conn.getresponse()
    assert response.status == 200
    location = str(response.getheader("Location"))
    # The session is open (Running) and the status line is here, but the first record is one
    # counter interval (5 s) away: no byte of the body has reached the socket yet.
    assert up.operation(location)["status"] == "Running"
    assert conn.sock is not None
    readable, _, _ = select.select([conn.sock], [], [], 0)
    assert not readable
    records = list(iter_json_seq(response.read()))
    assert records and all(r["name"] for r in records)
    assert up.wait_operation(location, "Succeeded")["status"] == "Succeeded"


def test_a_capture_that_cannot_start_is_a_400_problem(up: Up, dotnet_target: StartTarget) -> None:
    """A stopped runtime accepts the connection but never answers CollectTracing: the agent gives
    up before any session opens, and the answer is a problem, not an empty 200."""
    target = dotnet_target("Sleeper.cs", "600")
    up.wait_for_process(target.pid)
    os.kill(target.pid, signal.SIGSTOP)
    try:
        response = up.request("POST", f"/trace?pid={target.pid}&durationSeconds=5", SEED_TRACE_BODY)
        body = response.read()
    finally:
        os.kill(target.pid, signal.SIGCONT)
    assert response.status == 400, body
    assert response.getheader("Content-Type") == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["detail"]
    location = str(response.getheader("Location"))
    assert up.operation(location)["status"] == "Failed"


def test_a_target_that_dies_mid_trace_cuts_the_stream(up: Up, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    response = up.request("POST", f"/trace?pid={target.pid}&durationSeconds=120", SEED_TRACE_BODY)
    assert response.status == 200
    location = str(response.getheader("Location"))
    first = response.read1(1 << 16)
    assert first.startswith(b"Nettrace")
    target.kill()
    with pytest.raises(http.client.IncompleteRead):  # no final chunk: the client sees the cut
        response.read()
    failed = up.wait_operation(location, "Failed")
    operation_id = location.rsplit("/", 1)[1]
    assert failed["resourceLocation"].endswith(f"/operations/{operation_id}/artifact")
    link, kept = _artifact(up, operation_id)
    assert link["partial"] is True
    assert kept.startswith(first)


def test_a_trace_whose_client_leaves_is_stopped_and_kept(up: Up, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    conn = _connection(up)
    conn.request("POST", f"/trace?pid={target.pid}&durationSeconds=300", **_json(up, SEED_TRACE_BODY))
    response = conn.getresponse()
    assert response.status == 200
    location = str(response.getheader("Location"))
    assert response.read1(1 << 16).startswith(b"Nettrace")
    response.close()
    conn.close()
    # Stopped gracefully long before its 300 s: rundown written, the file whole, the slot free.
    assert up.wait_operation(location, "Succeeded", timeout=90)["status"] == "Succeeded"
    _, kept = _artifact(up, location.rsplit("/", 1)[1])
    assert_cpu_trace(kept)


def test_live_metrics_whose_client_leaves_are_cancelled(up: Up, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    response = up.request("POST", f"/livemetrics?pid={target.pid}&durationSeconds=300", SEED_LIVEMETRICS_BODY)
    assert response.status == 200
    location = str(response.getheader("Location"))
    assert response.read1(1 << 16).startswith(b"\x1e")  # the first interval's records
    response.close()
    assert up.wait_operation(location, "Cancelled", timeout=90)["status"] == "Cancelled"
