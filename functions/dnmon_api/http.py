"""Small helpers over the API Gateway proxy event that every route group needs."""

from __future__ import annotations

from typing import Any, Protocol

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent


class HasEvent(Protocol):
    """A resolver or router: whatever exposes the event being handled."""

    @property
    def current_event(self) -> APIGatewayProxyEvent: ...


def base_url(app: HasEvent) -> str:
    """``<scheme>://<host>[/<stage>]``: the absolute prefix for Location headers."""
    event = app.current_event
    headers = {k.lower(): v for k, v in (event.headers or {}).items()}
    host = headers.get("host") or event.request_context.domain_name or "localhost"
    scheme = headers.get("x-forwarded-proto", "https")
    full_path = event.request_context.path or event.path
    prefix = full_path[: -len(event.path)] if event.path and full_path.endswith(event.path) else ""
    return f"{scheme}://{host}{prefix.rstrip('/')}"


def query(app: HasEvent) -> dict[str, Any]:
    return dict(app.current_event.query_string_parameters or {})


def body_text(app: HasEvent) -> str | None:
    event = app.current_event
    if event.body is None:
        return None
    return event.decoded_body if event.is_base64_encoded else event.body
