"""``/processes``: the .NET processes agents last reported (pid, uid, name and ProcessInfo)."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from . import captures
from .http import query
from .problems import Problem, validation_problem
from .services import services

router = APIGatewayRouter()


def _json(payload: Any) -> Response[str]:
    return Response(200, "application/json", json.dumps(payload))


@router.get("/processes")
def list_processes() -> Response[str]:
    params = query(router)
    host = params.get("host")
    agents = [a for a in services().registry.agents() if host is None or host in (a.host_name, a.agent_id)]
    entries = [(a, p) for a in agents for p in a.processes]
    single = len(entries) == 1
    return _json(
        [
            {"pid": p["pid"], "uid": p["uid"], "name": p["name"], "isDefault": single, "host": a.host_name}
            for a, p in entries
        ]
    )


def _process_info(params: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    process_query = captures.parse_process_query(params, errors)
    if errors:
        raise validation_problem(errors)
    _, process = captures.resolve_agent(services(), process_query)
    if process is None:
        raise Problem(400, "Unable to resolve the process.")
    return process


@router.get("/processes/<pid>")
def get_process_by_pid(pid: str) -> Response[str]:
    return _json(_process_info({**query(router), "pid": pid}))


@router.get("/process")
def get_process() -> Response[str]:
    return _json(_process_info(query(router)))
