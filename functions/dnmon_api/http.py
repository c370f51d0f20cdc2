"""Small helpers over the API Gateway proxy event that every route group needs."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from .problems import validation_problem


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


DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_limit(params: dict[str, Any]) -> int:
    """``limit``: 1..1000, default 100 (a bad value is the client's 400)."""
    text = params.get("limit")
    if text is None:
        return DEFAULT_PAGE
    if not str(text).isascii() or not str(text).isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise validation_problem({"limit": [f"The field limit must be between 1 and {MAX_PAGE}."]})
    return int(text)


def next_link(base: str, path: str, params: dict[str, Any], token: str) -> str:
    """RFC 8288 ``Link`` to the next page: the same query with ``next`` set."""
    kept = {k: v for k, v in params.items() if k.lower() != "next" and v is not None}
    return f'<{base}{path}?{urlencode({**kept, "next": token})}>; rel="next"'
