"""The API function: one Powertools resolver, one router per route group (the seed pages' routes)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.config import ConfigurationError
from dnmon_core.store import InvalidToken, StoreError

from . import info, livemetrics, openapi, operations, processes, trace
from .problems import Problem, validation_problem
from .resolvers import RestResolver

logger = Logger(service="dnmon")
app = RestResolver()
for group in (livemetrics, trace, processes, operations, info, openapi):
    app.include_router(group.router)


@app.exception_handler(Problem)
def _problem(exc: Problem) -> Response[str]:
    return exc.response()


@app.exception_handler(InvalidToken)
def _token(exc: InvalidToken) -> Response[str]:
    return validation_problem({"next": [str(exc)]}).response()


@app.exception_handler(StoreError)
def _store(exc: StoreError) -> Response[str]:
    """Every AWS fault (the store maps ClientError and BotoCoreError alike) is a 503 problem."""
    logger.error("AWS failure", extra={"error": str(exc), "code": exc.code})
    return Problem(503, "dnmon's AWS services did not answer; try again.").response()


@app.exception_handler(ConfigurationError)
def _configuration(exc: ConfigurationError) -> Response[str]:
    logger.error("misconfigured", extra={"error": str(exc)})
    return Problem(500, f"dnmon is misconfigured: {exc}").response()


@app.not_found
def _not_found(exc: Exception) -> Response[str]:
    return Problem(404, "No such route.").response()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
