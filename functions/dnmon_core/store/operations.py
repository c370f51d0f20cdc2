"""Operation items: the guarded state machine, the agent's claim and lease, and keyed listings.

| pk          | sk | gsi1pk (per host)  | gsi2pk (fleet, per day) | gsi1sk = gsi2sk        |
|-------------|----|--------------------|-------------------------|------------------------|
| ``OP#<id>`` | OP | ``OPS#<agent id>`` | ``OPSDAY#<yyyy-mm-dd>`` | ``<created iso>#<id>`` |

A host's listing is one partition of gsi1; the fleet's listing walks day partitions of gsi2 newest
first. Neither partition is written more than once per operation, so no partition runs hot.
Every transition is one conditional UpdateItem on ``operations.TRANSITIONS``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..operations import (
    ACTIVE_STATES,
    ArtifactKind,
    OperationError,
    OperationProcess,
    OperationState,
    OperationStatus,
    is_terminal,
    sources_of,
)
from .errors import ConditionFailed, InvalidToken, NotFound, TransitionRejected, map_aws_errors
from .items import Clock, decode_token, dynamo, encode_token, low_level_string, plain

OPERATION_TTL_SECONDS = 7 * 24 * 3600
AGENT_LOST = "AgentLost"
PAGE_LIMIT = 100


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
    agent_id: str
    host_name: str = ""
    is_stoppable: bool = True
    claimed_by: str | None = None
    lease_until: float | None = None
    resource_location: str | None = None
    error: OperationError | None = None
    artifact: dict[str, Any] | None = None
    stop_requested: bool = False
    slots: list[str] = field(default_factory=list)  # keys of the slot items it holds
    owner: str | None = None  # the claiming agent's aws:userid: where its chunks are (dnmon_core.chunks)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> OperationStatus:
        return OperationStatus(
            operation_id=self.operation_id,
            created_date_time=self.created,
            status=self.status,
            egress_provider_name=self.egress_provider_name,
            is_stoppable=self.is_stoppable
            and self.status in (OperationState.STARTING, OperationState.RUNNING),
            process=self.process,
            tags=self.tags,
            resource_location=self.resource_location,
            error=self.error,
        )

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> OperationRecord:
        data = plain(dict(item))
        return cls(
            operation_id=uuid.UUID(data["operationId"]),
            kind=ArtifactKind(data["kind"]),
            status=OperationState(data["status"]),
            created=datetime.fromisoformat(data["created"]),
            process=OperationProcess.model_validate(data["process"]) if data.get("process") else None,
            tags=list(data.get("tags") or []),
            egress_provider_name=data.get("egressProviderName"),
            agent_id=str(data.get("agentId", "")),
            host_name=str(data.get("hostName", "")),
            is_stoppable=bool(data.get("isStoppable", True)),
            claimed_by=data.get("claimedBy"),
            lease_until=data.get("leaseUntil"),
            resource_location=data.get("resourceLocation"),
            error=OperationError.model_validate(data["error"]) if data.get("error") else None,
            artifact=data.get("artifact"),
            stop_requested=bool(data.get("stopRequested", False)),
            slots=list(data.get("slots") or []),
            owner=data.get("owner"),
            extra=data.get("extra") or {},
        )


@dataclass(frozen=True)
class OperationFilter:
    """dotnet-monitor's listing filters (tags: every given tag must be present)."""

    pid: int | None = None
    uid: uuid.UUID | None = None
    name: str | None = None
    tags: frozenset[str] = frozenset()

    def matches(self, record: OperationRecord) -> bool:
        process = record.process
        if self.pid is not None and (process is None or process.pid != self.pid):
            return False
        if self.uid is not None and (process is None or process.uid != self.uid):
            return False
        if self.name is not None and (process is None or process.name.casefold() != self.name.casefold()):
            return False
        return self.tags <= set(record.tags)


@dataclass(frozen=True)
class Page:
    records: list[OperationRecord]
    next_token: str | None


def _key(operation_id: uuid.UUID) -> dict[str, str]:
    return {"pk": f"OP#{operation_id}", "sk": "OP"}


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


