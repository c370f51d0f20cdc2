"""Powertools resolvers whose current event belongs to the invocation's own thread.

Powertools keeps the event being handled in a class attribute shared by every resolver and router
of the process. Lambda runs one invocation per execution environment at a time, so that is safe
there; the local stack and the tests run the same handlers on many threads of one process, where
it is not (one request would read another's query). Keeping the event per thread costs nothing
in Lambda and makes the handlers reentrant wherever they run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, cast

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, LambdaFunctionUrlResolver
from aws_lambda_powertools.utilities.typing import LambdaContext

_local = threading.local()


class _PerThreadEvent:
    @property
    def current_event(self) -> Any:
        return _local.event

    @current_event.setter
    def current_event(self, value: Any) -> None:
        _local.event = value

    def resolve(self, event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
        _local.event = self._to_proxy_event(cast(dict[str, Any], event))  # type: ignore[attr-defined]
        return cast(dict[str, Any], super().resolve(event, context))  # type: ignore[misc]


class RestResolver(_PerThreadEvent, APIGatewayRestResolver):
    """The public API's resolver (API Gateway REST proxy events)."""


class FunctionUrlResolver(_PerThreadEvent, LambdaFunctionUrlResolver):
    """The agent API's resolver (function URL events)."""
