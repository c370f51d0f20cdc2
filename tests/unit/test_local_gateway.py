"""The local API Gateway: template routes, REQUEST authorizer, proxy events, streamed responses.

Streaming routes run the fixture handler (local_fixture/streams.py) in real execution environments
behind the local Runtime API, through functions/dnmon_api/runtime.py as on AWS. The handler waits
for ``go-<n>`` files before each chunk, so the order of events is proven without timing.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dnmon_agent.local import template
from dnmon_agent.local.gateway import GatewayServer, GatewaySettings
from dnmon_agent.local.runtime_api import (
    FunctionClosed,
    InvocationFailed,
    LocalFunction,
    ResponseCut,
    ResponseStarted,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_TEMPLATE = Path(__file__).parent / "local_fixture" / "template.yaml"


@pytest.fixture(scope="module")
def api() -> template.ApiDefinition:
    return template.load(FIXTURE_TEMPLATE)


@contextmanager
def serve(
    api: template.ApiDefinition,
    settings: GatewaySettings | None = None,
    *,
    task_root: Path = ROOT,
    warm: bool = True,
    **limits: int,
) -> Iterator[GatewayServer]:
    """The gateway and a local Runtime API per streaming function (by default the checkout as task
    root, one environment started ahead)."""
    functions = {f.logical_id: LocalFunction(f, task_root, **limits) for f in api.streaming_functions()}
    server = GatewayServer(api, functions, settings=settings)
    try:
        if warm:
            functions["StreamFunction"].start(warm=1)
        server.start()
        yield server
    finally:
        server.stop()
        for function in functions.values():
            function.close()


@pytest.fixture(scope="module")
def gateway(api: template.ApiDefinition) -> Iterator[GatewayServer]:
    with serve(api) as server:
        yield server


def send(
    gateway: GatewayServer,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = "good",
    content_type: str = "application/json",
) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    return conn


def request(
    gateway: GatewayServer, method: str, path: str, body: bytes | None = None, **kwargs: str | None
) -> http.client.HTTPResponse:
    return send(gateway, method, path, body, **kwargs).getresponse()  # type: ignore[arg-type]


def go(folder: Path, *numbers: int) -> None:
    for n in numbers:
        (folder / f"go-{n}").touch()


def wait_for(path: Path, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


# --- the template ------------------------------------------------------------------------------


def test_template_routes_and_authorizer(api: template.ApiDefinition) -> None:
    assert api.authorizer_handler == "tests.unit.local_fixture.handlers.authorizer"
    assert {(r.method, r.path) for r in api.routes} >= {("GET", "/items/{itemId}"), ("POST", "/items")}
    found = api.resolve("GET", "/items/special")
    assert found is not None and found[0].path == "/items/special"  # static beats {param}
    found = api.resolve("GET", "/items/42")
    assert found is not None and found[1] == {"itemId": "42"}
    assert api.resolve("DELETE", "/items/42") is None
    streaming = {(r.method, r.path, r.function) for r in api.routes if r.streaming}
    assert streaming == {("GET", "/stream", "StreamFunction"), ("POST", "/stream", "StreamFunction"),
                         ("GET", "/slow", "SlowFunction")}  # fmt: skip
    assert not any(r.streaming for r in api.routes if r.path.startswith("/items"))
    stream = api.function("StreamFunction")
    assert (stream.handler, stream.timeout_seconds, stream.memory_mb) == (
        "tests.unit.local_fixture.streams.stream", 60, 256)  # fmt: skip
    assert stream.exec_wrapper == "/var/task/functions/dnmon_api/stream_bootstrap"
    assert api.function("SlowFunction").timeout_seconds == 1
    assert api.function("EchoFunction").timeout_seconds == 20  # the Globals default
    assert [f.logical_id for f in api.streaming_functions()] == ["StreamFunction", "SlowFunction"]


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    path = tmp_path / "t.yaml"
    text = FIXTURE_TEMPLATE.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_template_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("Resources: {}\n")
    with pytest.raises(template.TemplateError, match="no Api routes"):
        template.load(path)
    unknown = _broken(tmp_path, "${StreamFunction.Arn}", "${NoSuchFunction.Arn}")
    with pytest.raises(template.TemplateError, match="GET /stream: the integration names no function"):
        template.load(unknown)
    wrapper = "AWS_LAMBDA_EXEC_WRAPPER: /var/task/functions"
    no_wrapper = _broken(tmp_path, wrapper, "OTHER: /var/task/functions")
    with pytest.raises(template.TemplateError, match="StreamFunction streams but sets no AWS_LAMBDA_EXEC"):
        template.load(no_wrapper)


# --- buffered routes -----------------------------------------------------------------------------


def test_proxy_event_and_authorizer_context(gateway: GatewayServer) -> None:
    response = request(gateway, "GET", "/items/42?x=1&x=2&y=")
    assert response.status == 200
    seen = json.loads(response.read())
    assert seen["resource"] == "/items/{itemId}" and seen["pathParameters"] == {"itemId": "42"}
    assert seen["query"] == {"x": "2", "y": ""}
    assert seen["authorizer"] == {"principalId": "tester", "subject": "tester"}
    posted = json.loads(request(gateway, "POST", "/items", b'{"a":1}').read())
    assert posted["body"] == '{"a":1}' and posted["base64"] is False
    raw = json.loads(
        request(gateway, "POST", "/items", b"\x00\xff", content_type="application/octet-stream").read()
    )
    assert raw["base64"] is True


def test_auth_outcomes(gateway: GatewayServer) -> None:
    missing = request(gateway, "GET", "/items/1", token=None)
    assert missing.status == 401 and missing.getheader("Content-Type") == "application/problem+json"
    assert missing.getheader("WWW-Authenticate") == "Bearer"
    assert request(gateway, "GET", "/items/1", token="bad").status == 401
    assert request(gateway, "GET", "/items/1", token="deny").status == 403
    not_found = request(gateway, "GET", "/nowhere")
    assert not_found.status == 404 and json.loads(not_found.read())["status"] == 404


def test_a_handler_that_raises_is_a_502(gateway: GatewayServer) -> None:
    response = request(gateway, "GET", "/crash")
    assert response.status == 502
    assert response.getheader("Content-Type") == "application/problem+json"


def test_binary_response(gateway: GatewayServer) -> None:
    response = request(gateway, "GET", "/binary")
    assert response.read() == b"\x00\x01\xff"


# --- streaming routes ----------------------------------------------------------------------------


def test_headers_arrive_before_the_first_chunk_and_chunks_as_produced(
    gateway: GatewayServer, tmp_path: Path
) -> None:
    response = request(gateway, "GET", f"/stream?dir={tmp_path}&count=3")
    # The handler has started its response and waits for go-0: no chunk exists yet.
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "application/octet-stream"
    # built from requestContext.domainName, which is the gateway's configured name
    assert (response.getheader("Location") or "").startswith(f"https://127.0.0.1:{gateway.port}/operations/")
    assert not (tmp_path / "go-0").exists()
    for n in range(3):
        go(tmp_path, n)
        assert response.read1(100) == b"chunk-%d;" % n  # here before chunk n+1 was made
        assert not (tmp_path / f"go-{n + 1}").exists()
    assert response.read() == b""  # a clean end


def test_the_event_reaches_the_function(gateway: GatewayServer, tmp_path: Path) -> None:
    go(tmp_path, 0)
    response = request(gateway, "POST", f"/stream?dir={tmp_path}&count=1", b'{"x": 1}')
    assert response.status == 200 and response.read() == b"chunk-0;"
    assert response.getheader("X-Seen-Host") == f"127.0.0.1:{gateway.port}"
    assert response.getheader("X-Seen-Body") == '{"x": 1}'


def test_a_status_chosen_by_the_function_is_kept(gateway: GatewayServer, tmp_path: Path) -> None:
    go(tmp_path, 0)
    response = request(gateway, "GET", f"/stream?dir={tmp_path}&count=1&status=400")
    assert response.status == 400 and response.read() == b"chunk-0;"


def test_a_cut_stream_ends_without_the_final_chunk(gateway: GatewayServer, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as raw:
        raw.sendall(
            f"GET /stream?mode=fail-mid&dir={tmp_path} HTTP/1.1\r\nHost: x\r\n"
            "Authorization: Bearer good\r\n\r\n".encode()
        )
        received = b""
        while b"partial" not in received:
            piece = raw.recv(65536)
            assert piece, received
            received += piece
        go(tmp_path, 1)  # now the handler fails
        while piece := raw.recv(65536):
            received += piece
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"\r\n0\r\n\r\n" not in received  # the connection closed without HTTP's last chunk


def test_httpx_sees_the_cut(gateway: GatewayServer, tmp_path: Path) -> None:
    go(tmp_path, 1)  # the handler fails right after its first chunk
    received = b""
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "GET",
            f"{gateway.url}/stream?mode=fail-mid&dir={tmp_path}",
            headers={"Authorization": "Bearer good"},
        ) as response,  # fmt: skip
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for piece in response.iter_bytes():
                received += piece
    assert received == b"partial"


@pytest.mark.parametrize("mode", ["fail-before", "exit-before", "no-response"])
def test_a_failure_before_the_response_is_a_502(gateway: GatewayServer, mode: str) -> None:
    response = request(gateway, "GET", f"/stream?mode={mode}")
    assert response.status == 502
    assert response.getheader("Content-Type") == "application/problem+json"
    assert json.loads(response.read())["title"] == "Bad Gateway"


def test_an_environment_that_dies_mid_stream_cuts_it(gateway: GatewayServer) -> None:
    response = request(gateway, "GET", "/stream?mode=exit-mid")
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert cut.value.partial == b"partial"


def test_past_the_function_timeout_the_stream_is_cut(gateway: GatewayServer) -> None:
    response = request(gateway, "GET", "/slow?mode=sleep")  # SlowFunction's Timeout is 1 s
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()


def _leave_mid_stream(gateway: GatewayServer, folder: Path) -> dict[str, object]:
    """Read one chunk, hang up, let the handler write on: what did its failing write raise?"""
    conn = send(gateway, "GET", f"/stream?mode=gone&dir={folder}")
    response = conn.getresponse()
    go(folder, 0)
    assert response.read1(100) == b"chunk-0;"
    conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    conn.close()
    go(folder, *range(1, 200))  # the handler writes on until a write fails
    assert wait_for(folder / "gone"), "the handler's writes never failed"
    seen: dict[str, object] = json.loads((folder / "gone").read_text())
    return seen


def test_a_client_that_leaves_cuts_the_handler_off(gateway: GatewayServer, tmp_path: Path) -> None:
    assert _leave_mid_stream(gateway, tmp_path)["type"] == "ClientGone"


def test_the_handler_can_catch_client_gone_by_its_import(gateway: GatewayServer, tmp_path: Path) -> None:
    assert _leave_mid_stream(gateway, tmp_path)["imported_class"] is True


def test_a_function_at_its_limits_is_throttled(api: template.ApiDefinition, tmp_path: Path) -> None:
    with serve(api, max_environments=1, max_queued=0) as server:
        busy = request(server, "GET", f"/stream?dir={tmp_path}&count=1")
        assert busy.status == 200  # its one environment is now taken
        throttled = request(server, "GET", "/stream?mode=chunks")
        assert throttled.status == 429
        assert json.loads(throttled.read())["title"] == "Too Many Requests"
        go(tmp_path, 0)
        assert busy.read() == b"chunk-0;"


def test_queued_invocations_wait_for_a_free_environment(api: template.ApiDefinition, tmp_path: Path) -> None:
    with serve(api, max_environments=1, max_queued=4) as server:
        first = request(server, "GET", f"/stream?dir={tmp_path}&count=1")
        assert first.status == 200
        second = send(server, "GET", f"/stream?dir={tmp_path}&count=1")  # queued behind the first
        go(tmp_path, 0)
        assert first.read() == b"chunk-0;"
        answer = second.getresponse()
        assert answer.status == 200 and answer.read() == b"chunk-0;"


# --- the Runtime API alone ------------------------------------------------------------------------


def test_a_function_that_cannot_initialise_fails_its_invocation(api: template.ApiDefinition) -> None:
    broken = dataclasses.replace(api.function("StreamFunction"), handler="tests.unit.local_fixture.nowhere.f")
    function = LocalFunction(broken, ROOT)
    try:
        failed = function.invoke(b"{}").next_event(timeout=60)
    finally:
        function.close()
    assert isinstance(failed, InvocationFailed)
    assert failed.error_type == "Runtime.InitError" and "nowhere" in failed.message


def test_closing_a_function_fails_what_waits(api: template.ApiDefinition, tmp_path: Path) -> None:
    function = LocalFunction(api.function("StreamFunction"), ROOT, max_environments=1)
    event = json.dumps({"queryStringParameters": {"dir": str(tmp_path)}, "path": "/stream",
                        "requestContext": {"domainName": "x", "path": "/stream"}}).encode()  # fmt: skip
    running = function.invoke(event)
    assert isinstance(running.next_event(timeout=60), ResponseStarted)
    waiting = function.invoke(event)
    function.close()
    assert isinstance(running.next_event(timeout=60), ResponseCut)  # its environment was stopped
    assert waiting.next_event(timeout=60) == InvocationFailed(
        "Function.Closed", "the local function shut down"
    )
    with pytest.raises(FunctionClosed):
        function.invoke(event)
