"""Issue 10: dnmon's HTTP contract against dotnet-monitor's, each difference checked over HTTP on
``dnmon up`` (real gateway, real Lambda handlers, real agent, real .NET targets).

Not here: fleet-wide pid/name resolution across several agents (``dnmon up`` runs one agent), which
tests/integration covers. The agent sees every .NET process on the machine, so every request names
its process; none relies on the default process.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from dnmon_agent.local.stack import SEED_TRACE_BODY
from tests.dotnet import DotnetTarget
from tests.e2e import test_up
from tests.e2e.test_up import Up

pytestmark = pytest.mark.dotnet
up = test_up.up  # the module-scoped `dnmon up` fixture: one stack for this module

SAMPLER = {"Providers": [{"Name": "Microsoft-DotNETCore-SampleProfiler"}]}
NOT_FOUND = "Unable to discover a target process."


@pytest.fixture(scope="module")
def demo(up: Up) -> Iterator[DotnetTarget]:
    """One busy DemoApp for the module's captures."""
    with test_up.listed_target(up, "DemoApp.cs", "cpu") as target:
        yield target


@pytest.fixture(scope="module")
def echo(up: Up) -> Iterator[DotnetTarget]:
    """ArgsEcho prints the Arguments its EventSource was enabled with."""
    with test_up.listed_target(up, "ArgsEcho.cs", "600") as target:
        yield target


def problem(response: Any) -> dict[str, Any]:
    assert response.getheader("Content-Type") == "application/problem+json"
    body: dict[str, Any] = json.loads(response.read())
    assert body["status"] == response.status
    return body


def op_path(response: Any) -> str:
    location = response.getheader("Location")
    assert location, response.getheaders()
    return "/operations/" + str(location).rsplit("/", 1)[1]


def start_held(up: Up, pid: int, body: dict[str, Any] = SAMPLER) -> str:
    """An indefinite capture egressed to S3: answered 202 at once; returns its operation path."""
    response = up.request("POST", f"/trace?pid={pid}&durationSeconds=-1&egressProvider=s3", body)
    assert response.status == 202, response.read()
    response.read()
    return op_path(response)


def cancel(up: Up, path: str) -> None:
    up.request("DELETE", path).read()


# --- provider bodies ---------------------------------------------------------------------------


def _echoed(target: DotnetTarget, before: int, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in target.log[before:] if line.startswith("args ")]
        if lines:
            _, _count, *rest = lines[0].split(" ")
            pairs = rest[0].split(",") if rest and rest[0] else []

            def text(units: str) -> str:
                return "" if units == "-" else bytes.fromhex(units).decode("utf-16-be")

            return dict((text(k), text(v)) for k, v in (p.split(":") for p in pairs))
        time.sleep(0.1)
    raise AssertionError(target.log[before:])


def test_arguments_with_semicolons_and_equals_are_quoted_and_reach_the_runtime(
    up: Up, echo: DotnetTarget
) -> None:
    arguments = {"a;b": "x=y", "k": "v;w=z;", "plain": "value"}
    body = {"providers": [{"name": "Dnmon-ArgsEcho", "keywords": "-1", "arguments": arguments}]}
    before = len(echo.log)
    response = up.request("POST", f"/trace?pid={echo.pid}&durationSeconds=1", body)
    assert response.status == 200, response.read()
    response.read()
    assert _echoed(echo, before) == arguments
    up.wait_operation(str(response.getheader("Location")), "Succeeded")


@pytest.mark.parametrize("value", ['say "hi"', "a\x00b"])
def test_a_quote_or_nul_in_an_argument_is_still_a_400(up: Up, demo: DotnetTarget, value: str) -> None:
    body = {"Providers": [{"Name": "P", "Arguments": {"k": value}}]}
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=1", body)
    assert response.status == 400
    assert "providers[0].arguments" in problem(response)["errors"]


def test_a_provider_name_of_only_nul_is_a_400_naming_it(up: Up, demo: DotnetTarget) -> None:
    response = up.request(
        "POST", f"/trace?pid={demo.pid}&durationSeconds=1", {"Providers": [{"Name": "\x00"}]}
    )
    assert response.status == 400
    assert "providers[0].name" in problem(response)["errors"]


def test_a_configuration_over_the_64_kib_ipc_message_is_a_400_naming_it(up: Up, demo: DotnetTarget) -> None:
    body = {"Providers": [{"Name": "P", "Arguments": {"k": "x" * 40_000}}]}
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=1", body)
    assert response.status == 400
    errors = problem(response)["errors"]
    assert "providers" in errors and "65535" in errors["providers"][0]


