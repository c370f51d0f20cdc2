"""``/operations``: list, status, cancel, graceful stop, and the artifact of a finished operation."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.operations import OperationState, OperationStatus, parse_tags
from dnmon_core.store import NotFound, OperationRecord, TransitionRejected

from . import captures
from .http import base_url, query
from .problems import Problem, validation_problem
from .services import Services, services

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
        raise Problem(400, f"Operation {operation_id} was not found.") from None


def _status(record: OperationRecord, base: str) -> OperationStatus:
    """The public status; an egressed artifact is reached through our artifact route."""
    status = record.to_status()
    if record.artifact and record.status == OperationState.SUCCEEDED:
        status.resource_location = f"{base}/operations/{record.operation_id}/artifact"
    return status


def _json(status_code: int, payload: Any, **headers: str) -> Response[str]:
    return Response(status_code, "application/json", json.dumps(payload), headers=headers or None)


@router.get("/operations")
def list_operations() -> Response[str]:
    params = query(router)
    errors: dict[str, list[str]] = {}
    process = captures.parse_process_query(params, errors)
    if errors:
        raise validation_problem(errors)
    records = services().store.list(
        pid=process.pid, uid=process.uid, name=process.name, tags=parse_tags(params.get("tags"))
    )
    summaries = [
        r.to_status().model_dump(mode="json", exclude={"resource_location", "error"}) for r in records
    ]
    return _json(200, summaries)


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
    stop = str(query(router).get("stop", "false")).lower() == "true"
    record = _load(svc, op_id)
    try:
        if stop:
            if not record.is_stoppable:
                raise Problem(400, f"Operation {op_id} cannot be stopped gracefully.")
            svc.store.transition(op_id, OperationState.STOPPING)
            return Response(202, None, "")
        svc.store.request_cancel(op_id)
    except TransitionRejected as exc:
        raise Problem(400, f"Operation {op_id} is {exc.current}: it is no longer running.") from None
    return Response(200, None, "")


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
        "bucket": artifact["bucket"],
        "key": artifact["key"],
    }
    return _json(302, body, Location=url)
