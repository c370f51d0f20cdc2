"""API Gateway REST proxy events for calling the handlers directly, as API Gateway would."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CAPTURE_PATHS = ("/livemetrics", "/trace")  # served by the StreamFunction (dnmon_api.streaming)


def rest_event(
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    stage: str = "v1",
    host: str = "abc123.execute-api.us-east-1.amazonaws.com",
) -> dict[str, Any]:
    if body is not None and not isinstance(body, str | bytes):
        body = json.dumps(body)
    all_headers = {
        "Host": host,
        "X-Forwarded-Proto": "https",
        "Content-Type": "application/json",
        **(headers or {}),
    }
    encoded = isinstance(body, bytes)
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "domainName": host,
            "requestId": str(uuid.uuid4()),
            "accountId": "123456789012",
            "apiId": "abc123",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": base64.b64encode(body).decode() if encoded else body,
        "isBase64Encoded": encoded,
    }


class FakeContext:
    function_name = "dnmon-api"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:dnmon-api"
    aws_request_id = "req"

    def __init__(self, timeout_seconds: float = 900.0) -> None:
        self.deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


@dataclass
class RecordedStream:
    """A streaming handler's response as Lambda's runtime would carry it, with when each part came.
    ``gone_after`` writes, the client "disconnects": the next write raises ClientGone."""

    gone_after: int | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    started_at: float | None = None
    ended: bool = False
    failure: tuple[str, str] | None = None  # the error trailers: the client sees the stream cut

    @property
    def started(self) -> bool:
        return self.status is not None

    def start(self, status_code: int, headers: Mapping[str, str]) -> None:
        assert self.status is None, "started twice"
        self.status, self.headers, self.started_at = status_code, dict(headers), time.monotonic()

    def write(self, data: bytes) -> None:
        from dnmon_api.runtime import ClientGone

        assert self.status is not None, "written before the start"
        if self.gone_after is not None and len(self.chunks) >= self.gone_after:
            raise ClientGone("the test client went away")
        self.chunks.append((time.monotonic(), bytes(data)))

    def end(self) -> None:
        self.ended = True

    def fail(self, error_type: str, message: str) -> None:
        self.failure = (error_type, message)

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.chunks)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def stream_call(event: dict[str, Any], stream: RecordedStream | None = None) -> RecordedStream:
    """Run the StreamFunction's handler as ``dnmon_api.runtime.invoke`` does: a failure after the
    start becomes the error trailers, a disconnect ends it quietly."""
    from dnmon_api import streaming
    from dnmon_api.runtime import ClientGone

    stream = stream or RecordedStream()
    try:
        streaming.handler(event, FakeContext(), stream)
    except ClientGone:
        return stream
    except Exception as exc:
        if not stream.started:
            raise
        stream.fail(type(exc).__name__, str(exc))
        return stream
    stream.end()
    return stream


def as_response(stream: RecordedStream) -> dict[str, Any]:
    """A streamed answer in the buffered proxy shape, for tests that only look at the result."""
    try:
        body, encoded = stream.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(stream.body).decode(), True
    return {
        "statusCode": stream.status,
        "headers": stream.headers,
        "body": body,
        "isBase64Encoded": encoded,
        "cut": stream.failure is not None,
    }


def handle(event: dict[str, Any]) -> dict[str, Any]:
    """The function API Gateway would invoke for this event's route (the StreamFunction for the
    capture routes, the API function for the rest), its answer in the buffered proxy shape."""
    if event["path"] in CAPTURE_PATHS:
        return as_response(stream_call(event))
    from dnmon_api import app

    response: dict[str, Any] = app.handler(event, FakeContext())  # type: ignore[arg-type]
    return response


def invoke(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    return handle(rest_event(method, path, **kwargs))


def header(response: dict[str, Any], name: str) -> str | None:
    """The REST resolver returns headers in multiValueHeaders (aws-facts.md)."""
    for source in (response.get("headers") or {}, response.get("multiValueHeaders") or {}):
        for key, value in source.items():
            if key.lower() == name.lower():
                return value[0] if isinstance(value, list) else value
    return None


def body_bytes(response: dict[str, Any]) -> bytes:
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
