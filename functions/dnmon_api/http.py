"""Small helpers over the API Gateway proxy event that every route group needs."""

from __future__ import annotations

import base64
import os
from typing import Protocol, TypeVar
from urllib.parse import urlencode

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from dnmon_core.queries import BodyError, QueryError, QueryModel, parse_query, read_json_body

from .problems import Problem, validation_problem

ModelT = TypeVar("ModelT", bound=QueryModel)


class HasEvent(Protocol):
    """A resolver or router: whatever exposes the event being handled."""

    @property
    def current_event(self) -> APIGatewayProxyEvent: ...


def base_url(app: HasEvent) -> str:
    """The absolute prefix for Location headers: ``DNMON_PUBLIC_URL`` (a custom domain), else the
    domain and stage API Gateway itself reports. Never the request's Host or X-Forwarded-* headers,
    which the client writes."""
    configured = os.environ.get("DNMON_PUBLIC_URL", "").rstrip("/")
    if configured:
        return configured
    event = app.current_event
    domain = event.request_context.domain_name or "localhost"
    full_path = event.request_context.path or event.path
    prefix = full_path[: -len(event.path)] if event.path and full_path.endswith(event.path) else ""
    return f"https://{domain}{prefix.rstrip('/')}"


def query(app: HasEvent) -> dict[str, str]:
    """Every query parameter; a name given twice keeps both values joined by ``,`` (ASP.NET's
    StringValues), so a model that wants one value refuses it instead of picking one."""
    event = app.current_event
    many = event.multi_value_query_string_parameters or {}
    if many:
        return {name: ",".join(values) for name, values in many.items() if values is not None}
    return {name: value for name, value in (event.query_string_parameters or {}).items() if value is not None}


def bind(app: HasEvent, model: type[ModelT]) -> ModelT:
    """The route's query model, bound as ASP.NET binds it; a bad value is a 400 naming it."""
    return parse_query_or_400(model, query(app))


def parse_query_or_400(model: type[ModelT], params: dict[str, str]) -> ModelT:
    try:
        return parse_query(model, params)
    except QueryError as exc:
        raise validation_problem(exc.errors) from None


def json_body(app: HasEvent) -> str:
    """The request body as JSON text: 415 for a media type the route does not take, 400 for bytes
    that are not UTF-8 (checked before the body model sees it)."""
    event = app.current_event
    headers = {k.lower(): v for k, v in (event.headers or {}).items()}
    if event.body is None:
        raw = b""
    elif event.is_base64_encoded:
        raw = base64.b64decode(event.body)
    else:
        raw = event.body.encode("utf-8", "surrogateescape")
    try:
        return read_json_body(headers.get("content-type"), raw)
    except BodyError as exc:
        raise Problem(exc.status, exc.detail) from None


def next_link(base: str, path: str, params: dict[str, str], token: str) -> str:
    """RFC 8288 ``Link`` to the next page: the same query with ``next`` set."""
    kept = {k: v for k, v in params.items() if k.lower() != "next"}
    return f'<{base}{path}?{urlencode({**kept, "next": token})}>; rel="next"'