def test_keywords_minus_one_is_valid(up: Up, demo: DotnetTarget) -> None:
    body = {"Providers": [{"Name": "Microsoft-DotNETCore-SampleProfiler", "Keywords": "-1"}]}
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=1", body)
    assert response.status == 200, response.read()
    assert response.read().startswith(b"Nettrace")


@pytest.mark.parametrize("keywords", [5, 0x14C14FCCBD, "0x1FFFFFFFFFFFFFFFF", "18446744073709551616"])
def test_keywords_as_json_numbers_or_over_64_bits_are_refused(
    up: Up, demo: DotnetTarget, keywords: Any
) -> None:
    body = {"Providers": [{"Name": "P", "Keywords": keywords}]}
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=1", body)
    assert response.status == 400
    assert "providers[0].keywords" in problem(response)["errors"]


def test_event_counter_interval_other_than_the_configured_one_is_a_400(up: Up, demo: DotnetTarget) -> None:
    body = {"Providers": [{"Name": "System.Runtime", "Arguments": {"EventCounterIntervalSec": "7"}}]}
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=1", body)
    assert response.status == 400
    (field,) = problem(response)["errors"]
    assert field == "providers[0].arguments.EventCounterIntervalSec"


def test_duration_zero_is_accepted(up: Up, demo: DotnetTarget) -> None:
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=0", SAMPLER)
    assert response.status == 200, response.read()
    assert response.read().startswith(b"Nettrace")
    up.wait_operation(str(response.getheader("Location")), "Succeeded")


# --- bodies that are not UTF-8 JSON -------------------------------------------------------------

BAD_UTF8 = b'{"Providers":[{"Name":"P\xff"}]}'


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_invalid_utf8_with_a_non_json_content_type_is_415(
    up: Up, demo: DotnetTarget, content_type: str | None
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=60)
    headers = {"Authorization": f"Bearer {up.token}"}
    if content_type:
        headers["Content-Type"] = content_type
    conn.request("POST", f"/trace?pid={demo.pid}&durationSeconds=1", body=BAD_UTF8, headers=headers)
    response = conn.getresponse()
    assert response.status == 415
    problem(response)


def test_invalid_utf8_json_is_never_a_server_error(up: Up, demo: DotnetTarget) -> None:
    """API Gateway (and dnmon up's gateway, like it) hands a JSON body to the function as text, with
    invalid UTF-8 replaced by U+FFFD: the function cannot see the bad byte to answer dotnet-monitor's
    400, so the request is either refused (400) or runs with the replaced name. Never a 5xx."""
    response = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=0", BAD_UTF8)
    assert response.status in (200, 400)
    response.read()


# --- query binding -----------------------------------------------------------------------------


@pytest.mark.parametrize("pid", ["\u0661\u0662\u0663", "4_2", "0x2A", "42.0"])
def test_pid_is_parsed_as_dotnet_int(up: Up, pid: str) -> None:
    response = up.request("GET", f"/process?pid={quote(pid)}")
    assert response.status == 400
    assert list(problem(response)["errors"]) == ["pid"]


def test_pid_with_blanks_around_is_valid(up: Up, demo: DotnetTarget) -> None:
    response = up.request("GET", f"/process?pid={quote(f' {demo.pid} ')}")
    assert response.status == 200
    assert json.loads(response.read())["pid"] == demo.pid


def test_query_parameter_names_bind_case_insensitively(up: Up, demo: DotnetTarget) -> None:
    process = up.request("GET", f"/process?PID={demo.pid}")
    assert process.status == 200 and json.loads(process.read())["pid"] == demo.pid
    response = up.request(
        "POST", f"/trace?Pid={demo.pid}&DURATIONSECONDS=-1&EgressProvider=s3&TAGS=contract", SAMPLER
    )
    assert response.status == 202, response.read()
    response.read()
    path = op_path(response)
    try:
        status = up.json("GET", path)
        assert status["process"]["pid"] == demo.pid
        assert status["egressProviderName"] == "s3" and status["tags"] == ["contract"]
        listed = up.json("GET", f"/operations?TAGS=contract&PID={demo.pid}")
        assert [o["operationId"] for o in listed] == [status["operationId"]]
    finally:
        cancel(up, path)


# --- operations: stop, states ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "yes", "0", "on"])
def test_stop_must_be_a_dotnet_bool(up: Up, demo: DotnetTarget, value: str) -> None:
    path = start_held(up, demo.pid)
    try:
        up.wait_operation(path, "Running")
        response = up.request("DELETE", f"{path}?stop={value}")
        assert response.status == 400
        assert list(problem(response)["errors"]) == ["stop"]
        time.sleep(1)
        status = up.json("GET", path)
        assert status["status"] == "Running" and status["isStoppable"] is True  # nothing changed
    finally:
        cancel(up, path)


