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
from dnmon_core.queries import HostQuery, ProcessListQuery, ProcessQuery
from dnmon_core.signing import MessageType
from dnmon_core.store import AgentRecord

from . import captures
from .http import base_url, bind, next_link, parse_query_or_400, query
from .problems import Problem
from .services import services

ENV_WAIT_SECONDS = 15.0
ENV_POLL_SECONDS = 0.2

router = APIGatewayRouter()


def _json(payload: Any, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(200, "application/json", json.dumps(payload), headers=headers)


@router.get("/processes")
def list_processes() -> Response[str]:
    params = bind(router, ProcessListQuery)
    svc = services()
    next_token: str | None = None
    if params.host is not None:
        agents = svc.registry.by_host(params.host)
    else:
        page = svc.registry.page(limit=params.limit, token=params.next)
        agents, next_token = page.agents, page.next_token
    entries = [(a, p) for a in agents for p in a.processes]
    single = len(entries) == 1 and next_token is None
    body = [_entry(a, p, single) for a, p in entries]
    if next_token is None:
        return _json(body)
    return _json(body, {"Link": next_link(base_url(router), "/processes", query(router), next_token)})


_LISTED_EXTRAS = ("namespacedPid", "containerId", "podName", "podNamespace", "ecsTaskId", "unavailable")


def _entry(agent: AgentRecord, process: ProcessInfo, single: bool) -> dict[str, Any]:
    """dotnet-monitor's ProcessIdentifier, plus the host and, where set, the container it runs in."""
    info = process.model_dump(mode="json")
    entry = {"pid": process.pid, "uid": str(process.uid), "name": process.name, "isDefault": single}
    return {**entry, "host": agent.host_name, **{k: info[k] for k in _LISTED_EXTRAS if k in info}}


def _resolve(process_query: ProcessQuery) -> tuple[AgentRecord, ProcessInfo]:
    target = captures.resolve_target(services(), process_query)
    if target.process is None:
        raise Problem(400, captures.NOT_FOUND)
    return target.agent, target.process


def _process_info(process_query: ProcessQuery) -> Response[str]:
    return _json(_resolve(process_query)[1].model_dump(mode="json"))


@router.get("/processes/env")
@router.get("/env")
def get_environment() -> Response[str]:
    """Only the agent can ask the runtime: a signed request on its queue, the reply through the table
    (read once and deleted: an environment may hold secrets). ``/env`` is dotnet-monitor's name."""
    svc = services()
    agent, process = _resolve(bind(router, ProcessQuery))
    request = EnvironmentRequest(
        request_id=uuid.uuid4(),
        process=ProcessSelector(pid=process.pid, uid=None if process.uid.int == 0 else process.uid),
    )
    wait = ENV_WAIT_SECONDS
    svc.replies.expect(request.request_id, agent.agent_id)
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
    host = bind(router, HostQuery).host
    return _process_info(parse_query_or_400(ProcessQuery, {"pid": pid, **({"host": host} if host else {})}))


@router.get("/process")
def get_process() -> Response[str]:
    return _process_info(bind(router, ProcessQuery))
