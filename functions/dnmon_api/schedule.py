"""EventBridge Scheduler target: ``{"route", "query", "body"}`` starts the same capture as the API.

A schedule has no HTTP response to carry an artifact, so a schedule without ``egressProvider``
egresses to the default bucket; the result is the operation, found through ``/operations``.

Scheduler invokes Lambda asynchronously, and nobody reads what the function returns. A capture
that is refused (the API's 4xx) or fails (an AWS fault, a misconfiguration) is therefore logged as
an error with its problem+json and raised as ``ScheduledCaptureFailed``: Lambda then retries the
event, and after its last retry puts the event in the function's dead-letter queue
(infra/template.yaml, ``ScheduleFunction``).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.config import ConfigurationError
from dnmon_core.operations import ArtifactKind
from dnmon_core.queries import CaptureQuery
from dnmon_core.store import StoreError

from . import captures
from .http import parse_query_or_400
from .problems import Problem, fault_problem
from .services import services

logger = Logger(service="dnmon")
_ROUTES = {"/trace": ArtifactKind.TRACE, "/livemetrics": ArtifactKind.LIVEMETRICS}


class ScheduledCaptureFailed(Exception):
    """A scheduled capture did not start; ``problem`` is the problem+json the API would answer.

    Its message is what Lambda reports as the invocation's error (and puts in the ``ErrorMessage``
    attribute of the dead-letter message): status, title and detail on one line.
    """

    def __init__(self, problem: dict[str, object]) -> None:
        super().__init__(f"{problem['status']} {problem['title']}: {problem['detail']}")
        self.problem = problem


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    route = str(event.get("route", ""))
    kind = _ROUTES.get(route)
    try:
        if kind is None:
            raise Problem(400, f"route must be one of {sorted(_ROUTES)}, not {route!r}")
        svc = services()
        raw_query = {str(k): str(v) for k, v in (event.get("query") or {}).items()}
        query = parse_query_or_400(CaptureQuery, raw_query)
        captures.check_egress(query, svc)
        body = event.get("body")
        configuration = captures.parse_body(
            kind, body if isinstance(body, str) or body is None else json.dumps(body)
        )
        record = captures.start_capture(svc, kind, query, configuration, answered=False)
    except (Problem, StoreError, ConfigurationError) as exc:
        problem = (exc if isinstance(exc, Problem) else fault_problem(exc)).body()
        extra: dict[str, object] = {"problem": problem, "route": route, "query": event.get("query")}
        if isinstance(exc, StoreError):
            extra["error"] = str(exc)  # which AWS call failed, which the 503 problem does not say
        logger.error("scheduled capture failed", extra=extra)
        raise ScheduledCaptureFailed(problem) from exc
    logger.info("scheduled capture started", extra={"operationId": str(record.operation_id)})
    return {"status": 202, "operationId": str(record.operation_id)}
