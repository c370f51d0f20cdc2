"""``/processes``: the .NET processes agents reported (pid, uid, name and ProcessInfo), read by key.

``GET /processes`` lists one page of agents (sorted by host name) with their processes; with
``host`` it lists that host's only. A ``Link: <…?next=…>; rel="next"`` header continues the listing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.models import ProcessInfo
from dnmon_core.operations import EnvironmentRequest, ProcessSelector
from dnmon_core.signing import MessageType
from dnmon_core.store import AgentRecord

from . import captures
from .http import base_url, next_link, page_limit, query
from .problems import Problem, validation_problem
from .services import services

ENV_WAIT_SECONDS = 15.0
ENV_POLL_SECONDS = 0.2

router = APIGatewayRouter()


def _json(payload: Any, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(200, "application/json", json.dumps(payload), headers=headers)


@router.get("/processes")
def list_processes() -> Response[str]:
    params = query(router)
    svc = services()
    host = params.get("host")
    next_token: str | None = None
    if host:
        agents = svc.registry.by_host(host)
    else:
        page = svc.registry.page(limit=page_limit(params), token=params.get("next") or None)
        agents, next_token = page.agents, page.next_token
    entries = [(a, p) for a in agents for p in a.processes]
    single = len(entries) == 1 and next_token is None
    body = [
        {"pid": p.pid, "uid": str(p.uid), "name": p.name, "isDefault": single, "host": a.host_name}
        for a, p in entries
    ]
    headers = {"Link": next_link(base_url(router), "/processes", params, next_token)} if next_token else None
    return _json(body, headers)


def _resolve(params: dict[str, Any]) -> tuple[AgentRecord, ProcessInfo]:
    errors: dict[str, list[str]] = {}
    process_query = captures.parse_process_query(params, errors)
    if errors:
        raise validation_problem(errors)
    target = captures.resolve_target(services(), process_query)
    if target.process is None:
        raise Problem(400, captures.NOT_FOUND)
    return target.agent, target.process


def _process_info(params: dict[str, Any]) -> Response[str]:
    return _json(_resolve(params)[1].model_dump(mode="json"))


@router.get("/processes/env")
def get_environment() -> Response[str]:
    """Only the agent can ask the runtime: a signed request on its queue, the reply through the table
    (read once and deleted: an environment may hold secrets)."""
    svc = services()
    agent, process = _resolve(query(router))
    request = EnvironmentRequest(
        request_id=uuid.uuid4(),
        process=ProcessSelector(pid=process.pid, uid=None if process.uid.int == 0 else process.uid),
    )
    wait = min(ENV_WAIT_SECONDS, svc.settings.sync_budget_seconds)
    svc.send(agent.queue_url, MessageType.ENVIRONMENT, agent.agent_id, request.model_dump(mode="json"), wait)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(ENV_POLL_SECONDS)
        reply = svc.replies.take(request.request_id)
        if reply is None:
            continue
        if "error" in reply:
            raise Problem(400, str(reply["error"]))
        return _json(reply["environment"])
    raise Problem(503, f"The agent on {agent.host_name} did not answer in time.")


@router.get("/processes/<pid>")
def get_process_by_pid(pid: str) -> Response[str]:
    return _process_info({**query(router), "pid": pid})


@router.get("/process")
def get_process() -> Response[str]:
    return _process_info(query(router))
