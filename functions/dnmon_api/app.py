"""The API function: one Powertools resolver, one router per route group (the seed pages' routes)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.store import InvalidToken

from . import info, openapi, operations, processes
from .problems import install_handlers, validation_problem
from .resolvers import RestResolver

logger = Logger(service="dnmon")
app = RestResolver()
# The capture routes (/livemetrics, /trace) stream: they are the StreamFunction's (streaming.py).
for group in (processes, operations, info, openapi):
    app.include_router(group.router)


install_handlers(app, logger, "No such route.")


@app.exception_handler(InvalidToken)
def _token(exc: InvalidToken) -> Response[str]:
    return validation_problem({"next": [str(exc)]}).response()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
