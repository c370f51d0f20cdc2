"""Concurrency slots: dotnet-monitor's limits per instance, i.e. per host here, plus an optional fleet cap.

| item           | pk                                  | sk    |
|----------------|-------------------------------------|-------|
| host slot      | ``SLOT#<agent id>#<kind>#<n>``      | SLOT  |
| fleet slot     | ``FLEETSLOT#<kind>#<n>``            | SLOT  |

One item per slot, taken with a conditional put that also succeeds when the previous holder's
lease ran out (aws-facts.md: the only shape that is race-free on moto and heals when a holder
dies). Probing starts at a random index, so one PutItem is usually enough.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..operations import ArtifactKind
from .errors import ConditionFailed, map_aws_errors
from .items import Clock, dynamo

DEFAULT_LIMITS: Mapping[ArtifactKind, int] = {ArtifactKind.TRACE: 3, ArtifactKind.LIVEMETRICS: 3}
_SLACK_SECONDS = 3600  # a slot item outlives its lease by this much before TTL removes it


@dataclass(frozen=True)
class Slot:
    """A held slot: which host's (or the fleet's) and which index, so it can be renewed and released."""

    key: str  # the slot item's pk

    def index(self) -> int:
        return int(self.key.rsplit("#", 1)[1])


class SlotStore:
    def __init__(
        self,
        table: Any,
        *,
        limits: Mapping[ArtifactKind, int] = DEFAULT_LIMITS,
        fleet_limits: Mapping[ArtifactKind, int] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.table = table
        self.limits = dict(limits)
        self.fleet_limits = dict(fleet_limits or {})
        self.clock = clock

    def reserve(
        self, kind: ArtifactKind, agent_id: str, operation_id: uuid.UUID, lease_seconds: float
    ) -> list[Slot] | None:
        """The host's slot (and a fleet slot when a fleet cap is set), or None when either is full."""
        host = self._take(f"SLOT#{agent_id}#{kind}", self.limits.get(kind, 1), operation_id, lease_seconds)
        if host is None:
            return None
        cap = self.fleet_limits.get(kind)
        if not cap:
            return [host]
        fleet = self._take(f"FLEETSLOT#{kind}", cap, operation_id, lease_seconds)
        if fleet is None:
            self.release([host], operation_id)
            return None
        return [host, fleet]

    def _take(self, prefix: str, limit: int, operation_id: uuid.UUID, lease_seconds: float) -> Slot | None:
        now = self.clock()
        first = random.randrange(limit)
        for index in ((first + i) % limit for i in range(limit)):
            key = f"{prefix}#{index}"
            try:
                with map_aws_errors("reserving a slot"):
                    self.table.put_item(
                        Item=dynamo(
                            {
                                "pk": key,
                                "sk": "SLOT",
                                "operationId": str(operation_id),
                                "leaseUntil": now + lease_seconds,
                                "ttl": int(now + lease_seconds + _SLACK_SECONDS),
                            }
                        ),
                        ConditionExpression="attribute_not_exists(pk) OR leaseUntil < :now",
                        ExpressionAttributeValues=dynamo({":now": now}),
                    )
            except ConditionFailed:
                continue
            return Slot(key)
        return None

    def renew(self, slots: list[Slot], operation_id: uuid.UUID, lease_seconds: float) -> bool:
        """Extend the leases; False when a slot is no longer this operation's."""
        now = self.clock()
        held = True
        for slot in slots:
            try:
                with map_aws_errors("renewing a slot"):
                    self.table.update_item(
                        Key={"pk": slot.key, "sk": "SLOT"},
                        UpdateExpression="SET leaseUntil = :until, #ttl = :ttl",
                        ConditionExpression="operationId = :id",
                        ExpressionAttributeNames={"#ttl": "ttl"},
                        ExpressionAttributeValues=dynamo(
                            {
                                ":until": now + lease_seconds,
                                ":ttl": int(now + lease_seconds + _SLACK_SECONDS),
                                ":id": str(operation_id),
                            }
                        ),
                    )
            except ConditionFailed:
                held = False
        return held

    def release(self, slots: list[Slot], operation_id: uuid.UUID) -> None:
        """Give the slots back, each only if this operation still holds it."""
        for slot in slots:
            try:
                with map_aws_errors("releasing a slot"):
                    self.table.delete_item(
                        Key={"pk": slot.key, "sk": "SLOT"},
                        ConditionExpression="operationId = :id",
                        ExpressionAttributeValues={":id": str(operation_id)},
                    )
            except ConditionFailed:
                continue


def slots_of(keys: list[str] | None) -> list[Slot]:
    return [Slot(key) for key in keys or []]
