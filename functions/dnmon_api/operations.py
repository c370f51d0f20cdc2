"""``/operations``: list, status, cancel, graceful stop, and the artifact of a finished operation.

Stop and cancel change the record first (so the answer is true at once), then reach the agent as
a signed control message on its queue: it acts within a second, with no polling. The lease
renewal re-reads the record, so a lost message still takes effect within a third of a lease.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.operations import ControlAction, ControlMessage, OperationState, OperationStatus
from dnmon_core.queries import OperationsQuery, StopQuery
from dnmon_core.signing import MessageType
from dnmon_core.store import NotFound, OperationRecord, StoreError, TransitionRejected, filter_of

from .http import base_url, bind, next_link, query
from .problems import Problem, validation_problem
from .services import Services, services

CONTROL_TTL_SECONDS = 300.0

log = logging.getLogger("dnmon.api")
router = APIGatewayRouter()


def _operation_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise validation_problem(
            {"operationId": [f"The value '{text}' is not valid for operationId."]}
        ) from None


def _load(svc: Services, operation_id: uuid.UUID) -> OperationRecord:
    try:
        return svc.store.get(operation_id)
    except NotFound:
        raise Problem(400, f"Operation not found. ({operation_id})") from None


def _status(record: OperationRecord, base: str) -> OperationStatus:
    """The public status; an egressed artifact (a failed capture's partial one too) is reached
    through our artifact route."""
    status = record.to_status()
    if record.artifact:
        status.resource_location = f"{base}/operations/{record.operation_id}/artifact"
    return status


def _json(status_code: int, payload: Any, **headers: str) -> Response[str]:
    return Response(status_code, "application/json", json.dumps(payload), headers=headers or None)


@router.get("/operations")
def list_operations() -> Response[str]:
    params = bind(router, OperationsQuery)
    svc = services()
    agent_id: str | None = None
    if params.host is not None:
        agents = svc.registry.by_host(params.host, alive_only=False)
        if not agents:
            raise validation_problem({"host": [f"No dnmon agent has registered host '{params.host}'."]})
        agent_id = agents[0].agent_id
    page = svc.store.page(
        agent_id=agent_id,
        where=filter_of(params.pid, params.uid, params.name, params.tag_set),
        limit=params.limit,
        token=params.next,
    )
    summaries = [
        r.to_status().model_dump(mode="json", exclude={"resource_location", "error"}) for r in page.records
    ]
    if page.next_token is None:
        return _json(200, summaries)
    link = next_link(base_url(router), "/operations", query(router), page.next_token)
    return _json(200, summaries, Link=link)


@router.get("/operations/<operation_id>")
def get_operation(operation_id: str) -> Response[str]:
    record = _load(services(), _operation_id(operation_id))
    status = _status(record, base_url(router))
    # dotnet-monitor answers 201 once the operation has succeeded (its artifact "exists").
    return _json(201 if record.status == OperationState.SUCCEEDED else 200, status.model_dump(mode="json"))


@router.delete("/operations/<operation_id>")
def delete_operation(operation_id: str) -> Response[str]:
    svc = services()
    op_id = _operation_id(operation_id)
    stop = bind(router, StopQuery).stop
    record = _load(svc, op_id)
    if stop and not record.to_status().is_stoppable:
        raise Problem(400, f"Operation {op_id} cannot be stopped gracefully (it is {record.status}).")
    try:
        end_operation(svc, record, stop=stop)
    except TransitionRejected as exc:
        raise Problem(400, f"Operation {op_id} is {exc.current}: it is no longer running.") from None
    return Response(202 if stop else 200, None, "")


def end_operation(svc: Services, record: OperationRecord, *, stop: bool) -> None:
    """Stop (gracefully: the artifact is completed and kept) or cancel; ``TransitionRejected`` if
    the operation has already ended. Also what a streamed response does when its client leaves."""
    svc.store.transition(record.operation_id, OperationState.STOPPING if stop else OperationState.CANCELLED)
    _tell_agent(svc, record, ControlAction.STOP if stop else ControlAction.CANCEL)


def _tell_agent(svc: Services, record: OperationRecord, action: ControlAction) -> None:
    """Best effort: the record already says what to do, and the agent's lease renewal reads it."""
    message = ControlMessage(operation_id=record.operation_id, action=action)
    try:
        agent = svc.registry.get(record.agent_id, alive_only=False)
        if agent is not None:
            body = message.model_dump(mode="json")
            svc.send(agent.queue_url, MessageType.CONTROL, agent.agent_id, body, CONTROL_TTL_SECONDS)
    except StoreError as exc:
        log.warning("the %s message for %s was not sent: %s", action, record.operation_id, exc)


@router.get("/operations/<operation_id>/artifact")
def get_artifact(operation_id: str) -> Response[str]:
    """A presigned URL (SigV4) in a redirect and in the body: clients that resend Authorization on
    redirects (Python's urllib) break against S3, so the body carries the URL too."""
    svc = services()
    record = _load(svc, _operation_id(operation_id))
    artifact = record.artifact
    if not artifact:
        raise Problem(400, f"Operation {record.operation_id} has no artifact (it is {record.status}).")
    if artifact.get("kind") != "s3":
        return _json(200, {"operationId": str(record.operation_id), "location": artifact.get("path")})
    provider = svc.settings.egress_providers.get(record.egress_provider_name or "")
    expiry = provider.presign_expiry if provider else svc.settings.presign_expiry
    url = svc.s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": artifact["bucket"], "Key": artifact["key"]},
        ExpiresIn=int(expiry.total_seconds()),
    )
    body = {
        "operationId": str(record.operation_id),
        "url": url,
        "expiresInSeconds": int(expiry.total_seconds()),
        "size": artifact.get("size"),
        # What the runtime sent before the capture failed (the operation's error says why).
        "partial": bool(artifact.get("partial")),
        "bucket": artifact["bucket"],
        "key": artifact["key"],
    }
    return _json(302, body, Location=url)
