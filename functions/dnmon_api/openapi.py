"""``GET /openapi.json``: the API described from the very models that validate it.

Bodies come from ``dnmon_core.models``, query parameters from ``dnmon_core.queries``, responses
from the public shapes (ProcessInfo, OperationStatus, Metric records, problem+json); nothing here
restates a field by hand. ``docs/openapi.json`` is this document, regenerated with
``python -m dnmon_api.openapi > docs/openapi.json`` (a test fails when they differ).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Final

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema

from dnmon_core.models import (
    EventMetricsConfiguration,
    EventProvidersConfiguration,
    Metric,
    ProcessIdentifier,
    ProcessInfo,
)
from dnmon_core.operations import OperationStatus, OperationSummary
from dnmon_core.queries import QUERY_MODELS, QueryModel

router = APIGatewayRouter()

PROBLEM_JSON: Final = "application/problem+json"
REF: Final = "#/components/schemas/{model}"


class ProblemDetails(BaseModel):
    """RFC 7807 problem details, as every error of this API is written (dnmon_api.problems)."""

    type: str
    title: str
    status: int
    detail: str


class ValidationProblemDetails(ProblemDetails):
    """A 400 naming each bad field: ``errors`` maps a camelCase path to its messages."""

    errors: dict[str, list[str]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    responses: dict[str, Any]
    body: type[BaseModel] | None = None


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _paged(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A listing that may continue: the next page is linked (RFC 8288) with its ``next`` token."""
    return {
        **_json(schema, description),
        "headers": {
            "Link": {
                "description": 'dnmon: `<…?next=…>; rel="next"` while there are more pages.',
                "schema": {"type": "string"},
            }
        },
    }


