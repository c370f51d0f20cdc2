"""Issue 10: schemathesis against ``dnmon up`` (real gateway, handlers, agent and .NET target).

The document is the one the running API serves (GET /openapi.json). Every operation gets a bounded,
derandomized number of generated requests, valid and invalid; each response must not be a server
error and must conform to the document (status code, content type, headers, body schema).

Captures are real, so the generated requests are steered: ``durationSeconds`` is forced to 0 or 1
(never indefinite, so no capture outlives its request and no slot stays held; a 202 is waited out),
and valid (positive) requests select the module's DemoApp by ``pid`` (``uid``, ``name`` and ``host``
dropped), so that they really capture. 429 is documented, so a busy host would still conform.
Generated operation ids never exist, so test_operations_in_every_state_conform covers real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.dotnet import DotnetTarget
from tests.e2e import test_up
from tests.e2e.test_up import ROOT, Up

pytestmark = [pytest.mark.dotnet, pytest.mark.slow]
up = test_up.up  # the module-scoped `dnmon up` fixture

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CAPTURE_PATHS = ("/trace", "/livemetrics")
EXAMPLES = 12


@pytest.fixture(scope="module")
def demo(up: Up) -> Iterator[DotnetTarget]:
    with test_up.listed_target(up, "DemoApp.cs", "cpu") as target:
        yield target


@pytest.fixture(scope="module")
def session(up: Up) -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {up.token}"
        yield http


@pytest.fixture(scope="module")
def api_schema(up: Up, demo: DotnetTarget) -> Any:
    url = f"http://127.0.0.1:{up.port}/openapi.json"
    loaded = schemathesis.openapi.from_url(url, headers={"Authorization": f"Bearer {up.token}"}, timeout=30)
    loaded.config.base_url = f"http://127.0.0.1:{up.port}"
    return loaded


# One test per operation of the shipped document (a unit test keeps it equal to the served one);
# schemathesis' pytest plugin is not used: its lazy fixture loader breaks on pytest 9.
DOCUMENT = json.loads((ROOT / "docs" / "openapi.json").read_text())
OPERATIONS = [(method.upper(), path) for path, methods in DOCUMENT["paths"].items() for method in methods]
PID_IN_QUERY = {
    (method.upper(), path)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
    if any(p["name"] == "pid" and p["in"] == "query" for p in operation.get("parameters", []))
}
SELECTORS = ("pid", "uid", "name", "host")


def steer(case: Any, pid: int, mode: GenerationMode) -> None:
    """Short captures only; valid requests name the DemoApp (see the module's docstring)."""
    route = (case.method.upper(), case.operation.path)
    query = dict(case.query or {})
    if case.operation.path in CAPTURE_PATHS:
        query = {k: v for k, v in query.items() if k.lower() != "durationseconds"}
        query["durationSeconds"] = "1" if route[0] == "GET" else "0"
    if mode == GenerationMode.POSITIVE:
        if route in PID_IN_QUERY:
            # pid, uid, name and host all select the process: only pid is kept, the DemoApp's.
            query = {k: v for k, v in query.items() if k.lower() not in SELECTORS} | {"pid": str(pid)}
        elif case.path_parameters and "pid" in case.path_parameters:
            case.path_parameters = {**case.path_parameters, "pid": pid}
            query = {k: v for k, v in query.items() if k.lower() != "host"}
    case.query = query or None


def location(response: Any) -> str | None:
    """The Location header of a schemathesis Response (lowercase names, lists of values)."""
    values = response.headers.get("location")
    return str(values[0]) if values else None


def settle(session: requests.Session, base: str, response: Any) -> None:
    """An operation a request started ends before the next request (its slot is free again)."""
    location_ = location(response)
    if response.status_code != 202 or not location_:
        return
    path = "/operations/" + location_.rsplit("/", 1)[1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = session.get(base + path, timeout=30).json()["status"]
        if status not in ("Starting", "Running", "Stopping"):
            return
        time.sleep(0.3)
    session.delete(base + path, timeout=30)
    raise AssertionError(f"{path} still running after 60 s")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_document(
    api_schema: Any,
    up: Up,
    demo: DotnetTarget,
    session: requests.Session,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]
    base = f"http://127.0.0.1:{up.port}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        steer(case, demo.pid, mode)
        response = case.call_and_validate(session=session, checks=CHECKS, timeout=120)
        settle(session, base, response)

    run()


# --- what generated inputs never reach: real operations in each state, artifacts, 202s, 429 ------


def test_operations_in_every_state_conform(api_schema: Any, up: Up, demo: DotnetTarget) -> None:
    """Explicit requests, validated with the same checks: 202 captures, 200/201 statuses, 200/202
    deletions, the artifact route's 302 (S3) and 200 (local), 429, and streamed 200s."""
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {up.token}"

        def call(method: str, path: str, **parts: Any) -> Any:
            if "body" in parts:
                parts["media_type"] = "application/json"
            case = api_schema[path][method].Case(**parts)
            return case.call_and_validate(session=http, checks=CHECKS, timeout=120, allow_redirects=False)

        def operation_id(response: Any) -> str:
            return str(location(response)).rsplit("/", 1)[1]

        sampler = {"providers": [{"name": "Microsoft-DotNETCore-SampleProfiler"}]}
        held_query = {"pid": str(demo.pid), "durationSeconds": "-1", "egressProvider": "s3"}
        held = [call("POST", "/trace", query=held_query, body=sampler) for _ in range(3)]
        assert [r.status_code for r in held] == [202, 202, 202]
        assert call("POST", "/trace", query=held_query, body=sampler).status_code == 429
        running = call(
            "GET", "/operations/{operationId}", path_parameters={"operationId": operation_id(held[0])}
        )
        assert running.status_code == 200
        stop = {"operationId": operation_id(held[0])}
        assert (
            call(
                "DELETE", "/operations/{operationId}", path_parameters=stop, query={"stop": "true"}
            ).status_code
            == 202
        )
        for response in held[1:]:
            cancelled = {"operationId": operation_id(response)}
            assert call("DELETE", "/operations/{operationId}", path_parameters=cancelled).status_code == 200
            assert call("GET", "/operations/{operationId}", path_parameters=cancelled).status_code == 200
        up.wait_operation(str(location(held[0])), "Succeeded")
        assert call("GET", "/operations/{operationId}", path_parameters=stop).status_code == 201
        assert call("GET", "/operations/{operationId}/artifact", path_parameters=stop).status_code == 302
        assert call("GET", "/operations", query={"pid": str(demo.pid), "limit": "1"}).status_code == 200

        local = call(
            "GET",
            "/livemetrics",
            query={"pid": str(demo.pid), "durationSeconds": "1", "egressProvider": "local"},
        )
        assert local.status_code == 202
        finished = {"operationId": operation_id(local)}
        up.wait_operation(str(location(local)), "Succeeded")
        assert call("GET", "/operations/{operationId}/artifact", path_parameters=finished).status_code == 200

        streamed = call(
            "GET", "/trace", query={"pid": str(demo.pid), "durationSeconds": "1", "profile": "Cpu"}
        )
        assert streamed.status_code == 200 and streamed.content.startswith(b"Nettrace")
        metrics = call("POST", "/livemetrics", query={"pid": str(demo.pid), "durationSeconds": "1"}, body={})
        assert metrics.status_code == 200