@pytest.mark.parametrize("name", ["Stop", "STOP", "sToP"])
def test_stop_binds_in_any_case(up: Up, demo: DotnetTarget, name: str) -> None:
    path = start_held(up, demo.pid)
    up.wait_operation(path, "Running")
    response = up.request("DELETE", f"{path}?{name}=True")
    assert response.status == 202
    status = up.wait_operation(path, "Succeeded")
    assert status["isStoppable"] is False and status["error"] is None


def test_operations_start_starting_then_running_and_are_stoppable_only_then(
    up: Up, demo: DotnetTarget
) -> None:
    """A stopped (SIGSTOP) runtime cannot answer the agent, so the operation stays Starting."""
    os.kill(demo.pid, signal.SIGSTOP)
    try:
        path = start_held(up, demo.pid)
        time.sleep(2)
        starting = up.json("GET", path)
        assert starting["status"] == "Starting" and starting["isStoppable"] is True
    finally:
        os.kill(demo.pid, signal.SIGCONT)
    running = up.wait_operation(path, "Running")
    assert running["isStoppable"] is True
    assert up.request("DELETE", f"{path}?stop=true").status == 202
    done = up.wait_operation(path, "Succeeded")
    assert done["isStoppable"] is False
    again = up.request("DELETE", f"{path}?stop=true")
    assert again.status == 400
    problem(again)


def test_a_cancelled_operation_has_no_error(up: Up, demo: DotnetTarget) -> None:
    path = start_held(up, demo.pid)
    up.wait_operation(path, "Running")
    assert up.request("DELETE", path).status == 200
    status = up.wait_operation(path, "Cancelled")
    assert status["isStoppable"] is False
    assert status.get("error") is None
    listed = [o for o in up.json("GET", f"/operations?pid={demo.pid}") if o["operationId"] in path]
    assert listed and listed[0]["status"] == "Cancelled" and "error" not in listed[0]


# --- texts and routes --------------------------------------------------------------------------


def test_error_texts_begin_with_dotnet_monitors(up: Up, demo: DotnetTarget) -> None:
    missing = up.request("POST", "/trace?pid=2147483647&durationSeconds=1", SAMPLER)
    assert missing.status == 400 and problem(missing)["detail"].startswith(NOT_FOUND)
    gone = up.request("GET", "/process?name=no-such-process-anywhere")
    assert gone.status == 400 and problem(gone)["detail"].startswith(NOT_FOUND)
    for method in ("GET", "DELETE"):
        unknown = up.request(method, f"/operations/{uuid.uuid4()}")
        assert unknown.status == 400 and problem(unknown)["detail"].startswith("Operation not found.")
    held = [start_held(up, demo.pid) for _ in range(3)]
    try:
        over = up.request("POST", f"/trace?pid={demo.pid}&durationSeconds=-1&egressProvider=s3", SAMPLER)
        assert over.status == 429 and problem(over)["detail"] == "Rate limit reached."
    finally:
        for path in held:
            cancel(up, path)


@pytest.mark.parametrize("route", ["/env", "/processes/env"])
def test_env_is_served_on_both_routes(up: Up, demo: DotnetTarget, route: str) -> None:
    response = up.request("GET", f"{route}?pid={demo.pid}")
    assert response.status == 200
    environment = json.loads(response.read())
    assert isinstance(environment, dict) and "PATH" in environment


def test_info_reports_connect_mode(up: Up) -> None:
    response = up.request("GET", "/info")
    assert response.status == 200
    assert json.loads(response.read())["diagnosticPortMode"] == "Connect"


@pytest.mark.parametrize(
    ("route", "body", "extension"),
    [("/trace", SEED_TRACE_BODY, "nettrace"), ("/livemetrics", None, "metrics.json")],
)
def test_artifact_responses_name_the_artifact(
    up: Up, demo: DotnetTarget, route: str, body: Any, extension: str
) -> None:
    method = "POST" if body else "GET"
    response = up.request(method, f"{route}?pid={demo.pid}&durationSeconds=1", body)
    assert response.status == 200
    response.read()  # a 1 s live-metrics capture may hold no record yet
    disposition = response.getheader("Content-Disposition") or ""
    pattern = rf'attachment; filename="\d{{8}}_\d{{6}}_\d{{3}}_{demo.pid}\.{re.escape(extension)}"'
    assert re.fullmatch(pattern, disposition), disposition
