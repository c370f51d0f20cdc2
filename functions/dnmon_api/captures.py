"""Starting a capture, shared by ``/trace``, ``/livemetrics`` and the schedule target.

validate query + body → pick the agent and check the process it last reported → reserve a
concurrency slot (429 when none) → write the operation → send the CaptureJob to the agent's queue →
answer: 202 + Location with an egress provider, or when the capture cannot end within a streamed
response; otherwise the artifact itself, which ``streaming.py`` relays as the agent publishes it.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pydantic
from aws_lambda_powertools.event_handler import Response

from dnmon_core.config import EgressProvider
from dnmon_core.models import (
    EventMetricsConfiguration,
    EventProvidersConfiguration,
    ProcessInfo,
    validation_errors,
)
from dnmon_core.operations import (
    ARTIFACT_CONTENT_TYPES,
    ArtifactKind,
    CaptureJob,
    EgressTarget,
    OperationError,
    OperationProcess,
    OperationState,
    ProcessSelector,
    artifact_name,
)
from dnmon_core.queries import CaptureQuery, ProcessQuery
from dnmon_core.signing import MessageType
from dnmon_core.store import AgentRecord, OperationRecord, StoreError, utcnow

from .problems import Problem, rate_limited, validation_problem
from .services import Services

STREAM_MARKER = "X-Dnmon-Stream-Operation"
"""How a capture route tells ``streaming.handler`` to relay this operation's artifact as the body
(removed before the response leaves the function)."""


def check_egress(query: CaptureQuery, services: Services) -> None:
    """``egressProvider`` must name a configured provider (a 400 naming the field otherwise)."""
    name = query.egress_provider
    if name is not None and name not in services.settings.egress_providers:
        known = ", ".join(sorted(services.settings.egress_providers)) or "none configured"
        raise validation_problem(
            {"egressProvider": [f"Egress provider '{name}' does not exist (configured: {known})."]}
        )


def parse_body(kind: ArtifactKind, body: str | None) -> dict[str, Any]:
    """Validate the request body; the job carries it as JSON, camelCase, defaults filled in."""
    model: type[pydantic.BaseModel] = (
        EventProvidersConfiguration if kind == ArtifactKind.TRACE else EventMetricsConfiguration
    )
    if body is None or not body.strip():
        raise validation_problem({"": ["A non-empty request body is required."]})
    try:
        parsed = model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise validation_problem(validation_errors(exc)) from exc
    return parsed.model_dump(mode="json", by_alias=True)


# --- where the process is ------------------------------------------------------------------

NOT_FOUND = "Unable to discover a target process."


@dataclass(frozen=True)
class Target:
    """The agent that runs the capture, and the process it reported (None: its default process)."""

    agent: AgentRecord
    process: ProcessInfo | None


def _summary(processes: list[ProcessInfo]) -> str:
    return ", ".join(f"{p.pid} {p.name}" for p in processes) or "none"


def _matches(process: ProcessInfo, query: ProcessQuery) -> bool:
    return (
        (query.pid is None or process.pid == query.pid)
        and (query.uid is None or process.uid == query.uid)
        and (query.name is None or process.matches_name(query.name))
    )


def resolve_target(services: Services, query: ProcessQuery) -> Target:
    """Find the host and process by key: ``host`` chooses the agent; else ``uid`` (unique fleet-wide),
    a ``pid`` or ``name`` that matches exactly one live process in the fleet, or, with no selector,
    the default process of the only agent. Never a scan of the fleet."""
    registry = services.registry
    if query.host is not None:
        agents = registry.by_host(query.host)
        if not agents:
            raise validation_problem({"host": [f"No live dnmon agent runs on host '{query.host}'."]})
        if len(agents) > 1:
            ids = ", ".join(a.agent_id for a in agents)
            raise validation_problem(
                {"host": [f"Several agents run on hosts named '{query.host}' ({ids}): name one by its id."]}
            )
        return _on_agent(agents[0], query)
    if query.pid is None and query.uid is None and query.name is None:
        page = registry.page(limit=2)
        if len(page.agents) == 1 and page.next_token is None:
            return _on_agent(page.agents[0], query)
        raise Problem(
            400,
            f"{NOT_FOUND} Unable to resolve the default process: "
            + ("no dnmon agent is alive." if not page.agents else "several hosts have agents; ")
            + ("" if not page.agents else "name the process with pid, uid or name, or the host with host."),
        )
    candidates = registry.candidates(
        pid=query.pid, uid=None if query.uid is None else str(query.uid), name=query.name
    )
    # One BatchGetItem: the live agents among the candidates, with their full process lists.
    live = {a.agent_id: a for a in registry.records(c.agent_id for c in candidates)}
    candidates = [c for c in candidates if c.agent_id in live]
    if not candidates:
        raise Problem(400, f"{NOT_FOUND} No live agent reports a process with {_selector(query)}.")
    if len(candidates) > 1:
        listed = "; ".join(f"pid {c.pid} {c.name} (uid {c.uid}) on host {c.host_name}" for c in candidates)
        raise Problem(
            400,
            f"{NOT_FOUND} {len(candidates)} processes match {_selector(query)}: {listed}. "
            "Choose one with uid, or with host.",
        )
    return _on_agent(live[candidates[0].agent_id], query)


def _selector(query: ProcessQuery) -> str:
    parts = [
        (n, v) for n, v in (("pid", query.pid), ("uid", query.uid), ("name", query.name)) if v is not None
    ]
    return ", ".join(f"{n}={v}" for n, v in parts)


def _on_agent(agent: AgentRecord, query: ProcessQuery) -> Target:
    matches = [p for p in agent.processes if _matches(p, query)]
    if len(matches) == 1:
        return Target(agent, matches[0])
    if query.pid is None and query.uid is None and query.name is None:
        if not matches:
            raise Problem(400, f"{NOT_FOUND} There is no .NET process on {agent.host_name}.")
        raise Problem(
            400,
            f"{NOT_FOUND} Unable to resolve the default process: {len(matches)} processes on "
            f"{agent.host_name} ({_summary(matches)}). Name one with pid, uid or name.",
        )
    if not matches:
        raise Problem(
            400,
            f"{NOT_FOUND} No process with {_selector(query)} on {agent.host_name} "
            f"(processes: {_summary(agent.processes)}).",
        )
    raise Problem(
        400, f"{NOT_FOUND} {len(matches)} processes match on {agent.host_name} ({_summary(matches)})."
    )


# --- starting one ----------------------------------------------------------------------------


def streams(services: Services, query: CaptureQuery) -> bool:
    """Without an egress provider the response is the artifact, if the capture can end within a
    streamed response (API Gateway's 15 minutes); else 202 + Location, the artifact kept."""
    duration = query.duration_seconds
    return query.egress_provider is None and 0 <= duration <= services.settings.stream_max_seconds


def _egress_target(services: Services, query: CaptureQuery, answered: bool) -> EgressTarget:
    if query.egress_provider is None:
        return services.settings.default_egress(chunks=answered and streams(services, query))
    provider: EgressProvider = services.settings.egress_providers[query.egress_provider]
    return provider.target()


def start_capture(
    services: Services,
    kind: ArtifactKind,
    query: CaptureQuery,
    configuration: dict[str, Any],
    trace_profile: str | None = None,
    *,
    answered: bool = True,
) -> OperationRecord:
    """Resolve, reserve the host's slot, write the operation Starting, send the signed job.
    ``answered``: an HTTP response waits for the artifact (a schedule's does not: no chunks)."""
    target = resolve_target(services, query)
    agent, process = target.agent, target.process
    operation_id = uuid.uuid4()
    lease = services.settings.claim_seconds
    slots = services.slots.reserve(kind, agent.agent_id, operation_id, lease)
    if slots is None:
        raise rate_limited()
    created = utcnow()
    record = OperationRecord(
        operation_id=operation_id,
        kind=kind,
        status=OperationState.STARTING,
        created=created,
        process=OperationProcess(pid=process.pid, uid=process.uid, name=process.name) if process else None,
        tags=query.tag_set,
        egress_provider_name=query.egress_provider,
        agent_id=agent.agent_id,
        host_name=agent.host_name,
        slots=[slot.key for slot in slots],
    )
    # The job names the process the API resolved, so the agent captures exactly that one.
    selector = (
        ProcessSelector(pid=process.pid, uid=None if process.uid.int == 0 else process.uid)
        if process
        else ProcessSelector()
    )
    job = CaptureJob(
        operation_id=operation_id,
        kind=kind,
        process=selector,
        duration_seconds=query.duration_seconds,
        configuration=configuration,
        trace_profile=trace_profile,
        egress=_egress_target(services, query, answered),
        artifact_name="",
        counter_interval_seconds=services.settings.counter_interval_seconds,
        created=created,
    )
    try:
        services.store.create(record, lease_seconds=lease)
    except StoreError:
        services.slots.release(slots, operation_id)
        raise
    try:
        services.send(agent.queue_url, MessageType.JOB, agent.agent_id, job.model_dump(mode="json"), lease)
    except StoreError as exc:
        error = OperationError(code="QueueFailed", message=f"the job could not be sent to the agent: {exc}")
        with contextlib.suppress(StoreError):
            services.store.transition(operation_id, OperationState.FAILED, error=error)
            services.slots.release(slots, operation_id)
        raise Problem(503, f"The capture could not be handed to the agent on {agent.host_name}.") from exc
    return record


def accepted(location: str) -> Response[str]:
    return Response(202, None, "", headers={"Location": location})


def respond(services: Services, record: OperationRecord, query: CaptureQuery, location: str) -> Response[Any]:
    """202 + Location, or (marked for ``streaming.handler``) the artifact itself as it comes."""
    if not streams(services, query):
        return accepted(location)
    headers = {
        "Location": location,
        "Content-Disposition": content_disposition(record),
        STREAM_MARKER: str(record.operation_id),
    }
    return Response(200, ARTIFACT_CONTENT_TYPES[record.kind], "", headers=headers)


def content_disposition(record: OperationRecord) -> str:
    """As dotnet-monitor sends it, so ``curl -OJ`` keeps the artifact's own name."""
    pid = record.process.pid if record.process else 0
    return f'attachment; filename="{artifact_name(record.kind, pid, record.created)}"'


def location_of(base_url: str, operation_id: uuid.UUID) -> str:
    return f"{base_url}/operations/{operation_id}"


def problem_json(problem: Problem) -> str:
    return json.dumps(problem.body())
