"""Small answers an agent gives to a synchronous question (``GET /processes/env``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from .errors import map_aws_errors
from .items import Clock, dynamo, plain

REPLY_TTL_SECONDS = 600  # an environment can hold secrets: keep it no longer than needed


class ReplyStore:
    def __init__(self, table: Any, *, clock: Clock = time.time) -> None:
        self.table = table
        self.clock = clock

    def put(self, request_id: uuid.UUID, agent_id: str, reply: Mapping[str, Any]) -> None:
        """Store once, only for the agent the request was addressed to."""
        with map_aws_errors("storing the reply"):
            self.table.put_item(
                Item={
                    "pk": f"REPLY#{request_id}",
                    "sk": "REPLY",
                    "agentId": agent_id,
                    "reply": dynamo(dict(reply)),
                    "ttl": int(self.clock() + REPLY_TTL_SECONDS),
                },
                ConditionExpression="attribute_not_exists(pk)",
            )

    def take(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        """Read and delete in one call: an answer is read once, then gone from the table."""
        with map_aws_errors("reading the reply"):
            response = self.table.delete_item(
                Key={"pk": f"REPLY#{request_id}", "sk": "REPLY"}, ReturnValues="ALL_OLD"
            )
        found = response.get("Attributes")
        return plain(found["reply"]) if found else None
