"""``POST /trace`` (custom providers) and ``GET /trace`` (profiles)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.operations import ArtifactKind
from dnmon_core.profiles import DEFAULT_PROFILE, TraceProfile

from . import captures
from .http import base_url, body_text, query
from .problems import validation_problem
from .services import services

router = APIGatewayRouter()


def _run(configuration: dict[str, Any], profile: str | None = None) -> Response[Any]:
    svc = services()
    capture_query = captures.parse_capture_query(query(router), svc)
    record = captures.start_capture(svc, ArtifactKind.TRACE, capture_query, configuration, profile)
    location = captures.location_of(base_url(router), record.operation_id)
    return captures.respond(svc, record, capture_query, location)


@router.post("/trace")
def post_trace() -> Response[Any]:
    configuration = captures.parse_body(ArtifactKind.TRACE, body_text(router))
    return _run(configuration)


@router.get("/trace")
def get_trace() -> Response[Any]:
    text = query(router).get("profile")
    try:
        profile = TraceProfile.parse(text) if text is not None else DEFAULT_PROFILE
    except ValueError as exc:
        raise validation_problem({"profile": [str(exc)]}) from exc
    # The Http profile's filter carries ';' and '=' that user input may not: the job names the
    # profile and the agent builds its providers from our own constants.
    return _run({}, profile=str(profile.value))
