"""``POST /livemetrics`` (custom providers and meters) and ``GET /livemetrics`` (default providers)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.models import EventMetricsConfiguration
from dnmon_core.operations import ArtifactKind
from dnmon_core.queries import CaptureQuery

from . import captures
from .http import base_url, bind, json_body
from .services import services

router = APIGatewayRouter()


def _run(capture_query: CaptureQuery, configuration: dict[str, Any]) -> Response[Any]:
    svc = services()
    captures.check_egress(capture_query, svc)
    record = captures.start_capture(svc, ArtifactKind.LIVEMETRICS, capture_query, configuration)
    location = captures.location_of(base_url(router), record.operation_id)
    return captures.respond(svc, record, capture_query, location)


@router.post("/livemetrics")
def post_livemetrics() -> Response[Any]:
    capture_query = bind(router, CaptureQuery)
    return _run(capture_query, captures.parse_body(ArtifactKind.LIVEMETRICS, json_body(router)))


@router.get("/livemetrics")
def get_livemetrics() -> Response[Any]:
    return _run(
        bind(router, CaptureQuery), EventMetricsConfiguration().model_dump(mode="json", by_alias=True)
    )
