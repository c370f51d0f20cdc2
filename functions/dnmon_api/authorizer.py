"""The REQUEST authorizer: ``Authorization: Bearer <MonitorApiKey>``, checked as dotnet-monitor checks it.

Raising ``Exception("Unauthorized")`` is how a Lambda authorizer makes API Gateway answer 401.
The policy allows the whole API (``<api>/<stage>/*/*``) because API Gateway caches it per token
and reuses it for every method. With no key configured every request is refused, as dotnet-monitor
does; ``DNMON_AUTH_DISABLED=1`` (the local stack's ``--no-auth``) is the one explicit opt-out.
The configuration is read on every call (the parsed key is cached in ``dnmon_core.apikey``), so
importing this module does no work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.apikey import ApiKeyConfigurationError, ApiKeyError, MonitorApiKeyConfiguration, verify

DISABLED_VARIABLE = "DNMON_AUTH_DISABLED"
ANONYMOUS = "anonymous"

logger = Logger(service="dnmon")


def _unauthorized() -> Exception:
    return Exception("Unauthorized")


def bearer_token(event: Mapping[str, Any]) -> str:
    """The token of the one ``Authorization: Bearer`` header, read as ASP.NET's JwtBearer reads it."""
    values: set[str] = set()
    for name, value in (event.get("headers") or {}).items():
        if name.lower() == "authorization" and isinstance(value, str):
            values.add(value)
    for name, many in (event.get("multiValueHeaders") or {}).items():
        if name.lower() == "authorization":
            values.update(value for value in many or [] if isinstance(value, str))
    if isinstance(event.get("authorizationToken"), str):  # a TOKEN authorizer's event
        values.add(event["authorizationToken"])
    if not values:
        raise ApiKeyError("no Authorization header")
    if len(values) > 1:  # ASP.NET joins them with a comma, which no token survives
        raise ApiKeyError("more than one Authorization header")
    (value,) = values
    if value[:7].lower() != "bearer ":
        raise ApiKeyError("the Authorization header is not 'Bearer <token>'")
    token = value[7:].strip()
    if not token:
        raise ApiKeyError("the Bearer token is empty")
    return token


def api_wide_resource(method_arn: object) -> str:
    """``…:{api}/{stage}/{verb}/{path}`` → ``…:{api}/{stage}/*/*``: a cached policy must fit every route."""
    if isinstance(method_arn, str):
        prefix, _, path = method_arn.partition("/")
        fields = prefix.split(":")
        stage = path.split("/", 1)[0]
        if len(fields) == 6 and fields[0] == "arn" and fields[2] == "execute-api" and all(fields) and stage:
            return f"{prefix}/{stage}/*/*"
    raise ValueError(f"methodArn {method_arn!r} is not an execute-api method ARN")


def allow(resource: str, subject: str) -> dict[str, Any]:
    return {
        "principalId": subject,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": resource}],
        },
        "context": {"subject": subject},
    }


# log_event=False whatever POWERTOOLS_LOGGER_LOG_EVENT says: the event carries the token.
@logger.inject_lambda_context(clear_state=True, log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        resource = api_wide_resource(event.get("methodArn"))
    except ValueError as exc:
        logger.error(
            "refused: the event is not an API Gateway REQUEST authorizer event", extra={"reason": str(exc)}
        )
        raise _unauthorized() from None

    switch = os.environ.get(DISABLED_VARIABLE, "")
    if switch == "1":
        logger.warning(
            f"AUTHENTICATION IS DISABLED ({DISABLED_VARIABLE}=1): allowing the request without a key; "
            "never deploy this way"
        )
        return allow(resource, ANONYMOUS)
    if switch:
        logger.warning(f"{DISABLED_VARIABLE} is set but not to 1: authentication stays on")

    try:
        subject = _authenticate(event)
    except ApiKeyConfigurationError as exc:
        logger.error("refused: the MonitorApiKey configuration is unusable", extra={"reason": exc.reason})
        raise _unauthorized() from None
    except ApiKeyError as exc:
        logger.info("refused", extra={"reason": exc.reason})
        raise _unauthorized() from None
    except Exception:  # a broken deployment still answers 401, never lets a request through
        logger.exception("refused: the authorizer failed")
        raise _unauthorized() from None
    logger.info("allowed", extra={"subject": subject})
    return allow(resource, subject)


def _authenticate(event: Mapping[str, Any]) -> str:
    config = MonitorApiKeyConfiguration.from_env(os.environ)
    if config is None:
        raise ApiKeyConfigurationError(
            "no MonitorApiKey is configured (Authentication__MonitorApiKey__Subject and __PublicKey), "
            "so every request is refused; `dnmon generatekey` makes one"
        )
    return verify(bearer_token(event), config).subject
