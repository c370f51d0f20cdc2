"""Operations, concurrency slots and the agent registry in one DynamoDB table.

Item layout (``pk`` / ``sk`` strings; ``gsi1pk`` / ``gsi1sk`` for listings; ``ttl`` epoch seconds):

| item       | pk                      | sk      | gsi1pk  | gsi1sk                    |
|------------|-------------------------|---------|---------|---------------------------|
| operation  | ``OP#<id>``             | ``OP``  | ``OPS`` | ``<created iso>#<id>``    |
| slot       | ``SLOT#<kind>#<n>``     | ``SLOT``| -       | -                         |
| agent      | ``AGENT#<agent id>``    | ``AGENT``| ``AGENTS`` | ``<agent id>``         |

Every write that matters is conditional: state transitions on the state machine of
``operations.TRANSITIONS``, slots on ``attribute_not_exists(pk) OR leaseUntil < :now`` (one item per
slot — the only shape moto tests honestly, and it heals when a holder dies), claims on the
operation not being claimed by another agent. No read-then-write races.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .operations import (
    ArtifactKind,
    OperationError,
    OperationProcess,
    OperationState,
    OperationStatus,
    is_terminal,
    sources_of,
)

Clock = Callable[[], float]

OPERATION_TTL_SECONDS = 7 * 24 * 3600
AGENT_TTL_SECONDS = 24 * 3600
DEFAULT_LIMITS: Mapping[ArtifactKind, int] = {ArtifactKind.TRACE: 3, ArtifactKind.LIVEMETRICS: 3}
AGENT_LOST = "AgentLost"


class StoreError(Exception):
    """A store operation could not be done (AWS fault); ``code`` is the AWS error code if any."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransitionRejected(StoreError):
    """The operation is not in a state that allows this change (e.g. already finished)."""

    def __init__(self, operation_id: uuid.UUID, target: OperationState, current: str | None) -> None:
        super().__init__(f"operation {operation_id} cannot become {target} (it is {current or 'unknown'})")
        self.current = current


class NotFound(StoreError):
    pass


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _wrap(exc: ClientError, what: str) -> StoreError:
    error = exc.response.get("Error", {})
    return StoreError(f"{what}: {error.get('Code')}: {error.get('Message')}", error.get("Code"))


