"""Routes and handler names from infra/template.yaml, so the local stack serves what SAM deploys.

Only what the gateway needs is read: each function's ``Handler`` (or the Globals default), its
``Api`` events (method + path), and which function the API's default authorizer runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class TemplateError(ValueError):
    """The template lacks something the local stack needs (named in the message)."""


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !Sub, !GetAtt, ...) read as plain data."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in the template: /operations/{operationId}
    handler: str  # module.function
    pattern: re.Pattern[str]

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method.upper() != self.method:
            return None
        found = self.pattern.fullmatch(path)
        return found.groupdict() if found else None


@dataclass(frozen=True)
class ApiDefinition:
    routes: tuple[Route, ...]
    authorizer_handler: str | None
    agent_api_handler: str | None = None  # behind an AWS_IAM function URL

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """Static paths win over ``{param}`` paths, as in API Gateway."""
        for route in sorted(self.routes, key=lambda r: r.path.count("{")):
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None


def _pattern(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", path)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(regex)


def read(path: Path) -> dict[str, Any]:
    """The template as data, CloudFormation's short-form tags as their long form."""
    try:
        document: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from exc
    return document


def load(path: Path) -> ApiDefinition:
    document = read(path)
    resources: dict[str, Any] = document.get("Resources") or {}
    default_handler = ((document.get("Globals") or {}).get("Function") or {}).get("Handler")
    handlers: dict[str, str] = {}
    routes: list[Route] = []
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties") or {}
        handler = properties.get("Handler") or default_handler
        if not isinstance(handler, str):
            raise TemplateError(f"function {logical_id} has no Handler")
        handlers[logical_id] = handler
        for event in (properties.get("Events") or {}).values():
            if event.get("Type") != "Api":
                continue
            spec = event.get("Properties") or {}
            method, route_path = str(spec.get("Method", "")).upper(), spec.get("Path")
            if not method or not isinstance(route_path, str):
                raise TemplateError(f"function {logical_id} has an Api event without Method/Path")
            routes.append(Route(method, route_path, handler, _pattern(route_path)))
    if not routes:
        raise TemplateError(f"{path} declares no Api routes")
    return ApiDefinition(
        tuple(routes), _authorizer(resources, handlers), _iam_function_url(resources, handlers)
    )


def _iam_function_url(resources: dict[str, Any], handlers: dict[str, str]) -> str | None:
    """The handler behind the template's ``AWS_IAM`` function URL (the agent API)."""
    for logical_id, resource in resources.items():
        config = (resource.get("Properties") or {}).get("FunctionUrlConfig") or {}
        if resource.get("Type") == "AWS::Serverless::Function" and config.get("AuthType") == "AWS_IAM":
            return handlers[logical_id]
    return None


def _authorizer(resources: dict[str, Any], handlers: dict[str, str]) -> str | None:
    for resource in resources.values():
        if resource.get("Type") != "AWS::Serverless::Api":
            continue
        auth = (resource.get("Properties") or {}).get("Auth") or {}
        name = auth.get("DefaultAuthorizer")
        if not name:
            continue
        arn = ((auth.get("Authorizers") or {}).get(name) or {}).get("FunctionArn")
        target = arn.get("Fn::GetAtt", [None])[0] if isinstance(arn, dict) else None
        if target not in handlers:
            raise TemplateError(f"authorizer {name} does not name a function of the template")
        return handlers[target]
    return None
