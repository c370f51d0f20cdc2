"""Scheduled captures: the template's own sample schedule input, driven through the schedule handler
on moto server, with a real agent and a real .NET 8 process; and what a failed one leaves behind.

EventBridge Scheduler invokes the handler asynchronously: nothing reads its return value. A capture
that does not start must therefore be an ERROR in the log and an exception, which Lambda retries
and then dead-letters (infra/template.yaml; tests/unit/test_template.py checks that wiring).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dnmon_agent.local.template import read
from dnmon_api import schedule
from dnmon_api.schedule import ScheduledCaptureFailed
from dnmon_core.config import ServiceSettings
from tests.apigw import FakeContext
from tests.conftest import TEST_USER_ID, AwsStack, StartTarget
from tests.integration.test_flow import call, wait_status
from tests.traces import assert_cpu_trace

pytestmark = pytest.mark.dotnet

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
NETTRACE_MAGIC = b"Nettrace"


def schedule_function() -> dict[str, Any]:
    properties: dict[str, Any] = read(TEMPLATE)["Resources"]["ScheduleFunction"]["Properties"]
    return properties


def sample_input() -> dict[str, Any]:
    """The Input of the template's one sample schedule, as Scheduler would send it."""
    (event,) = schedule_function()["Events"].values()
    payload: dict[str, Any] = json.loads(event["Properties"]["Input"])
    return payload


@pytest.fixture
def private_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A TMPDIR of this test's own, and agents that discover only there: the sample's
    ``name=dotnet`` then matches this test's target, whatever else runs on the machine.
    (Short, under /tmp: a diagnostics socket path must fit in 108 bytes.)"""
    with tempfile.TemporaryDirectory(prefix="dnmon-sched-", dir="/tmp") as directory:
        monkeypatch.setenv("TMPDIR", directory)
        monkeypatch.setenv("DNMON_DISCOVERY", "tmpdir")
        yield directory


def test_the_sample_schedule_puts_a_cpu_trace_in_its_egress_provider(
    aws_stack: AwsStack,
    private_tmpdir: str,
    dotnet_target: StartTarget,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dnmon")
    target = dotnet_target("DemoApp.cs", "cpu", env={"TMPDIR": private_tmpdir})
    host = start_agent().settings.host_name
    (process,) = json.loads(call("GET", "/processes", query={"host": host})["body"])
    assert process["pid"] == target.pid

    event = sample_input()
    assert event["query"]["durationSeconds"] == "30"  # the nightly 30 s CPU trace, as deployed
    event["query"].update(host=host, name=process["name"])  # this test's host; its target's name
    result = schedule.handler(event, FakeContext())  # type: ignore[arg-type]
    assert result["status"] == 202
    (started,) = [r for r in caplog.records if r.getMessage() == "scheduled capture started"]
    assert started.levelno == logging.INFO and started.operationId == result["operationId"]

    status = wait_status(f"/operations/{result['operationId']}", "Succeeded", "Failed", timeout=120)
    assert status["status"] == "Succeeded", status
    assert status["process"]["pid"] == target.pid
    assert status["egressProviderName"] == event["query"]["egressProvider"]

    provider = ServiceSettings.from_env(dict(os.environ)).egress_providers[event["query"]["egressProvider"]]
    assert provider.bucket is not None
    s3 = boto3.client("s3", endpoint_url=aws_stack.endpoint, region_name="us-east-1")
    (artifact,) = s3.list_objects_v2(Bucket=provider.bucket, Prefix=provider.prefix)["Contents"]
    # <provider prefix><the agent's aws:userid>/{yyyyMMdd_HHmmss_fff}_{pid}.nettrace
    assert re.fullmatch(
        rf"{provider.prefix}{TEST_USER_ID}/\d{{8}}_\d{{6}}_\d{{3}}_{target.pid}\.nettrace", artifact["Key"]
    )
    assert artifact["Size"] > 0
    data = s3.get_object(Bucket=provider.bucket, Key=artifact["Key"])["Body"].read()
    assert data.startswith(NETTRACE_MAGIC)
    assert_cpu_trace(data)


def _failure(event: dict[str, Any], caplog: pytest.LogCaptureFixture) -> tuple[ScheduledCaptureFailed, Any]:
    caplog.set_level(logging.INFO, logger="dnmon")
    with pytest.raises(ScheduledCaptureFailed) as raised:
        schedule.handler(event, FakeContext())  # type: ignore[arg-type]
    (record,) = [r for r in caplog.records if r.getMessage() == "scheduled capture failed"]
    return raised.value, record


def test_a_schedule_naming_an_unknown_host_raises_and_logs_the_problem_as_an_error(
    aws_stack: AwsStack, caplog: pytest.LogCaptureFixture
) -> None:
    event = sample_input()
    event["query"]["host"] = "no-such-host"
    failed, record = _failure(event, caplog)

    assert failed.problem["status"] == 400
    assert failed.problem["errors"] == {"host": ["No live dnmon agent runs on host 'no-such-host'."]}
    assert record.levelno == logging.ERROR
    assert record.problem == failed.problem and record.query == event["query"]
    # What Lambda reports as the error (and puts in the dead-letter message's ErrorMessage).
    assert str(failed) == f"400 One or more validation errors occurred.: {failed.problem['detail']}"
    assert "no-such-host" in str(failed)

    # The exception is what sends the event on: Lambda retries it, then dead-letters it.
    function = schedule_function()
    assert function["DeadLetterQueue"]["Type"] == "SQS"
    assert function["EventInvokeConfig"]["MaximumRetryAttempts"] == 2


def test_an_aws_fault_raises_a_503_problem_and_logs_the_fault(
    aws_stack: AwsStack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DNMON_TABLE", "dnmon-no-such-table")
    failed, record = _failure(sample_input(), caplog)

    assert failed.problem["status"] == 503
    assert record.levelno == logging.ERROR and record.problem == failed.problem
    assert "ResourceNotFoundException" in record.error  # which AWS call failed, in the log only
