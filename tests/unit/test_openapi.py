"""The OpenAPI document: generated from the validating models, valid OpenAPI 3.1, complete, shipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from dnmon_api import app as api
from dnmon_api import openapi
from dnmon_core.models import EventProvidersConfiguration
from dnmon_core.queries import QUERY_MODELS, CaptureQuery
from tests.apigw import FakeContext, header, rest_event

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docs" / "openapi.json"


def test_shipped_document_is_the_generated_one() -> None:
    assert SHIPPED.read_text() == openapi.render(), (
        "docs/openapi.json is stale: run `.venv/bin/python -m dnmon_api.openapi > docs/openapi.json`"
    )


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    validate(document)


class _Loader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _template_routes() -> set[tuple[str, str]]:
    template = yaml.load((ROOT / "infra" / "template.yaml").read_text(), Loader=_Loader)
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"]
    return {(e["Properties"]["Method"].upper(), e["Properties"]["Path"]) for e in events.values()}


def test_every_deployed_route_is_described() -> None:
    described = {(r.method, r.path) for r in openapi.ROUTES}
    assert _template_routes() <= described
    paths = openapi.document()["paths"]
    assert {(m.upper(), p) for p, ops in paths.items() for m in ops} == described


def _operation(method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = openapi.document()["paths"][path][method]
    return operation


def test_query_parameters_come_from_the_query_models() -> None:
    for (method, path), model in QUERY_MODELS.items():
        names = [p["name"] for p in _operation(method.lower(), path)["parameters"] if p["in"] == "query"]
        assert names == [info.alias or name for name, info in model.model_fields.items()], path
    duration = next(p for p in _operation("post", "/trace")["parameters"] if p["name"] == "durationSeconds")
    bounds = CaptureQuery.model_fields["duration_seconds"].metadata
    assert duration["schema"]["minimum"] == -1 and duration["schema"]["maximum"] == 2147483647 and bounds


def test_bodies_come_from_the_body_models() -> None:
    document = openapi.document()
    body = _operation("post", "/trace")["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EventProvidersConfiguration"}
    schema = document["components"]["schemas"]["EventProvidersConfiguration"]
    assert set(schema["properties"]) == {
        info.alias for info in EventProvidersConfiguration.model_fields.values()
    }
    provider = document["components"]["schemas"]["EventPipeProviderModel"]["properties"]
    assert (
        provider["keywords"]["type"] == "string" and provider["keywords"]["default"] == "0xFFFFFFFFFFFFFFFF"
    )


@pytest.mark.parametrize(
    ("method", "path", "media_type"),
    [
        ("post", "/trace", "application/octet-stream"),
        ("get", "/trace", "application/octet-stream"),
        ("post", "/livemetrics", "application/json-seq"),
        ("get", "/livemetrics", "application/json-seq"),
    ],
)
def test_artifact_media_types_and_problems(method: str, path: str, media_type: str) -> None:
    responses = _operation(method, path)["responses"]
    assert media_type in responses["200"]["content"]
    for status in ("400", "401", "404", "429", "503"):
        assert "application/problem+json" in responses[status]["content"], status
    assert "Location" in responses["202"]["headers"]


def test_bearer_scheme() -> None:
    document = openapi.document()
    assert document["components"]["securitySchemes"]["Bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A MonitorApiKey (dotnet-monitor generatekey).",
    }
    assert all(
        op["security"] == [{"Bearer": []}] for ops in document["paths"].values() for op in ops.values()
    )


def test_the_route_serves_it() -> None:
    response = api.handler(rest_event("GET", "/openapi.json"), FakeContext())  # type: ignore[arg-type]
    assert response["statusCode"] == 200
    assert header(response, "Content-Type") == "application/json"
    assert json.loads(response["body"]) == openapi.document()
