"""The agent API: the only way an agent host writes to the control plane.

Agents reach it through a Lambda function URL with ``AWS_IAM`` auth: every request is SigV4-signed
with the host's own credentials, Lambda checks the signature, and hands the caller's identity to
this function in ``requestContext.authorizer.iam`` (AWS docs: "Invoking Lambda function URLs",
https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html). The agent id is derived from
that identity here, never taken from the request, so a host can register, publish processes,
claim, renew and finish operations, and answer environment requests only as itself:

- it touches only its own registry items and queue (the queue is made here, with a policy that
  lets no other identity receive from it);
- it claims only operations the API assigned to it, and moves only operations it claimed;
- an artifact it reports must lie under its own prefix (``<egress prefix><aws:userid>/``), the
  only place its IAM policy lets it write, so it cannot point an operation at another host's data;
- it answers only environment requests addressed to it.

Its IAM policy holds nothing else but its own artifact prefix and reading the signing key.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dnmon_core.identity import agent_id_from_arn, safe_id
from dnmon_core.models import ProcessInfo
from dnmon_core.operations import OperationError, OperationProcess, OperationState, is_terminal
from dnmon_core.store import (
    ConditionFailed,
    NotFound,
    StoreUnavailable,
    TransitionRejected,
    map_aws_errors,
    slots_of,
)

from .problems import Problem, install_handlers
from .resolvers import FunctionUrlResolver
from .services import Services, services

logger = Logger(service="dnmon-agent-api")
log = logging.getLogger("dnmon.agent_api")
app = FunctionUrlResolver()

OVERRIDE_HEADER = "x-dnmon-agent-id"
MAX_LEASE_SECONDS = 600.0
RECEIVE_ACTIONS = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
)


@dataclass(frozen=True)
class Caller:
    """The agent making this request, as AWS authenticated it."""

    agent_id: str
    user_id: str  # aws:userid: the segment of every S3 key this host may write
    arn: str


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Registration(_Body):
    host_name: str = Field(alias="hostName", min_length=1, max_length=255)
    version: str = Field(max_length=64)


class Processes(_Body):
    processes: list[ProcessInfo] = Field(max_length=4096)


class Lease(_Body):
    lease_seconds: float = Field(alias="leaseSeconds", gt=0, le=MAX_LEASE_SECONDS)


class Report(_Body):
    state: OperationState
    error: OperationError | None = None
    process: OperationProcess | None = None
    resource_location: str | None = Field(None, alias="resourceLocation", max_length=2048)
    artifact: dict[str, Any] | None = None


class Reply(_Body):
    reply: dict[str, Any]


def caller(svc: Services) -> Caller:
    """The identity Lambda verified; an override only where the deployment allows it (local, tests)."""
    event = app.current_event
    context = event.get("requestContext") or {}
    iam = (context.get("authorizer") or {}).get("iam") or {}
    arn, user_id = iam.get("userArn"), iam.get("userId")
    if not isinstance(arn, str) or not isinstance(user_id, str) or not arn or not user_id:
        raise Problem(403, "The agent API takes only SigV4-signed requests through its function URL.")
    try:
        agent_id = agent_id_from_arn(arn)
    except ValueError:
        raise Problem(403, "The caller's identity is not an IAM user or role session.") from None
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    override = headers.get(OVERRIDE_HEADER)
    if override:
        if not svc.settings.allow_agent_id_override:
            raise Problem(403, "This deployment does not let an agent choose its id (DNMON_AGENT_ID).")
        agent_id = safe_id(override)
    return Caller(agent_id, user_id, arn)


def _body(model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(json.loads(app.current_event.body or "{}"))
    except (ValueError, ValidationError) as exc:
        raise Problem(400, f"Invalid request body: {exc}") from None


def _json(payload: Any, status: int = 200) -> Response[str]:
    return Response(status, "application/json", json.dumps(payload))


def _operation_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Problem(400, f"'{text}' is not an operation id.") from None


# --- registry ------------------------------------------------------------------------------------


@app.post("/register")
def register() -> Response[str]:
    """Make (or update) the caller's queue, readable by the caller alone, and announce the agent."""
    svc = services()
    who = caller(svc)
    body: Registration = _body(Registration)
    queue_url = _own_queue(svc, who)
    svc.registry.register(who.agent_id, body.host_name, queue_url, body.version)
    return _json({"agentId": who.agent_id, "queueUrl": queue_url, "artifactOwner": who.user_id})


def queue_policy(queue_arn: str, owner_user_id: str) -> dict[str, Any]:
    """Nobody but the owning identity receives from or deletes on this queue (the control plane only
    sends). An explicit Deny in the queue's own policy wins over any Allow an identity holds."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OnlyItsAgentReceives",
                "Effect": "Deny",
                "Principal": "*",
                "Action": list(RECEIVE_ACTIONS),
                "Resource": queue_arn,
                "Condition": {"StringNotEquals": {"aws:userid": owner_user_id}},
            }
        ],
    }


def _own_queue(svc: Services, who: Caller) -> str:
    settings = svc.settings
    name = f"{settings.agent_queue_prefix}{who.agent_id}"
    attributes: dict[str, str] = {
        "ReceiveMessageWaitTimeSeconds": "20",
        "VisibilityTimeout": "120",
        "SqsManagedSseEnabled": "true",
    }
    if settings.dead_letter_arn:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": settings.dead_letter_arn, "maxReceiveCount": "5"}
        )
    sqs = svc.sqs
    try:
        with map_aws_errors("creating the agent's queue"):
            try:
                url = str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
            except sqs.exceptions.QueueNameExists:  # made before with other attributes: update them
                url = str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
                sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            policy = json.dumps(queue_policy(arn, who.user_id))
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
    except (ClientError, BotoCoreError) as exc:  # sqs.exceptions are ClientErrors: mapped above
        raise StoreUnavailable(f"creating the agent's queue: {exc}") from exc
    return url


@app.post("/processes")
def publish_processes() -> Response[str]:
    """The caller's process set changed; the previous set is read here, never taken from the agent."""
    svc = services()
    who = caller(svc)
    body: Processes = _body(Processes)
    current = svc.registry.get(who.agent_id, alive_only=False)
    if current is None:
        raise Problem(404, "Register first.")
    svc.registry.publish_processes(who.agent_id, current.host_name, body.processes, current.processes)
    return _json({"published": len(body.processes)})


