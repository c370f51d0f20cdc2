"""The REQUEST authorizer: ``Authorization: Bearer <MonitorApiKey>`` as dotnet-monitor checks it.

Raising ``Exception("Unauthorized")`` is how a Lambda authorizer makes API Gateway answer 401.
The policy allows the whole API (``<api>/<stage>/*/*``) because API Gateway caches it per token
for every method. With no key configured every request is refused, as dotnet-monitor does;
``DNMON_AUTH_DISABLED=1`` (the local stack's ``--no-auth``) is the one explicit opt-out.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.apikey import ApiKeyConfigurationError, ApiKeyError, MonitorApiKeyConfiguration, verify

logger = Logger(service="dnmon")


def _token(event: dict[str, Any]) -> str | None:
    values: list[str] = []
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == "authorization" and value:
            values.append(value)
    for key, many in (event.get("multiValueHeaders") or {}).items():
        if key.lower() == "authorization":
            values.extend(v for v in many or [] if v)
    for value in values:
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def _policy(event: dict[str, Any], principal: str, context: dict[str, str]) -> dict[str, Any]:
    arn = str(event.get("methodArn", ""))
    parts = arn.split("/", 2)
    resource = f"{parts[0]}/{parts[1]}/*/*" if len(parts) >= 2 else arn
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": resource}],
        },
        "context": context,
    }


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if os.environ.get("DNMON_AUTH_DISABLED") == "1":
        logger.warning("authentication is DISABLED (DNMON_AUTH_DISABLED=1): allowing the request")
        return _policy(event, "anonymous", {"subject": "anonymous"})
    try:
        config = MonitorApiKeyConfiguration.from_env(os.environ)
    except ApiKeyConfigurationError as exc:
        logger.error("MonitorApiKey is misconfigured", extra={"reason": str(exc)})
        raise Exception("Unauthorized") from None
    if config is None:
        logger.error("no MonitorApiKey is configured: every request is refused")
        raise Exception("Unauthorized")
    token = _token(event)
    if token is None:
        logger.info("refused: no Bearer token")
        raise Exception("Unauthorized")
    try:
        claims = verify(token, config)
    except (ApiKeyError, ApiKeyConfigurationError) as exc:
        logger.info("refused", extra={"reason": str(exc)})
        raise Exception("Unauthorized") from None
    return _policy(event, claims.subject, {"subject": claims.subject})
