"""RFC 7807 problem+json, the only error shape the API returns (ASP.NET's ProblemDetails)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from dnmon_core.config import ConfigurationError
from dnmon_core.store import StoreError

PROBLEM_JSON = "application/problem+json"
_TYPES = {
    400: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    401: "https://tools.ietf.org/html/rfc9110#section-15.5.2",
    404: "https://tools.ietf.org/html/rfc9110#section-15.5.5",
    415: "https://tools.ietf.org/html/rfc9110#section-15.5.16",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc9110#section-15.6.1",
    503: "https://tools.ietf.org/html/rfc9110#section-15.6.4",
}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 415: "Unsupported Media Type",
           429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


class Problem(Exception):
    """Raised anywhere in a route; the app's exception handler renders it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Mapping[str, Sequence[str]] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = {k: list(v) for k, v in (errors or {}).items()}
        self.title = title

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "type": _TYPES.get(self.status, "about:blank"),
            "title": self.title or _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body

    def response(self) -> Response[str]:
        # Powertools serialises only application/json dicts; problem+json must be a string.
        return Response(self.status, PROBLEM_JSON, json.dumps(self.body()))


def validation_problem(errors: Mapping[str, Sequence[str]]) -> Problem:
    """400 ValidationProblemDetails; ``detail`` repeats the first message so one line says it all."""
    first = next(iter(errors.items()), ("", [""]))
    field = f"{first[0]}: " if first[0] else ""
    return Problem(
        400,
        f"{field}{first[1][0] if first[1] else 'invalid'}",
        errors=errors,
        title="One or more validation errors occurred.",
    )


def rate_limited() -> Problem:
    return Problem(429, "Rate limit reached.")


def fault_problem(exc: StoreError | ConfigurationError) -> Problem:
    """The problem an AWS fault (503) or a misconfiguration (500) is answered with."""
    if isinstance(exc, StoreError):
        return Problem(503, "dnmon's AWS services did not answer; try again.")
    return Problem(500, f"dnmon is misconfigured: {exc}")


def install_handlers(app: Any, logger: Logger, unknown_route: str) -> None:
    """The error rendering every resolver shares: a Problem as itself, every AWS fault (the store
    maps ClientError and BotoCoreError alike) a 503, a misconfiguration a 500, an unknown route
    a 404 — always problem+json, never a bare 502 from an exception that escaped."""

    @app.exception_handler(Problem)
    def _problem(exc: Problem) -> Response[str]:
        return exc.response()

    @app.exception_handler(StoreError)
    def _store(exc: StoreError) -> Response[str]:
        logger.error("AWS failure", extra={"error": str(exc), "code": exc.code})
        return fault_problem(exc).response()

    @app.exception_handler(ConfigurationError)
    def _configuration(exc: ConfigurationError) -> Response[str]:
        logger.error("misconfigured", extra={"error": str(exc)})
        return fault_problem(exc).response()

    @app.not_found
    def _not_found(exc: Exception) -> Response[str]:
        return Problem(404, unknown_route).response()
