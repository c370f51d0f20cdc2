"""Starting a capture, shared by ``/trace``, ``/livemetrics`` and the schedule target.

validate query + body → pick the agent and check the process it last reported → reserve a
concurrency slot (429 when none) → write the operation → send the CaptureJob to the agent's queue →
answer: 202 + Location with an egress provider; without one, wait (within the sync budget) and
return the artifact inline when it is done and small enough, else 202 + Location (DESIGN.md).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from aws_lambda_powertools.event_handler import Response
from botocore.exceptions import BotoCoreError, ClientError

from dnmon_core.config import STREAM_HEADER, EgressProvider
from dnmon_core.models import EventMetricsConfiguration, EventProvidersConfiguration, validation_errors
from dnmon_core.operations import (
    ARTIFACT_CONTENT_TYPES,
    ArtifactKind,
    CaptureJob,
    EgressTarget,
    OperationError,
    OperationProcess,
    OperationState,
    ProcessSelector,
    parse_tags,
)
from dnmon_core.store import AgentRecord, OperationRecord, StoreError, utcnow

from .problems import Problem, rate_limited, validation_problem
from .services import Services

MAX_DURATION = 2147483647
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class ProcessQuery:
    pid: int | None = None
    uid: uuid.UUID | None = None
    name: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class CaptureQuery:
    process: ProcessQuery
    duration_seconds: int = 30
    egress_provider: str | None = None
    tags: tuple[str, ...] = ()


def _get(params: Mapping[str, Any], name: str) -> str | None:
    """Query names bind case-insensitively in ASP.NET, as body properties do."""
    for key, value in params.items():
        if key.lower() == name.lower():
            return None if value is None else str(value)
    return None


def parse_process_query(params: Mapping[str, Any], errors: dict[str, list[str]]) -> ProcessQuery:
    pid = uid = None
    pid_text = _get(params, "pid")
    if pid_text is not None:
        try:
            pid = int(pid_text)
            if pid < 0:
                raise ValueError
        except ValueError:
            errors["pid"] = [f"The value '{pid_text}' is not valid for pid."]
    uid_text = _get(params, "uid")
    if uid_text is not None:
        try:
            uid = uuid.UUID(uid_text)
        except ValueError:
            errors["uid"] = [f"The value '{uid_text}' is not valid for uid."]
    name = _get(params, "name") or None
    host = _get(params, "host") or None
    return ProcessQuery(pid, uid, name, host)


def parse_capture_query(params: Mapping[str, Any], services: Services) -> CaptureQuery:
    errors: dict[str, list[str]] = {}
    process = parse_process_query(params, errors)
    duration = 30
    duration_text = _get(params, "durationSeconds")
    if duration_text is not None:
        try:
            duration = int(duration_text)
        except ValueError:
            errors["durationSeconds"] = [f"The value '{duration_text}' is not valid for durationSeconds."]
        else:
            if duration == 0 or duration < -1 or duration > MAX_DURATION:
                errors["durationSeconds"] = [
                    f"The field durationSeconds must be between -1 and {MAX_DURATION}, and not 0."
                ]
    egress = _get(params, "egressProvider") or None
    if egress is not None and egress not in services.settings.egress_providers:
        known = ", ".join(sorted(services.settings.egress_providers)) or "none configured"
        errors["egressProvider"] = [f"Egress provider '{egress}' does not exist (configured: {known})."]
    if errors:
        raise validation_problem(errors)
    return CaptureQuery(process, duration, egress, tuple(parse_tags(_get(params, "tags"))))


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


def _process_summary(processes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p.get('pid')} {p.get('name')}" for p in processes) or "none"


def resolve_agent(services: Services, query: ProcessQuery) -> tuple[AgentRecord, dict[str, Any] | None]:
    """The agent to ask, and the process it last reported that matches (None: default-process rule).

    The cached view of the registry serves the usual request; when it cannot, the registry is
    read again before the request is refused (an agent or a process may have just appeared).
    """
    try:
        return _resolve(services.agents(), query)
    except Problem:
        return _resolve(services.agents(refresh=True), query)


def _resolve(agents: list[AgentRecord], query: ProcessQuery) -> tuple[AgentRecord, dict[str, Any] | None]:
    if not agents:
        raise Problem(400, "No dnmon agent is registered and alive: start `dnmon agent` on the host.")
    if query.host is not None:
        chosen = [a for a in agents if query.host in (a.host_name, a.agent_id)]
        if not chosen:
            hosts = ", ".join(sorted(a.host_name for a in agents))
            raise validation_problem({"host": [f"No agent runs on host '{query.host}' (alive: {hosts})."]})
        agents = chosen
    elif query.uid is not None:
        agents = [a for a in agents if any(p.get("uid") == str(query.uid) for p in a.processes)] or agents
    if len(agents) > 1:
        hosts = ", ".join(sorted(a.host_name for a in agents))
        raise Problem(400, f"Several agents are registered ({hosts}): choose one with the host parameter.")
    agent = agents[0]
    matches = [
        p
        for p in agent.processes
        if (query.pid is None or p.get("pid") == query.pid)
        and (query.uid is None or p.get("uid") == str(query.uid))
        and (query.name is None or str(p.get("name", "")).casefold() == query.name.casefold())
    ]
    given = query.pid is not None or query.uid is not None or query.name is not None
    if len(matches) == 1:
        return agent, matches[0]
    seen = _process_summary(agent.processes)
    if not given:
        if not matches:
            raise Problem(
                400, f"Unable to resolve the default process: no .NET process on {agent.host_name}."
            )
        raise Problem(
            400,
            f"Unable to resolve the default process: {len(matches)} processes on {agent.host_name} ({seen}). "
            "Name one with pid, uid or name.",
        )
    if not matches:
        raise Problem(400, f"Unable to find the requested process on {agent.host_name} (processes: {seen}).")
    raise Problem(400, f"{len(matches)} processes match on {agent.host_name} ({_process_summary(matches)}).")


# --- starting one ----------------------------------------------------------------------------


def _egress_target(services: Services, query: CaptureQuery, operation_id: uuid.UUID) -> EgressTarget:
    if query.egress_provider is None:
        ingest = services.settings.stream_ingest_url
        if ingest:  # the local stack: the artifact streams into the HTTP response
            return EgressTarget(provider=None, kind="stream", url=f"{ingest.rstrip('/')}/{operation_id}")
        return services.settings.default_egress()
    provider: EgressProvider = services.settings.egress_providers[query.egress_provider]
    return provider.target()


def start_capture(
    services: Services,
    kind: ArtifactKind,
    query: CaptureQuery,
    configuration: dict[str, Any],
    trace_profile: str | None = None,
) -> OperationRecord:
    agent, process = resolve_agent(services, query.process)
    store = services.store
    operation_id = uuid.uuid4()
    lease = services.settings.claim_seconds
    slot = store.reserve_slot(kind, operation_id, lease)
    if slot is None:
        raise rate_limited()
    created = utcnow()
    record = OperationRecord(
        operation_id=operation_id,
        kind=kind,
        status=OperationState.RUNNING,
        created=created,
        process=OperationProcess(pid=process["pid"], uid=process["uid"], name=process["name"])
        if process
        else None,
        tags=list(query.tags),
        egress_provider_name=query.egress_provider,
        agent_id=agent.agent_id,
        slot=slot,
    )
    job = CaptureJob(
        operation_id=operation_id,
        kind=kind,
        process=ProcessSelector(pid=query.process.pid, uid=query.process.uid, name=query.process.name),
        duration_seconds=query.duration_seconds,
        configuration=configuration,
        trace_profile=trace_profile,
        egress=_egress_target(services, query, operation_id),
        artifact_name="",
        counter_interval_seconds=services.settings.counter_interval_seconds,
        created=created,
    )
    try:
        store.create(record, lease_seconds=lease)
    except StoreError:
        store.release_slot(kind, slot, operation_id)
        raise
    try:
        services.sqs.send_message(QueueUrl=agent.queue_url, MessageBody=job.model_dump_json())
    except (ClientError, BotoCoreError) as exc:
        error = OperationError(code="QueueFailed", message=f"the job could not be sent to the agent: {exc}")
        store.transition(operation_id, OperationState.FAILED, error=error)
        store.release_slot(kind, slot, operation_id)
        raise Problem(503, f"The capture could not be handed to agent {agent.agent_id}.") from exc
    return record


def accepted(location: str) -> Response[str]:
    return Response(202, None, "", headers={"Location": location})


def respond(services: Services, record: OperationRecord, query: CaptureQuery, location: str) -> Response[Any]:
    """202 with an egress provider; else the artifact itself: streamed by the local gateway,
    or inline from S3 when it is done within the sync budget (AWS)."""
    if query.egress_provider is not None:
        return accepted(location)
    if services.settings.stream_ingest_url:
        headers = {"Location": location, STREAM_HEADER: str(record.operation_id)}
        return Response(200, ARTIFACT_CONTENT_TYPES[record.kind], "", headers=headers)
    return finish_inline(services, record, query, location)


def finish_inline(
    services: Services,
    record: OperationRecord,
    query: CaptureQuery,
    location: str,
    clock: Any = time.monotonic,
    sleep: Any = time.sleep,
) -> Response[Any]:
    """No egress provider: return the artifact itself if it is done in time and small enough."""
    budget = services.settings.sync_budget_seconds
    if query.duration_seconds == -1 or query.duration_seconds >= budget:
        return accepted(location)  # cannot finish within one request
    deadline = clock() + budget
    current = record
    while clock() < deadline:
        sleep(POLL_SECONDS)
        current = services.store.get(record.operation_id)
        if current.status not in (OperationState.RUNNING, OperationState.STOPPING):
            break
    if current.status == OperationState.FAILED:
        message = current.error.message if current.error else "the capture failed"
        raise Problem(400, message)
    if current.status != OperationState.SUCCEEDED or not current.artifact:
        return accepted(location)
    artifact = current.artifact
    if artifact.get("kind") != "s3" or int(artifact.get("size", 0)) > services.settings.inline_limit_bytes:
        return accepted(location)
    body = services.s3.get_object(Bucket=artifact["bucket"], Key=artifact["key"])["Body"].read()
    content_type = ARTIFACT_CONTENT_TYPES[record.kind]
    payload: Any = body if record.kind == ArtifactKind.TRACE else body.decode("utf-8")
    return Response(200, content_type, payload, headers={"Location": location})


def location_of(base_url: str, operation_id: uuid.UUID) -> str:
    return f"{base_url}/operations/{operation_id}"


def problem_json(problem: Problem) -> str:
    return json.dumps(problem.body())