_LOCATION: Final = {
    "Location": {
        "description": "Absolute URI of the operation (`/operations/{operationId}`).",
        "schema": {"type": "string", "format": "uri"},
    }
}
_ACCEPTED: Final = {
    "description": "An egress provider was given, or durationSeconds is -1 or longer than a streamed "
    "response may last (DNMON_STREAM_MAX_SECONDS, 840 s): the capture has started, its artifact is "
    "kept; follow Location.",
    "headers": _LOCATION,
}
_STREAMED: Final = {
    **_LOCATION,
    "Content-Disposition": {
        "description": 'attachment; filename="{artifact name}", as dotnet-monitor sends it.',
        "schema": {"type": "string"},
    },
}
_STREAM_NOTE: Final = (
    " Status and headers are sent when the EventPipe session opens; a failure after that ends the "
    "stream without its final chunk (the partial artifact is kept, see the artifact route)."
)
_TRACE_OK: Final = {
    "description": "The nettrace stream, exactly as the runtime wrote it." + _STREAM_NOTE,
    "headers": _STREAMED,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_METRICS_OK: Final = {
    "description": "Metric records as a JSON text sequence (RFC 7464: 0x1E, JSON, 0x0A per record), "
    "each interval's as they are produced." + _STREAM_NOTE,
    "headers": _STREAMED,
    "content": {"application/json-seq": {"schema": _ref("MetricRecord")}},
}
_ENVIRONMENT: Final = _json(
    {"type": "object", "additionalProperties": {"type": "string"}}, "The process's environment block."
)

ROUTES: Final = (
    Route("POST", "/livemetrics", "Capture metrics of a process (custom providers and meters).",
          {"200": _METRICS_OK, "202": _ACCEPTED, "429": "problem"}, EventMetricsConfiguration),
    Route("GET", "/livemetrics", "Capture metrics of a process (the default providers).",
          {"200": _METRICS_OK, "202": _ACCEPTED, "429": "problem"}),
    Route("POST", "/trace", "Capture a trace of a process with the given providers.",
          {"200": _TRACE_OK, "202": _ACCEPTED, "429": "problem"}, EventProvidersConfiguration),
    Route("GET", "/trace", "Capture a trace of a process with the given profiles.",
          {"200": _TRACE_OK, "202": _ACCEPTED, "429": "problem"}),
    Route("GET", "/processes", "The .NET processes the agents last reported.",
          {"200": _paged({"type": "array", "items": _ref(ProcessIdentifier)}, "The processes.")}),
    Route("GET", "/processes/{pid}", "A process by its ID.",
          {"200": _json(_ref(ProcessInfo), "The process.")}),
    Route("GET", "/processes/env", "The environment block of a process.", {"200": _ENVIRONMENT}),
    Route("GET", "/env", "The environment block of a process.", {"200": _ENVIRONMENT}),
    Route("GET", "/process", "A process chosen by pid, uid or name.",
          {"200": _json(_ref(ProcessInfo), "The process.")}),
    Route("GET", "/operations", "The operations, oldest first, optionally filtered.",
          {"200": _paged({"type": "array", "items": _ref(OperationSummary)}, "The operations.")}),
    Route("GET", "/operations/{operationId}", "The status of an operation.",
          {"200": _json(_ref(OperationStatus), "Starting, running, stopping, failed or cancelled."),
           "201": _json(_ref(OperationStatus), "Succeeded: the artifact exists.")}),
    Route("DELETE", "/operations/{operationId}", "Cancel an operation, or stop it gracefully (stop=true).",
          {"200": {"description": "Cancelled."}, "202": {"description": "Stopping gracefully."}}),
    Route("GET", "/operations/{operationId}/artifact", "dnmon: where to download an operation's artifact "
          "(also a failed capture's partial one: `partial` is then true).",
          {"200": _json({"type": "object"}, "A local artifact's location."),
           "302": {"description": "Redirect to a presigned URL (also given in the JSON body).",
                   "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                   "content": {"application/json": {"schema": {"type": "object"}}}}}),
    Route("GET", "/info", "What is answering, and which agents are alive.",
          {"200": _paged({"type": "object"}, "Version, diagnostic port mode and agents.")}),
    Route("GET", "/openapi.json", "This document.", {"200": _json({"type": "object"}, "OpenAPI 3.1.")}),
)  # fmt: skip
"""Every route of the API function (infra/template.yaml's ApiFunction events)."""

_PATH_PARAMETERS: Final = {
    "pid": {"type": "integer", "format": "int32", "description": "The ID of the process."},
    "operationId": {"type": "string", "format": "uuid", "description": "The operation's ID."},
}

_PROBLEMS: Final = {
    "400": ("ValidationProblemDetails", "Invalid input: `errors` names each bad field."),
    "401": ("ProblemDetails", "No or invalid Bearer token (a MonitorApiKey)."),
    "404": ("ProblemDetails", "No such route."),
    "429": ("ProblemDetails", "Too many concurrent operations of this kind on the host."),
    "503": ("ProblemDetails", "The operation store or an agent is unavailable; try again."),
}


def _metric_schema() -> dict[str, Any]:
    """From ``dnmon_core.models.Metric`` (a dataclass on the agent's hot path, not a pydantic
    model): its fields, camelCased as ``Metric.to_dict`` writes every one of them."""
    schema = TypeAdapter(Metric).json_schema(mode="serialization", ref_template=REF)
    properties = {}
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
        properties[to_camel(name)] = prop
    properties["value"]["description"] = "NaN and infinities are written as 0."
    return {
        "title": "MetricRecord",
        "description": "One record of the /livemetrics artifact.",
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }


def _query_parameters(model: type[QueryModel]) -> list[dict[str, Any]]:
    properties = model.model_json_schema(mode="validation")["properties"]
    parameters = []
    for name, schema in properties.items():
        schema = dict(schema)
        description = schema.pop("description", "")
        schema.pop("title", None)
        variants = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
        if variants:  # a query value is absent, never null
            schema = {**variants[0], **schema}
        if schema.get("default") is None:
            schema.pop("default", None)
        parameters.append(
            {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
        )
    return parameters


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", route.path).rstrip("_"),
        "summary": route.summary,
        "security": [{"Bearer": []}],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in _PATH_PARAMETERS.items()
        if f"{{{name}}}" in route.path
    ]
    query_model = QUERY_MODELS.get((route.method, route.path))
    if query_model is not None:
        parameters.extend(_query_parameters(query_model))
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schema = _ref(route.body)
        operation["requestBody"] = {
            "required": True,
            "content": {
                t: {"schema": schema} for t in ("application/json", "text/json", "application/*+json")
            },
        }
    responses: dict[str, Any] = {}
    for status, response in route.responses.items():
        if response != "problem":
            responses[status] = response
    for status, (model, description) in _PROBLEMS.items():
        if status == "429" and "429" not in route.responses:
            continue
        responses[status] = {"description": description, "content": {PROBLEM_JSON: {"schema": _ref(model)}}}
    if route.body is not None:
        responses["415"] = {
            "description": "The body is not JSON (application/json, text/json or application/*+json).",
            "content": {PROBLEM_JSON: {"schema": _ref("ProblemDetails")}},
        }
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, built from the models on every call (it is cheap)."""
    models: list[type[BaseModel]] = [
        EventMetricsConfiguration,
        EventProvidersConfiguration,
        ProcessIdentifier,
        ProcessInfo,
        OperationSummary,
        OperationStatus,
        ProblemDetails,
        ValidationProblemDetails,
    ]
    _, definitions = models_json_schema(
        [(m, "serialization" if m in (OperationSummary, OperationStatus) else "validation") for m in models],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    schemas["MetricRecord"] = _metric_schema()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dnmon",
            "version": "1.0",
            "description": "dotnet-monitor's capture API (/livemetrics, /trace, /processes, /operations) "
            "as a serverless control plane in front of on-host agents. Query parameter names and body "
            "property names bind case-insensitively, as ASP.NET binds them.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "Bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A MonitorApiKey (dotnet-monitor generatekey).",
                }
            },
        },
        "security": [{"Bearer": []}],
    }


def render() -> str:
    """The document as shipped in docs/openapi.json."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


@router.get("/openapi.json")
def get_openapi() -> Response[str]:
    return Response(200, "application/json", render())


if __name__ == "__main__":
    sys.stdout.write(render())