class OperationStore:
    """Operations. ``table`` is a boto3 DynamoDB ``Table`` resource."""

    def __init__(
        self, table: Any, *, clock: Clock = time.time, ttl_seconds: int = OPERATION_TTL_SECONDS
    ) -> None:
        self.table = table
        self.clock = clock
        self.ttl_seconds = ttl_seconds

    def create(self, record: OperationRecord, lease_seconds: float) -> None:
        """Write a new operation; ``lease_seconds`` bounds how long it may wait for its agent's claim."""
        now = self.clock()
        sort_key = f"{record.created.isoformat()}#{record.operation_id}"
        item = {
            **_key(record.operation_id),
            "gsi1pk": f"OPS#{record.agent_id}",
            "gsi1sk": sort_key,
            "gsi2pk": f"OPSDAY#{_day(record.created)}",
            "gsi2sk": sort_key,
            "operationId": str(record.operation_id),
            "kind": str(record.kind),
            "status": str(record.status),
            "created": record.created.isoformat(),
            "process": record.process.model_dump(mode="json") if record.process else None,
            "tags": record.tags,
            "egressProviderName": record.egress_provider_name,
            "isStoppable": record.is_stoppable,
            "agentId": record.agent_id,
            "hostName": record.host_name,
            "leaseUntil": now + lease_seconds,
            "slots": record.slots or None,
            "extra": record.extra or None,
            "stopRequested": False,
            "ttl": int(now + self.ttl_seconds),
        }
        with map_aws_errors("creating the operation"):
            self.table.put_item(Item=dynamo(item), ConditionExpression="attribute_not_exists(pk)")

    def get(self, operation_id: uuid.UUID, *, consistent: bool = True) -> OperationRecord:
        with map_aws_errors("reading the operation"):
            response = self.table.get_item(Key=_key(operation_id), ConsistentRead=consistent)
        item = response.get("Item")
        if not item:
            raise NotFound(f"operation {operation_id} does not exist")
        return self._expire_if_lost(OperationRecord.from_item(item))

    def _expire_if_lost(self, record: OperationRecord) -> OperationRecord:
        """An active operation whose lease ran out has lost its agent: it is Failed, not Running."""
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

    def page(
        self,
        *,
        agent_id: str | None = None,
        where: OperationFilter = OperationFilter(),
        limit: int = PAGE_LIMIT,
        token: str | None = None,
    ) -> Page:
        """One page of operations, oldest first: of one host (gsi1), or of the fleet by day (gsi2).

        At most ``limit`` records; ``next_token`` continues where this page stopped.
        """
        if agent_id is not None:
            return self._page_host(agent_id, where, limit, token)
        return self._page_fleet(where, limit, token)

    def _page_host(self, agent_id: str, where: OperationFilter, limit: int, token: str | None) -> Page:
        kwargs: dict[str, Any] = {
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :pk",
            "ExpressionAttributeValues": {":pk": f"OPS#{agent_id}"},
        }
        if token is not None:
            start = decode_token(token)
            if start.get("gsi1pk") != f"OPS#{agent_id}":
                raise InvalidToken("the continuation token belongs to another listing")
            kwargs["ExclusiveStartKey"] = start
        records, last = self._collect(kwargs, where, limit)
        return Page(records, encode_token(last) if last else None)

    def _page_fleet(self, where: OperationFilter, limit: int, token: str | None) -> Page:
        """Days oldest first, from the oldest day an operation may still live."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        first = now - timedelta(seconds=self.ttl_seconds)
        days = [_day(first + timedelta(days=n)) for n in range((now - first).days + 2)]
        days = sorted(set(days))
        start: dict[str, Any] | None = None
        if token is not None:
            start = decode_token(token)
            day = start.get("gsi2pk", "").removeprefix("OPSDAY#")
            if day not in days:
                raise InvalidToken("the continuation token has expired")
            days = days[days.index(day) :]
        records: list[OperationRecord] = []
        for day in days:
            if len(records) >= limit:  # the page filled up as a day ended: go on from the next day
                return Page(records, encode_token({"gsi2pk": f"OPSDAY#{day}"}))
            kwargs: dict[str, Any] = {
                "IndexName": "gsi2",
                "KeyConditionExpression": "gsi2pk = :pk",
                "ExpressionAttributeValues": {":pk": f"OPSDAY#{day}"},
            }
            # A token that names only the day starts at its beginning.
            if start is not None and start.get("gsi2pk") == f"OPSDAY#{day}" and len(start) > 1:
                kwargs["ExclusiveStartKey"] = start
            found, last = self._collect(kwargs, where, limit - len(records))
            records.extend(found)
            if last is not None:
                return Page(records, encode_token(last))
        return Page(records, None)

    def _collect(
        self, kwargs: dict[str, Any], where: OperationFilter, limit: int
    ) -> tuple[list[OperationRecord], dict[str, Any] | None]:
        """Query until ``limit`` matching records; the key to resume from, or None at the end."""
        records: list[OperationRecord] = []
        while True:
            with map_aws_errors("listing operations"):
                response = self.table.query(**kwargs, Limit=max(1, limit - len(records)))
            for item in response.get("Items", []):
                record = OperationRecord.from_item(item)
                if where.matches(record):
                    records.append(self._expire_if_lost(record))
            last = response.get("LastEvaluatedKey")
            if last is None:
                return records, None
            if len(records) >= limit:
                return records, plain(dict(last))
            kwargs["ExclusiveStartKey"] = last

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
            values[":artifact"] = dict(artifact)
        if process is not None:
            sets.append("#process = :process")
            names["#process"] = "process"
            values[":process"] = process.model_dump(mode="json")
        if target == OperationState.STOPPING:
            sets.append("stopRequested = :true")
            values[":true"] = True
        if expect_lease_expired:
            condition += " AND leaseUntil < :now"
            values[":now"] = self.clock()
        if claimed_by is not None:
            condition += " AND claimedBy = :agent"
            values[":agent"] = claimed_by
        try:
            with map_aws_errors(f"moving the operation to {target}"):
                response = self.table.update_item(
                    Key=_key(operation_id),
                    UpdateExpression="SET " + ", ".join(sets),
                    ConditionExpression=f"attribute_exists(pk) AND {condition}",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=dynamo(values),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as exc:
            if not exc.old_item:
                raise NotFound(f"operation {operation_id} does not exist") from exc
            raise TransitionRejected(
                operation_id, target, low_level_string(exc.old_item.get("status"))
            ) from exc
        return OperationRecord.from_item(response["Attributes"])

    def claim(
        self, operation_id: uuid.UUID, agent_id: str, lease_seconds: float, owner: str = ""
    ) -> OperationRecord | None:
        """The agent's idempotent claim: only the first delivery of a job to its own agent starts it.
        ``owner`` (the caller's verified aws:userid) says under which prefix its chunks are."""
        now = self.clock()
        try:
            with map_aws_errors("claiming the operation"):
                response = self.table.update_item(
                    Key=_key(operation_id),
                    UpdateExpression="SET claimedBy = :agent, leaseUntil = :until, #owner = :owner",
                    ConditionExpression="attribute_exists(pk) AND attribute_not_exists(claimedBy) "
                    "AND agentId = :agent AND #status IN (:starting, :stopping) AND leaseUntil >= :now",
                    ExpressionAttributeNames={"#status": "status", "#owner": "owner"},
                    ExpressionAttributeValues=dynamo(
                        {
                            ":agent": agent_id,
                            ":owner": owner,
                            ":until": now + lease_seconds,
                            ":starting": str(OperationState.STARTING),
                            ":stopping": str(OperationState.STOPPING),
                            ":now": now,
                        }
                    ),
                    ReturnValues="ALL_NEW",
                )
        except ConditionFailed:
            return None
        return OperationRecord.from_item(response["Attributes"])

    def renew_lease(
        self, operation_id: uuid.UUID, agent_id: str, lease_seconds: float
    ) -> OperationRecord | None:
        """Heartbeat of a running capture; returns the fresh record (stop flag) or None if it is lost."""
        now = self.clock()
        values = {f":a{i}": str(s) for i, s in enumerate(ACTIVE_STATES)}
        try:
            with map_aws_errors("renewing the lease"):
                response = self.table.update_item(
                    Key=_key(operation_id),
                    UpdateExpression="SET leaseUntil = :until",
                    ConditionExpression=f"claimedBy = :agent AND #status IN ({', '.join(values)})",
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues=dynamo(
                        {**values, ":agent": agent_id, ":until": now + lease_seconds}
                    ),
                    ReturnValues="ALL_NEW",
                )
        except ConditionFailed:
            return None
        return OperationRecord.from_item(response["Attributes"])


def filter_of(
    pid: int | None = None, uid: uuid.UUID | None = None, name: str | None = None, tags: Iterable[str] = ()
) -> OperationFilter:
    return OperationFilter(pid, uid, name, frozenset(tags))
