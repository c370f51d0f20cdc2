"""The local API Gateway emulator: template routes, REQUEST authorizer, proxy events, streaming."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnmon_agent.egress import HttpStreamWriter
from dnmon_agent.local import template
from dnmon_agent.local.gateway import Gateway

TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Handler: tests.unit.local_fixture.handlers.echo
Resources:
  Api:
    Type: AWS::Serverless::Api
    Properties:
      StageName: !Ref StageName
      Auth:
        DefaultAuthorizer: KeyAuth
        Authorizers:
          KeyAuth:
            FunctionArn: !GetAtt AuthFunction.Arn
  AuthFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: tests.unit.local_fixture.handlers.authorizer
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      Environment:
        Variables:
          TABLE: !Sub "${AWS::StackName}-t"
      Events:
        Item: {Type: Api, Properties: {Path: '/items/{itemId}', Method: get}}
        Static: {Type: Api, Properties: {Path: /items/special, Method: get}}
        Post: {Type: Api, Properties: {Path: /items, Method: post}}
  BinaryFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: tests.unit.local_fixture.handlers.binary
      Events:
        Get: {Type: Api, Properties: {Path: /binary, Method: get}}
  StreamFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: tests.unit.local_fixture.handlers.stream
      Events:
        Get: {Type: Api, Properties: {Path: '/stream/{operationId}', Method: get}}
"""


@pytest.fixture
def api(tmp_path: Path) -> template.ApiDefinition:
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return template.load(path)


@pytest.fixture
def gateway(api: template.ApiDefinition) -> Iterator[Gateway]:
    states: dict[uuid.UUID, str] = {}
    server = Gateway(("127.0.0.1", 0), api, status_of=lambda op: (states.get(op, "Running"), "it broke"))
    server.states = states  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def send(gateway: Gateway, method: str, path: str, body: bytes | None = None, token: str | None = "good",
         content_type: str = "application/json") -> http.client.HTTPConnection:  # fmt: skip
    """Send without waiting: a streamed response's status line waits for the first bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    return conn


def request(
    gateway: Gateway, method: str, path: str, body: bytes | None = None, **kwargs: str | None
) -> http.client.HTTPResponse:
    return send(gateway, method, path, body, **kwargs).getresponse()  # type: ignore[arg-type]


def test_template_routes_and_authorizer(api: template.ApiDefinition) -> None:
    assert api.authorizer_handler == "tests.unit.local_fixture.handlers.authorizer"
    assert {(r.method, r.path) for r in api.routes} >= {("GET", "/items/{itemId}"), ("POST", "/items")}
    found = api.resolve("GET", "/items/special")
    assert found is not None and found[0].path == "/items/special"  # static beats {param}
    found = api.resolve("GET", "/items/42")
    assert found is not None and found[1] == {"itemId": "42"}
    assert api.resolve("DELETE", "/items/42") is None


def test_template_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("Resources: {}\n")
    with pytest.raises(template.TemplateError, match="no Api routes"):
        template.load(path)


def test_proxy_event_and_authorizer_context(gateway: Gateway) -> None:
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


def test_auth_outcomes(gateway: Gateway) -> None:
    missing = request(gateway, "GET", "/items/1", token=None)
    assert missing.status == 401 and missing.getheader("Content-Type") == "application/problem+json"
    assert request(gateway, "GET", "/items/1", token="bad").status == 401
    assert request(gateway, "GET", "/items/1", token="deny").status == 403
    assert request(gateway, "GET", "/nowhere").status == 404


def test_binary_response(gateway: Gateway) -> None:
    response = request(gateway, "GET", "/binary")
    assert response.read() == b"\x00\x01\xff"


def test_stream_relays_chunks_as_they_arrive(gateway: Gateway) -> None:
    operation = str(uuid.uuid4())
    client = send(gateway, "GET", f"/stream/{operation}")
    writer = HttpStreamWriter(
        f"http://127.0.0.1:{gateway.port}/_dnmon/ingest/{operation}", "application/octet-stream"
    )
    writer.write(b"first")
    response = client.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Location") == f"/operations/{operation}"
    assert response.getheader("X-Dnmon-Stream-Operation") is None
    assert response.read1(100) == b"first"  # delivered before the stream ends
    writer.write(b"second")
    assert writer.complete().size == len(b"firstsecond")
    assert response.read() == b"second"


def test_stream_of_a_failed_operation_is_a_problem(gateway: Gateway) -> None:
    operation = uuid.uuid4()
    gateway.states[operation] = "Failed"  # type: ignore[attr-defined]
    response = request(gateway, "GET", f"/stream/{operation}")
    assert response.status == 400
    assert json.loads(response.read())["detail"] == "it broke"


def test_a_broken_stream_does_not_end_cleanly(gateway: Gateway) -> None:
    operation = str(uuid.uuid4())
    client = send(gateway, "GET", f"/stream/{operation}")
    writer = HttpStreamWriter(
        f"http://127.0.0.1:{gateway.port}/_dnmon/ingest/{operation}", "application/octet-stream"
    )
    writer.write(b"partial")
    writer.abort()
    response = client.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
