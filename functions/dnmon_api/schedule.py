"""EventBridge Scheduler target: ``{"route", "query", "body"}`` starts the same capture as the API.

A schedule has no HTTP response to carry an artifact, so a schedule without ``egressProvider``
egresses to the default bucket; the result is the operation, found through ``/operations``.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.operations import ArtifactKind
from dnmon_core.queries import CaptureQuery

from . import captures
from .http import parse_query_or_400
from .problems import Problem
from .services import services

logger = Logger(service="dnmon")
_ROUTES = {"/trace": ArtifactKind.TRACE, "/livemetrics": ArtifactKind.LIVEMETRICS}


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
        record = captures.start_capture(svc, kind, query, configuration)
    except Problem as exc:
        # A schedule cannot answer anyone: log the problem and report it as the invocation result.
        logger.error("scheduled capture refused", extra={"problem": exc.body()})
        return {"status": exc.status, "problem": exc.body()}
    logger.info("scheduled capture started", extra={"operationId": str(record.operation_id)})
    return {"status": 202, "operationId": str(record.operation_id)}
