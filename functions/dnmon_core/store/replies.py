"""Small answers an agent gives to a synchronous question (``GET /processes/env``).

The API writes the question's item first, naming the agent it asked; only that agent may put the
answer, once; the API takes it (read and delete in one call), so an environment, which may hold
secrets, lives in the table only between the agent's answer and the API's next poll.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from .errors import ConditionFailed, map_aws_errors
from .items import Clock, dynamo, plain

REPLY_TTL_SECONDS = 600


def _key(request_id: uuid.UUID) -> dict[str, str]:
    return {"pk": f"REPLY#{request_id}", "sk": "REPLY"}


class ReplyStore:
    def __init__(self, table: Any, *, clock: Clock = time.time) -> None:
        self.table = table
        self.clock = clock

    def expect(self, request_id: uuid.UUID, agent_id: str) -> None:
        """The question is out: ``agent_id`` alone may answer it."""
        with map_aws_errors("recording the question"):
            self.table.put_item(
                Item={**_key(request_id), "agentId": agent_id, "ttl": int(self.clock() + REPLY_TTL_SECONDS)},
                ConditionExpression="attribute_not_exists(pk)",
            )

    def answer(self, request_id: uuid.UUID, agent_id: str, reply: Mapping[str, Any]) -> None:
        """Raises ``ConditionFailed`` unless the question was put to ``agent_id`` and is unanswered."""
        with map_aws_errors("storing the reply"):
            self.table.update_item(
                Key=_key(request_id),
                UpdateExpression="SET reply = :reply",
                ConditionExpression="agentId = :agent AND attribute_not_exists(reply)",
                ExpressionAttributeValues={":reply": dynamo(dict(reply)), ":agent": agent_id},
            )

    def take(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        """The answer, read and deleted in one call; None while there is none."""
        try:
            with map_aws_errors("reading the reply"):
                response = self.table.delete_item(
                    Key=_key(request_id),
                    ConditionExpression="attribute_exists(reply)",
                    ReturnValues="ALL_OLD",
                )
        except ConditionFailed:
            return None
        reply: dict[str, Any] = plain(response["Attributes"]["reply"])
        return reply
