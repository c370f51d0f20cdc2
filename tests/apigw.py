"""API Gateway REST proxy events for calling the handlers directly, as API Gateway would."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any


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