def _plain(value: Any) -> Any:
    """DynamoDB's Decimals back to int/float, recursively."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_dynamo(v) for v in value]
    return value


@dataclass
class OperationRecord:
    """An operation as stored: the public status plus what only dnmon needs (agent, lease, artifact)."""

    operation_id: uuid.UUID
    kind: ArtifactKind
    status: OperationState
    created: datetime
    process: OperationProcess | None
    tags: list[str]
    egress_provider_name: str | None
    is_stoppable: bool = True
    agent_id: str | None = None
    claimed_by: str | None = None
    lease_until: float | None = None
    resource_location: str | None = None
    error: OperationError | None = None
    artifact: dict[str, Any] | None = None
    stop_requested: bool = False
    cancel_requested: bool = False
    slot: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> OperationStatus:
        return OperationStatus(
            operation_id=self.operation_id,
            created_date_time=self.created,
            status=self.status,
            egress_provider_name=self.egress_provider_name,
            is_stoppable=self.is_stoppable and not is_terminal(self.status),
            process=self.process,
            tags=self.tags,
            resource_location=self.resource_location,
            error=self.error,
        )

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> OperationRecord:
        data = _plain(dict(item))
        return cls(
            operation_id=uuid.UUID(data["operationId"]),
            kind=ArtifactKind(data["kind"]),
            status=OperationState(data["status"]),
            created=datetime.fromisoformat(data["created"]),
            process=OperationProcess.model_validate(data["process"]) if data.get("process") else None,
            tags=list(data.get("tags") or []),
            egress_provider_name=data.get("egressProviderName"),
            is_stoppable=bool(data.get("isStoppable", True)),
            agent_id=data.get("agentId"),
            claimed_by=data.get("claimedBy"),
            lease_until=data.get("leaseUntil"),
            resource_location=data.get("resourceLocation"),
            error=OperationError.model_validate(data["error"]) if data.get("error") else None,
            artifact=data.get("artifact"),
            stop_requested=bool(data.get("stopRequested", False)),
            cancel_requested=bool(data.get("cancelRequested", False)),
            slot=data.get("slot"),
            extra=data.get("extra") or {},
        )


def _op_key(operation_id: uuid.UUID) -> dict[str, str]:
    return {"pk": f"OP#{operation_id}", "sk": "OP"}


class OperationStore:
    """Operations and their concurrency slots. ``table`` is a boto3 DynamoDB ``Table`` resource."""

    def __init__(
        self,
        table: Any,
        *,
        limits: Mapping[ArtifactKind, int] = DEFAULT_LIMITS,
        clock: Clock = time.time,
        ttl_seconds: int = OPERATION_TTL_SECONDS,
    ) -> None:
        self.table = table
        self.limits = dict(limits)
        self.clock = clock
        self.ttl_seconds = ttl_seconds

    # --- slots ---------------------------------------------------------------------------

    def reserve_slot(self, kind: ArtifactKind, operation_id: uuid.UUID, lease_seconds: float) -> int | None:
        """Take a free slot of ``kind`` (or one whose holder's lease ran out); None when all are held."""
        now = self.clock()
        limit = self.limits.get(kind, 1)
        first = random.randrange(limit)  # spread probes: one PutItem is usually enough
        for index in ((first + i) % limit for i in range(limit)):
            try:
                self.table.put_item(
                    Item={
                        "pk": f"SLOT#{kind}#{index}",
                        "sk": "SLOT",
                        "operationId": str(operation_id),
                        "leaseUntil": _dynamo(now + lease_seconds),
                        "ttl": int(now + lease_seconds + 3600),
                    },
                    ConditionExpression="attribute_not_exists(pk) OR leaseUntil < :now",
                    ExpressionAttributeValues={":now": _dynamo(now)},
                )
                return index
            except ClientError as exc:
                if _conditional_failed(exc):
                    continue
                raise _wrap(exc, "reserving a slot") from exc
        return None

    def renew_slot(
        self, kind: ArtifactKind, index: int, operation_id: uuid.UUID, lease_seconds: float
    ) -> bool:
        now = self.clock()
        try:
            self.table.update_item(
                Key={"pk": f"SLOT#{kind}#{index}", "sk": "SLOT"},
                UpdateExpression="SET leaseUntil = :until, #ttl = :ttl",
                ConditionExpression="operationId = :id",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={
                    ":until": _dynamo(now + lease_seconds),
                    ":ttl": int(now + lease_seconds + 3600),
                    ":id": str(operation_id),
                },
            )
            return True
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise _wrap(exc, "renewing a slot") from exc

    def release_slot(self, kind: ArtifactKind, index: int, operation_id: uuid.UUID) -> None:
        """Give the slot back, only if this operation still holds it."""
        try:
            self.table.delete_item(
                Key={"pk": f"SLOT#{kind}#{index}", "sk": "SLOT"},
                ConditionExpression="operationId = :id",
                ExpressionAttributeValues={":id": str(operation_id)},
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise _wrap(exc, "releasing a slot") from exc

    # --- operations ----------------------------------------------------------------------

    def create(self, record: OperationRecord, lease_seconds: float) -> None:
        """Write a new operation; ``lease_seconds`` bounds how long it may wait for an agent's claim."""
        now = self.clock()
        item = {
            **_op_key(record.operation_id),
            "gsi1pk": "OPS",
            "gsi1sk": f"{record.created.isoformat()}#{record.operation_id}",
            "operationId": str(record.operation_id),
            "kind": str(record.kind),
            "status": str(record.status),
            "created": record.created.isoformat(),
            "process": record.process.model_dump(mode="json") if record.process else None,
            "tags": record.tags,
            "egressProviderName": record.egress_provider_name,
            "isStoppable": record.is_stoppable,
            "agentId": record.agent_id,
            "leaseUntil": now + lease_seconds,
            "slot": record.slot,
            "extra": record.extra or None,
            "stopRequested": False,
            "cancelRequested": False,
            "ttl": int(now + self.ttl_seconds),
        }
        try:
            self.table.put_item(Item=_dynamo(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            raise _wrap(exc, "creating the operation") from exc

    def get(self, operation_id: uuid.UUID, *, consistent: bool = True) -> OperationRecord:
        try:
            response = self.table.get_item(Key=_op_key(operation_id), ConsistentRead=consistent)
        except ClientError as exc:
            raise _wrap(exc, "reading the operation") from exc
        item = response.get("Item")
        if not item:
            raise NotFound(f"operation {operation_id} does not exist")
        return self._expire_if_lost(OperationRecord.from_item(item))

    def _expire_if_lost(self, record: OperationRecord) -> OperationRecord:
        """A running operation whose lease ran out has lost its agent: it is Failed, not Running."""
        if is_terminal(record.status) or record.lease_until is None or record.lease_until >= self.clock():
            return record
        error = OperationError(
            code=AGENT_LOST,
            message="the agent running this capture stopped reporting (its lease expired)"
            if record.claimed_by
            else "no agent picked up this capture in time",
        )
        try:
            return self.transition(
                record.operation_id, OperationState.FAILED, error=error, expect_lease_expired=True
            )
        except TransitionRejected:
            return self.get(record.operation_id)

    def list(
        self,
        *,
        pid: int | None = None,
        uid: uuid.UUID | None = None,
        name: str | None = None,
        tags: Iterable[str] = (),
    ) -> list[OperationRecord]:
        """All operations, oldest first, filtered like dotnet-monitor (tags: all given must be present)."""
        wanted_tags = set(tags)
        records: list[OperationRecord] = []
        kwargs: dict[str, Any] = {
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :ops",
            "ExpressionAttributeValues": {":ops": "OPS"},
        }
        try:
            while True:
                response = self.table.query(**kwargs)
                records.extend(OperationRecord.from_item(item) for item in response.get("Items", []))
                if "LastEvaluatedKey" not in response:
                    break
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        except ClientError as exc:
            raise _wrap(exc, "listing operations") from exc
        result = []
        for record in records:
            process = record.process
            if pid is not None and (process is None or process.pid != pid):
                continue
            if uid is not None and (process is None or process.uid != uid):
                continue
            if name is not None and (process is None or process.name.casefold() != name.casefold()):
                continue
            if not wanted_tags <= set(record.tags):
                continue
            result.append(self._expire_if_lost(record))
        return result

    def transition(
        self,
        operation_id: uuid.UUID,
        target: OperationState,
        *,
        error: OperationError | None = None,
        resource_location: str | None = None,
        artifact: Mapping[str, Any] | None = None,
        process: OperationProcess | None = None,
        expect_lease_expired: bool = False,
        claimed_by: str | None = None,
    ) -> OperationRecord:
        """Move to ``target`` if the state machine allows it from the current state; else reject."""
        sources = {f":s{i}": str(s) for i, s in enumerate(sources_of(target))}
        if not sources:  # nothing may move into the initial state
            raise TransitionRejected(operation_id, target, str(self.get(operation_id).status))
        names = {"#status": "status"}
        values: dict[str, Any] = {**sources, ":target": str(target)}
        sets = ["#status = :target"]
        condition = f"#status IN ({', '.join(sources)})"
        if error is not None:
            sets.append("#error = :error")
            names["#error"] = "error"
            values[":error"] = error.model_dump(mode="json")
        if resource_location is not None:
            sets.append("resourceLocation = :location")
            values[":location"] = resource_location
        if artifact is not None:
            sets.append("artifact = :artifact")
            values[":artifact"] = _dynamo(dict(artifact))
        if process is not None:
            sets.append("#process = :process")
            names["#process"] = "process"
            values[":process"] = process.model_dump(mode="json")
        if target == OperationState.STOPPING:
            sets.append("stopRequested = :true")
            values[":true"] = True
        if expect_lease_expired:
            condition += " AND leaseUntil < :now"
            values[":now"] = _dynamo(self.clock())
        if claimed_by is not None:
            condition += " AND claimedBy = :agent"
            values[":agent"] = claimed_by
        try:
            response = self.table.update_item(
                Key=_op_key(operation_id),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=f"attribute_exists(pk) AND {condition}",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=_dynamo(values),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                old: dict[str, Any] = dict(exc.response.get("Item") or {})  # type: ignore[call-overload]
                status = old.get("status")
                # The failed item comes back in the low-level shape ({"S": ...}) even from a Table.
                current = status.get("S") if isinstance(status, dict) else status
                if not old:
                    raise NotFound(f"operation {operation_id} does not exist") from exc
                raise TransitionRejected(operation_id, target, current) from exc
            raise _wrap(exc, f"moving the operation to {target}") from exc
        return OperationRecord.from_item(response["Attributes"])

    def request_cancel(self, operation_id: uuid.UUID) -> OperationRecord:
        """Cancel: the record becomes Cancelled at once; the agent sees it and drops the session."""
        record = self.transition(
            operation_id,
            OperationState.CANCELLED,
            error=OperationError(code="Cancelled", message="the operation was cancelled"),
        )
        self._set_flag(operation_id, "cancelRequested")
        return record

    def _set_flag(self, operation_id: uuid.UUID, flag: str) -> None:
        try:
            self.table.update_item(
                Key=_op_key(operation_id),
                UpdateExpression=f"SET {flag} = :true",
                ExpressionAttributeValues={":true": True},
            )
        except ClientError as exc:
            raise _wrap(exc, f"flagging {flag}") from exc

    def claim(self, operation_id: uuid.UUID, agent_id: str, lease_seconds: float) -> OperationRecord | None:
        """The agent's idempotent claim: only the first delivery of a job starts a capture."""
        now = self.clock()
        try:
            response = self.table.update_item(
                Key=_op_key(operation_id),
                UpdateExpression="SET claimedBy = :agent, leaseUntil = :until",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(claimedBy) "
                "AND #status = :running AND leaseUntil >= :now",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":agent": agent_id,
                    ":until": _dynamo(now + lease_seconds),
                    ":running": str(OperationState.RUNNING),
                    ":now": _dynamo(now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return None
            raise _wrap(exc, "claiming the operation") from exc
        return OperationRecord.from_item(response["Attributes"])

    def renew_lease(
        self, operation_id: uuid.UUID, agent_id: str, lease_seconds: float
    ) -> OperationRecord | None:
        """Heartbeat of a running capture; returns the fresh record (stop/cancel flags) or None if lost."""
        now = self.clock()
        try:
            response = self.table.update_item(
                Key=_op_key(operation_id),
                UpdateExpression="SET leaseUntil = :until",
                ConditionExpression="claimedBy = :agent AND #status IN (:running, :stopping)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":agent": agent_id,
                    ":until": _dynamo(now + lease_seconds),
                    ":running": str(OperationState.RUNNING),
                    ":stopping": str(OperationState.STOPPING),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return None
            raise _wrap(exc, "renewing the lease") from exc
        return OperationRecord.from_item(response["Attributes"])


# --- replies to agent requests ---------------------------------------------------------------

REPLY_TTL_SECONDS = 3600


class ReplyStore:
    """Small answers an agent gives to a synchronous question (``GET /processes/env``)."""

    def __init__(self, table: Any, *, clock: Clock = time.time) -> None:
        self.table = table
        self.clock = clock

    def put(self, request_id: uuid.UUID, reply: Mapping[str, Any]) -> None:
        try:
            self.table.put_item(
                Item={
                    "pk": f"REPLY#{request_id}",
                    "sk": "REPLY",
                    "reply": _dynamo(dict(reply)),
                    "ttl": int(self.clock() + REPLY_TTL_SECONDS),
                }
            )
        except ClientError as exc:
            raise _wrap(exc, "storing the reply") from exc

    def get(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        try:
            item = self.table.get_item(Key={"pk": f"REPLY#{request_id}", "sk": "REPLY"}, ConsistentRead=True)
        except ClientError as exc:
            raise _wrap(exc, "reading the reply") from exc
        found = item.get("Item")
        return _plain(found["reply"]) if found else None


# --- agents ------------------------------------------------------------------------------------


@dataclass
class AgentRecord:
    agent_id: str
    host_name: str
    queue_url: str
    version: str
    last_heartbeat: float
    processes: list[dict[str, Any]]

    def alive(self, now: float, max_silence: float) -> bool:
        return now - self.last_heartbeat <= max_silence


class AgentRegistry:
    """Which agents exist, where their queues are, and which processes they saw last."""

    def __init__(self, table: Any, *, clock: Clock = time.time, max_silence: float = 90.0) -> None:
        self.table = table
        self.clock = clock
        self.max_silence = max_silence

    def heartbeat(
        self, agent_id: str, host_name: str, queue_url: str, version: str, processes: list[dict[str, Any]]
    ) -> None:
        now = self.clock()
        try:
            self.table.put_item(
                Item=_dynamo(
                    {
                        "pk": f"AGENT#{agent_id}",
                        "sk": "AGENT",
                        "gsi1pk": "AGENTS",
                        "gsi1sk": agent_id,
                        "agentId": agent_id,
                        "hostName": host_name,
                        "queueUrl": queue_url,
                        "version": version,
                        "lastHeartbeat": now,
                        "processes": processes,
                        "ttl": int(now + AGENT_TTL_SECONDS),
                    }
                )
            )
        except ClientError as exc:
            raise _wrap(exc, "registering the agent") from exc

    def deregister(self, agent_id: str) -> None:
        try:
            self.table.delete_item(Key={"pk": f"AGENT#{agent_id}", "sk": "AGENT"})
        except ClientError as exc:
            raise _wrap(exc, "deregistering the agent") from exc

    def agents(self, *, alive_only: bool = True) -> list[AgentRecord]:
        try:
            response = self.table.query(
                IndexName="gsi1",
                KeyConditionExpression="gsi1pk = :agents",
                ExpressionAttributeValues={":agents": "AGENTS"},
            )
        except ClientError as exc:
            raise _wrap(exc, "listing agents") from exc
        now = self.clock()
        records = [
            AgentRecord(
                agent_id=item["agentId"],
                host_name=item["hostName"],
                queue_url=item["queueUrl"],
                version=item.get("version", ""),
                last_heartbeat=float(item["lastHeartbeat"]),
                processes=_plain(item.get("processes") or []),
            )
            for item in response.get("Items", [])
        ]
        return [r for r in records if not alive_only or r.alive(now, self.max_silence)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def table_schema() -> dict[str, Any]:
    """Keys and index of the table, for ``create_table`` (the local stack, tests).

    infra/template.yaml declares the same; a test checks that the two agree.
    """
    return {
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "gsi1pk", "gsi1sk")
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": "gsi1",
                "KeySchema": [
                    {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                    {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
