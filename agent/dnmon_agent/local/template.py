"""Routes and handler names from infra/template.yaml, so the local stack serves what SAM deploys.

Only what the gateway needs is read: each function's ``Handler``, timeout, memory and exec wrapper
(or the Globals defaults), its ``Api`` events (method + path, answered in one piece), the API's
``DefinitionBody`` routes whose ``aws_proxy`` integration streams (``responseTransferMode: STREAM``),
and which function the API's default authorizer runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TIMEOUT_SECONDS = 3  # Lambda's defaults when neither the function nor Globals set them
DEFAULT_MEMORY_MB = 128
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


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
class Function:
    """What Lambda needs to start one of the template's functions."""

    logical_id: str
    handler: str  # module.function
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    memory_mb: int = DEFAULT_MEMORY_MB
    exec_wrapper: str | None = None  # AWS_LAMBDA_EXEC_WRAPPER, a /var/task/... path


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in the template: /operations/{operationId}
    handler: str  # module.function
    pattern: re.Pattern[str]
    function: str = ""  # the serving function's logical id
    streaming: bool = False  # invoked with a streamed response (the Runtime API's streaming mode)

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
    functions: tuple[Function, ...] = ()

    def function(self, logical_id: str) -> Function:
        for function in self.functions:
            if function.logical_id == logical_id:
                return function
        raise TemplateError(f"the template has no function {logical_id}")

    def streaming_functions(self) -> tuple[Function, ...]:
        """The functions some route invokes with a streamed response, each once."""
        names = {route.function for route in self.routes if route.streaming}
        return tuple(f for f in self.functions if f.logical_id in names)

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
    defaults = (document.get("Globals") or {}).get("Function") or {}
    handlers: dict[str, str] = {}
    functions: list[Function] = []
    routes: list[Route] = []
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties") or {}
        function = _function(logical_id, properties, defaults)
        functions.append(function)
        handlers[logical_id] = function.handler
        for event in (properties.get("Events") or {}).values():
            if event.get("Type") != "Api":
                continue
            spec = event.get("Properties") or {}
            method, route_path = str(spec.get("Method", "")).upper(), spec.get("Path")
            if not method or not isinstance(route_path, str):
                raise TemplateError(f"function {logical_id} has an Api event without Method/Path")
            routes.append(Route(method, route_path, function.handler, _pattern(route_path), logical_id))
    routes += _definition_routes(resources, {f.logical_id: f for f in functions})
    if not routes:
        raise TemplateError(f"{path} declares no Api routes")
    return ApiDefinition(
        tuple(routes),
        _authorizer(resources, handlers),
        _iam_function_url(resources, handlers),
        tuple(functions),
    )


def _function(logical_id: str, properties: dict[str, Any], defaults: dict[str, Any]) -> Function:
    handler = properties.get("Handler") or defaults.get("Handler")
    if not isinstance(handler, str):
        raise TemplateError(f"function {logical_id} has no Handler")
    variables = {
        **((defaults.get("Environment") or {}).get("Variables") or {}),
        **((properties.get("Environment") or {}).get("Variables") or {}),
    }
    wrapper = variables.get("AWS_LAMBDA_EXEC_WRAPPER")
    timeout = properties.get("Timeout", defaults.get("Timeout", DEFAULT_TIMEOUT_SECONDS))
    memory = properties.get("MemorySize", defaults.get("MemorySize", DEFAULT_MEMORY_MB))
    if not isinstance(timeout, int) or not isinstance(memory, int):
        raise TemplateError(f"function {logical_id}: Timeout and MemorySize must be numbers here")
    return Function(logical_id, handler, timeout, memory, wrapper if isinstance(wrapper, str) else None)


_FUNCTION_ARN = re.compile(r"\$\{([A-Za-z0-9]+)\.Arn\}")


def _definition_routes(resources: dict[str, Any], functions: dict[str, Function]) -> list[Route]:
    """Routes the API's OpenAPI body declares itself: ``aws_proxy`` integrations naming a function."""
    routes: list[Route] = []
    for resource in resources.values():
        if resource.get("Type") != "AWS::Serverless::Api":
            continue
        body = (resource.get("Properties") or {}).get("DefinitionBody") or {}
        for route_path, operations in (body.get("paths") or {}).items():
            for verb, operation in (operations or {}).items():
                if verb.lower() not in HTTP_METHODS:
                    continue
                integration = (operation or {}).get("x-amazon-apigateway-integration") or {}
                if integration.get("type") != "aws_proxy":
                    continue
                function = functions.get(_integrated_function(route_path, verb, integration) or "")
                if function is None:
                    raise TemplateError(
                        f"{verb.upper()} {route_path}: the integration names no function of the template"
                    )
                streaming = integration.get("responseTransferMode") == "STREAM"
                if streaming and function.exec_wrapper is None:
                    raise TemplateError(
                        f"function {function.logical_id} streams but sets no AWS_LAMBDA_EXEC_WRAPPER: "
                        "the local stack starts it through that wrapper"
                    )
                routes.append(
                    Route(
                        verb.upper(),
                        route_path,
                        function.handler,
                        _pattern(route_path),
                        function.logical_id,
                        streaming,
                    )
                )
    return routes


def _integrated_function(route_path: str, verb: str, integration: dict[str, Any]) -> str | None:
    """The logical id in the integration URI's ``${Function.Arn}`` (``Fn::Sub``, either form)."""
    uri = integration.get("uri")
    text = uri.get("Fn::Sub") if isinstance(uri, dict) else None
    if isinstance(text, list) and text:
        text = text[0]
    if not isinstance(text, str):
        raise TemplateError(
            f"{verb.upper()} {route_path}: the integration uri is not a !Sub of a function ARN"
        )
    found = _FUNCTION_ARN.search(text)
    return found.group(1) if found else None


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
