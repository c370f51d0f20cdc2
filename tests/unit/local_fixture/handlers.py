"""Stand-in Lambda handlers for the local gateway's unit tests (the real ones need AWS)."""

from __future__ import annotations

import base64
import json
from typing import Any

from .streams import public_base


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = {
        "resource": event["resource"],
        "path": event["path"],
        "pathParameters": event["pathParameters"],
        "query": event["queryStringParameters"],
        "body": event["body"],
        "base64": event["isBase64Encoded"],
        "authorizer": event["requestContext"].get("authorizer"),
        "function": context.function_name,
    }
    return {
        "statusCode": 200,
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "body": json.dumps(body),
    }


def binary(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream"},
            "body": base64.b64encode(b"\x00\x01\xff").decode(), "isBase64Encoded": True}  # fmt: skip


def location(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A Location built from the event as the API builds it, and the headers that could mislead it."""
    headers = event["headers"]
    seen = {name: headers.get(name) for name in ("Host", "X-Forwarded-Proto", "X-Forwarded-Host")}
    return {
        "statusCode": 201,
        "headers": {"Location": f"{public_base(event)}/operations/1", "Content-Type": "application/json"},
        "body": json.dumps({"headers": seen, "domainName": event["requestContext"]["domainName"]}),
    }


def crash(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise RuntimeError("the handler failed")


def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = next((v for k, v in event["headers"].items() if k.lower() == "authorization"), "")
    if token == "Bearer good":
        effect = "Allow"
    elif token == "Bearer deny":
        effect = "Deny"
    else:
        raise Exception("Unauthorized")
    return {
        "principalId": "tester",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}],
        },
        "context": {"subject": "tester"},
    }