@app.post("/alive")
def alive() -> Response[str]:
    svc = services()
    svc.registry.touch(caller(svc).agent_id)
    return _json({})


@app.post("/deregister")
def deregister() -> Response[str]:
    svc = services()
    svc.registry.deregister(caller(svc).agent_id)
    return _json({})


# --- operations ----------------------------------------------------------------------------------


@app.post("/operations/<operation_id>/claim")
def claim(operation_id: str) -> Response[str]:
    """Idempotent: only the agent the operation was assigned to, and only once."""
    svc = services()
    who = caller(svc)
    lease: Lease = _body(Lease)
    record = svc.store.claim(_operation_id(operation_id), who.agent_id, lease.lease_seconds, who.user_id)
    return _json({"claimed": record is not None})


@app.post("/operations/<operation_id>/lease")
def renew(operation_id: str) -> Response[str]:
    """Extend the lease (and the slots it holds); the answer carries a stop request, if any."""
    svc = services()
    who = caller(svc)
    lease: Lease = _body(Lease)
    op_id = _operation_id(operation_id)
    record = svc.store.renew_lease(op_id, who.agent_id, lease.lease_seconds)
    if record is None:
        return _json({"held": False})
    svc.slots.renew(slots_of(record.slots), op_id, lease.lease_seconds)
    return _json({"held": True, "status": str(record.status), "stopRequested": record.stop_requested})


@app.post("/operations/<operation_id>/state")
def report(operation_id: str) -> Response[str]:
    """Move a claimed operation on; a terminal state also gives its concurrency slots back."""
    svc = services()
    who = caller(svc)
    body: Report = _body(Report)
    if body.state in (OperationState.STARTING, OperationState.STOPPING):
        raise Problem(400, f"An agent cannot move an operation to {body.state}.")
    op_id = _operation_id(operation_id)
    if body.artifact is not None:
        _check_artifact(svc, who, body.artifact)
    try:
        record = svc.store.transition(
            op_id,
            body.state,
            claimed_by=who.agent_id,
            error=body.error,
            process=body.process,
            resource_location=body.resource_location,
            artifact=body.artifact,
        )
    except TransitionRejected as exc:
        _release_if_over(svc, who, op_id)  # e.g. cancelled by the API: the capture has now ended
        raise Problem(409, f"Operation {op_id} is {exc.current}: it cannot become {body.state}.") from None
    except NotFound:
        raise Problem(404, f"Operation {op_id} does not exist.") from None
    if is_terminal(record.status):
        svc.slots.release(slots_of(record.slots), op_id)
    return _json({"status": str(record.status)})


def _release_if_over(svc: Services, who: Caller, operation_id: uuid.UUID) -> None:
    record = svc.store.get(operation_id)
    if is_terminal(record.status) and record.claimed_by == who.agent_id:
        svc.slots.release(slots_of(record.slots), operation_id)


def _check_artifact(svc: Services, who: Caller, artifact: dict[str, Any]) -> None:
    """An S3 artifact must be in a bucket dnmon writes to, under the caller's own prefix."""
    if artifact.get("kind") != "s3":
        return  # a file on the host itself, or the local stack's stream: nothing to point elsewhere
    bucket, key = artifact.get("bucket"), artifact.get("key")
    allowed = [(svc.settings.bucket, "artifacts/")] + [
        (p.bucket, p.prefix) for p in svc.settings.egress_providers.values() if p.kind == "s3"
    ]
    for allowed_bucket, prefix in allowed:
        own = f"{prefix}{who.user_id}/"
        if (
            bucket == allowed_bucket
            and isinstance(key, str)
            and key.startswith(own)
            and "/" not in key[len(own) :]
        ):
            return
    raise Problem(403, "The artifact is not under this agent's own prefix.")


# --- replies -------------------------------------------------------------------------------------


@app.post("/replies/<request_id>")
def put_reply(request_id: str) -> Response[str]:
    """An answer to a question the API put on this agent's queue (``GET /processes/env``)."""
    svc = services()
    who = caller(svc)
    body: Reply = _body(Reply)
    try:
        svc.replies.answer(uuid.UUID(request_id), who.agent_id, body.reply)
    except ValueError:
        raise Problem(400, f"'{request_id}' is not a request id.") from None
    except ConditionFailed:
        raise Problem(403, "No open question with this id was put to this agent.") from None
    return _json({})


# --- errors ----------------------------------------------------------------------------------------


install_handlers(app, logger, "No such agent API route.")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
