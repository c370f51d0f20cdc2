"""AWS faults never kill the agent, nor lose a capture (issue 7).

The agent reaches AWS and the agent API through ``tests.faults.Outage`` proxies (TCP, in front
of moto and of the local function URL) that can go dark (connections refused and reset) and come
back on the same ports; the API handler keeps talking to moto directly. An outage while idle or
during a capture is ridden out; the API answers 503 problem+json while its own AWS endpoint is
down; only a failure of the agent's own loop ends ``run``, and then its running capture is still
stopped gracefully.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from dnmon_core.store import AgentRegistry
from tests.apigw import header
from tests.conftest import AwsStack, StartTarget
from tests.faults import Outage
from tests.integration.test_flow import CPU_BODY, GC_BODY, call, download, operation_path, wait_status
from tests.traces import assert_cpu_trace, decode

pytestmark = pytest.mark.dotnet

OUTAGE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 30.0  # the agent's longest wait between polls after failures


@dataclass
class RunningAgent:
    """An agent whose ``run`` is on a thread; what ``run`` raised is kept, not lost to excepthook."""

    agent: Any
    stop: threading.Event
    thread: threading.Thread
    raised: list[BaseException] = field(default_factory=list)


@pytest.fixture
def run_agent(aws_stack: AwsStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningAgent]]:
    """Factory: a registered agent polling from a thread, optionally through ``endpoint_url``.

    Jobs may wait 90 s for their claim here (the agent may be in its 30 s backoff when one comes)."""
    from dnmon_agent.worker import Agent, AgentSettings

    monkeypatch.setenv("DNMON_CLAIM_SECONDS", "90")
    started: list[RunningAgent] = []

    def start(endpoint_url: str | None = None, **overrides: Any) -> RunningAgent:
        env = {"DNMON_AGENT_ID": f"outage-{uuid.uuid4().hex[:6]}", "DNMON_HOST_NAME": "outage-host"}
        settings = AgentSettings.from_env({**aws_stack.env, **env})
        settings.poll_seconds = 1
        settings.lease_seconds = 6
        settings.scan_seconds = 0.5
        for key, value in overrides.items():
            setattr(settings, key, value)
        agent = Agent(settings, endpoint_url=endpoint_url)
        agent.register()
        stop = threading.Event()
        running = RunningAgent(agent, stop, threading.Thread(target=lambda: None))

        def run() -> None:
            try:
                agent.run(stop)
            except BaseException as exc:  # kept for the test to inspect
                running.raised.append(exc)

        running.thread = threading.Thread(target=run, name="agent-run", daemon=True)
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop.set()
    for running in started:
        running.thread.join(timeout=60)


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="dnmon.agent")
    return caplog


def _wait_listed(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while pid not in {e["pid"] for e in json.loads(call("GET", "/processes")["body"])}:
        assert time.monotonic() < deadline, f"pid {pid} was never listed"
        time.sleep(0.2)


def _s3(aws: AwsStack) -> Any:
    return boto3.client("s3", endpoint_url=aws.endpoint, region_name="us-east-1")


@dataclass
class Network:
    """Everything the agent talks to, each behind its own cuttable proxy."""

    aws: Outage
    agent_api: Outage

    def cut(self) -> None:
        self.aws.cut()
        self.agent_api.cut()

    def restore(self) -> None:
        self.aws.restore()
        self.agent_api.restore()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # the fixture closes both proxies


@pytest.fixture
def network(aws_stack: AwsStack, moto_endpoint: str) -> Iterator[Network]:
    with Outage(moto_endpoint) as aws, Outage(aws_stack.env["DNMON_AGENT_API_URL"]) as agent_api:
        yield Network(aws, agent_api)


def _through(network: Network) -> dict[str, Any]:
    return {"endpoint_url": network.aws.url, "agent_api_url": network.agent_api.url}


def _ride_out(proxy: Network, running: RunningAgent, check: Callable[[], None] = lambda: None) -> None:
    """Cut the agent's network for OUTAGE_SECONDS, checking each second that its loop lives
    (and ``check``)."""
    proxy.cut()
    deadline = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < deadline:
        assert running.thread.is_alive() and not running.raised, running.raised
        check()
        time.sleep(1.0)
    proxy.restore()


def _stop_cleanly(running: RunningAgent, aws: AwsStack) -> None:
    """After the outage the agent still stops as a healthy one does: no error, out of the registry."""
    running.stop.set()
    running.thread.join(timeout=60)
    assert not running.thread.is_alive() and not running.raised and running.agent.failure is None
    table = boto3.resource("dynamodb", endpoint_url=aws.endpoint, region_name="us-east-1").Table(aws.table)
    assert AgentRegistry(table).get(running.agent.agent_id, alive_only=False) is None


@pytest.mark.slow
def test_idle_agent_survives_an_outage(
    aws_stack: AwsStack,
    network: Network,
    run_agent: Callable[..., RunningAgent],
    dotnet_target: StartTarget,
    agent_log: pytest.LogCaptureFixture,
) -> None:
    target = dotnet_target("Sleeper.cs", "600")
    with network as proxy:
        running = run_agent(**_through(proxy))
        _wait_listed(target.pid)
        assert (
            proxy.aws.connections > 0 and proxy.agent_api.connections > 0
        )  # the agent's traffic goes through

        _ride_out(proxy, running)
        assert running.thread.is_alive() and running.agent.failure is None
        warnings = [r.getMessage() for r in agent_log.records if r.name == "dnmon.agent"]
        assert any(m.startswith("polling the queue failed") for m in warnings), warnings

        query = {"pid": str(target.pid), "durationSeconds": "1", "egressProvider": "s3"}
        response = call("POST", "/trace", query=query, body=GC_BODY)
        assert response["statusCode"] == 202, response["body"]
        # The agent may be in its backoff still: up to 30 s, then it polls and claims.
        done = wait_status(operation_path(response), "Succeeded", "Failed", timeout=BACKOFF_MAX_SECONDS + 60)
        assert done["status"] == "Succeeded", done
        assert decode(download(aws_stack, done))
        assert running.thread.is_alive() and running.agent.failure is None
        _stop_cleanly(running, aws_stack)


@pytest.mark.slow
def test_capture_survives_an_outage(
    aws_stack: AwsStack,
    network: Network,
    run_agent: Callable[..., RunningAgent],
    dotnet_target: StartTarget,
) -> None:
    """Cut at ~3 s into a 10 s trace for 30 s (shorter than the 45 s lease): it still succeeds."""
    target = dotnet_target("DemoApp.cs", "cpu")
    with network as proxy:
        running = run_agent(**_through(proxy), lease_seconds=45)
        _wait_listed(target.pid)
        query = {"pid": str(target.pid), "durationSeconds": "10", "egressProvider": "s3"}
        response = call("POST", "/trace", query=query, body=CPU_BODY)
        assert response["statusCode"] == 202, response["body"]
        started = time.monotonic()
        path = operation_path(response)
        wait_status(path, "Running", timeout=20)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))

        def still_running() -> None:  # the lease holds: the API does not call the agent lost
            assert json.loads(call("GET", path)["body"])["status"] == "Running"

        _ride_out(proxy, running, still_running)
        done = wait_status(path, "Succeeded", "Failed", "Cancelled", timeout=90)
        assert done["status"] == "Succeeded", done.get("error")
        assert_cpu_trace(download(aws_stack, done))
        assert running.agent.wait_idle(30)
        assert running.thread.is_alive() and running.agent.failure is None
        _stop_cleanly(running, aws_stack)

    s3 = _s3(aws_stack)
    assert len(s3.list_objects_v2(Bucket=aws_stack.bucket).get("Contents", [])) == 1
    assert not s3.list_multipart_uploads(Bucket=aws_stack.bucket).get("Uploads")  # nothing orphaned


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_api_answers_503_when_aws_is_unreachable(
    aws_stack: AwsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    requests = [
        ("GET", "/operations", {}, None),
        ("POST", "/trace", {"pid": "4242", "durationSeconds": "1", "egressProvider": "s3"}, GC_BODY),
    ]
    for method, path, query, body in requests:
        response = call(method, path, query=query, body=body)
        assert response["statusCode"] == 503, (path, response)
        assert header(response, "Content-Type") == "application/problem+json", path
        problem = json.loads(response["body"])
        assert problem["status"] == 503 and "did not answer" in problem["detail"], problem


@pytest.mark.slow
def test_failed_loop_stops_its_capture_gracefully(
    aws_stack: AwsStack,
    run_agent: Callable[..., RunningAgent],
    dotnet_target: StartTarget,
    monkeypatch: pytest.MonkeyPatch,
    agent_log: pytest.LogCaptureFixture,
) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    running = run_agent()
    agent = running.agent
    _wait_listed(target.pid)
    broken = threading.Event()
    poll_once = agent.poll_once

    def failing_poll(wait_seconds: int) -> int:
        if broken.is_set():
            raise RuntimeError("injected: the loop itself failed")
        return int(poll_once(wait_seconds))

    monkeypatch.setattr(agent, "poll_once", failing_poll)
    query = {"pid": str(target.pid), "durationSeconds": "-1", "egressProvider": "s3"}
    response = call("POST", "/trace", query=query, body=CPU_BODY)
    assert response["statusCode"] == 202, response["body"]
    path = operation_path(response)
    wait_status(path, "Running", timeout=20)
    time.sleep(2)  # some samples
    broken.set()

    running.thread.join(timeout=90)
    assert not running.thread.is_alive()
    assert len(running.raised) == 1 and isinstance(running.raised[0], RuntimeError)
    assert agent.failure is running.raised[0]
    assert any(r.getMessage().startswith("the agent's loop failed") for r in agent_log.records)
    done = wait_status(path, "Succeeded", "Failed", "Cancelled", timeout=10)
    assert done["status"] == "Succeeded", done  # stopped gracefully, not left Running
    assert_cpu_trace(download(aws_stack, done))
