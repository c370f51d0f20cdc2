"""``POST /trace`` (custom providers) and ``GET /trace`` (profiles)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.models import EventProvidersConfiguration, counter_interval_errors
from dnmon_core.operations import ArtifactKind
from dnmon_core.queries import CaptureQuery, TraceQuery

from . import captures
from .http import base_url, bind, json_body
from .problems import validation_problem
from .services import services

router = APIGatewayRouter()


def _run(
    capture_query: CaptureQuery, configuration: dict[str, Any], profile: str | None = None
) -> Response[Any]:
    svc = services()
    captures.check_egress(capture_query, svc)
    record = captures.start_capture(svc, ArtifactKind.TRACE, capture_query, configuration, profile)
    location = captures.location_of(base_url(router), record.operation_id)
    return captures.respond(svc, record, capture_query, location)


@router.post("/trace")
def post_trace() -> Response[Any]:
    capture_query = bind(router, CaptureQuery)
    configuration = captures.parse_body(ArtifactKind.TRACE, json_body(router))
    errors = counter_interval_errors(
        EventProvidersConfiguration.model_validate(configuration),
        services().settings.counter_interval_seconds,
    )
    if errors:
        raise validation_problem(errors)
    return _run(capture_query, configuration)


@router.get("/trace")
def get_trace() -> Response[Any]:
    trace_query = bind(router, TraceQuery)
    # The job names the profile and the agent builds its providers from our own constants.
    return _run(trace_query, {}, profile=str(trace_query.profile.value))
