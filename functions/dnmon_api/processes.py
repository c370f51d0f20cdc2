"""``/processes``: the .NET processes agents last reported (pid, uid, name and ProcessInfo)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.operations import EnvironmentRequest, ProcessSelector
from dnmon_core.store import AgentRecord

from . import captures
from .http import query
from .problems import Problem, validation_problem
from .services import services

ENV_WAIT_SECONDS = 15.0

router = APIGatewayRouter()


def _json(payload: Any) -> Response[str]:
    return Response(200, "application/json", json.dumps(payload))


@router.get("/processes")
def list_processes() -> Response[str]:
    params = query(router)
    host = params.get("host")
    agents = [a for a in services().agents(refresh=True) if host is None or host in (a.host_name, a.agent_id)]
    entries = [(a, p) for a in agents for p in a.processes]
    single = len(entries) == 1
    return _json(
        [
            {"pid": p["pid"], "uid": p["uid"], "name": p["name"], "isDefault": single, "host": a.host_name}
            for a, p in entries
        ]
    )


def _resolve(params: dict[str, Any]) -> tuple[AgentRecord, dict[str, Any]]:
    errors: dict[str, list[str]] = {}
    process_query = captures.parse_process_query(params, errors)
    if errors:
        raise validation_problem(errors)
    agent, process = captures.resolve_agent(services(), process_query)
    if process is None:
        raise Problem(400, "Unable to resolve the process.")
    return agent, process


def _process_info(params: dict[str, Any]) -> dict[str, Any]:
    return _resolve(params)[1]


@router.get("/processes/env")
def get_environment() -> Response[str]:
    """Only the agent can ask the runtime: a request on its queue, the reply through the table."""
    svc = services()
    agent, process = _resolve(query(router))
    request = EnvironmentRequest(
        request_id=uuid.uuid4(), process=ProcessSelector(pid=process["pid"], uid=process["uid"])
    )
    svc.sqs.send_message(QueueUrl=agent.queue_url, MessageBody=request.model_dump_json())
    deadline = time.monotonic() + min(ENV_WAIT_SECONDS, svc.settings.sync_budget_seconds)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        reply = svc.replies.get(request.request_id)
        if reply is None:
            continue
        if "error" in reply:
            raise Problem(400, str(reply["error"]))
        return _json(reply["environment"])
    raise Problem(503, f"The agent on {agent.host_name} did not answer in time.")


@router.get("/processes/<pid>")
def get_process_by_pid(pid: str) -> Response[str]:
    return _json(_process_info({**query(router), "pid": pid}))


@router.get("/process")
def get_process() -> Response[str]:
    return _json(_process_info(query(router)))
